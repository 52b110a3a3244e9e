"""`cdp experiment plan`: sample size per arm and duration for a target effect, from the
population's own baseline and variance in the published snapshot.

The snapshot publishes per-person traits, not orders, so the baseline comes from each person's own
history in customer_traits: their order rate lambda = order_count / tenure_days, the orders expected
in a window of W days mu = lambda * W (Poisson), hence conversion 1 - exp(-mu) (churn: exp(-mu)),
revenue per person mu * avg_order_value with variance Var(mu * aov) + mu * aov^2 (between persons
plus compound-Poisson within), and AOV among those who order (variance between persons).

The test is the one experiment_results uses at its final look, two-sided; the size matches
statsmodels' NormalIndPower: Cohen's h (proportion_effectsize) for conversion and churn, Cohen's d
(effect / standard deviation) for means. Duration: the outcome window plus the days new members
need to arrive when the current population is too small (arrivals: the last 28 days' entries).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import duckdb
import numpy as np

from experiments import stats

ARRIVAL_DAYS = 28


class PlanError(ValueError):
    """The snapshot cannot give a baseline for this population; says what to fix."""


@dataclass(frozen=True)
class Baseline:
    population: str
    persons: int
    mean: float
    variance: float
    daily_arrivals: float
    buyers_share: float  # share of persons who order in the window (AOV is measured on them)


def _members(con: duckdb.DuckDBPyConnection, population: str) -> str:
    if population == "all":
        return "SELECT person_id FROM customers"
    found = con.execute("SELECT count(*) FROM segment_membership WHERE segment = ?", [population]).fetchall()[0][0]
    if not found:
        raise PlanError(f"no segment named {population!r} with members in the published snapshot")
    return f"SELECT person_id FROM segment_membership WHERE segment = '{population.replace(chr(39), '')}'"


def baseline(con: duckdb.DuckDBPyConnection, population: str, metric: str, window_days: int) -> Baseline:
    members = _members(con, population)
    rows = con.execute(f"""
        SELECT coalesce(t.order_count, 0), greatest(coalesce(t.tenure_days, 0), 1), coalesce(t.avg_order_value, 0)
        FROM ({members}) m LEFT JOIN customer_traits t USING (person_id)""").fetchall()
    if not rows:
        raise PlanError(f"population {population!r} has nobody in the published snapshot")
    orders, tenure, aov = (np.array(c, dtype=float) for c in zip(*rows))
    mu = orders / np.maximum(tenure, window_days) * window_days
    convert = 1 - np.exp(-mu)
    if metric in ("conversion", "churn"):
        p = float(convert.mean()) if metric == "conversion" else float(1 - convert.mean())
        mean, variance = p, p * (1 - p)
    elif metric == "revenue_per_person":
        per_person = mu * aov
        mean, variance = float(per_person.mean()), float(per_person.var() + (mu * aov * aov).mean())
    else:
        buyers = aov[orders > 0]
        if len(buyers) < 2:
            raise PlanError(f"population {population!r} has fewer than 2 buyers: no AOV baseline")
        mean, variance = float(buyers.mean()), float(buyers.var(ddof=1))
    if population == "all":
        arrived = con.execute(f"SELECT count(*) FROM customer_traits WHERE customer_since > "
                              f"(SELECT max(as_of) FROM customer_traits) - INTERVAL {ARRIVAL_DAYS} DAY").fetchall()[0][0]
    else:
        arrived = con.execute(f"SELECT count(*) FROM segment_membership_history WHERE segment = ? AND entered_at > "
                              f"(SELECT max(as_of) FROM segment_membership) - INTERVAL {ARRIVAL_DAYS} DAY",
                              [population]).fetchall()[0][0]
    return Baseline(population, len(rows), mean, variance, arrived / ARRIVAL_DAYS, float(convert.mean()))


def plan(base: Baseline, metric: str, effect: float, alpha: float = 0.05, power: float = 0.8,
         treatment_share: float = 0.5, window_days: int = 30) -> dict:
    """`effect` is relative to the baseline (0.1 = +10%; for churn, a 10% reduction)."""
    if not 0 < treatment_share < 1:
        raise PlanError("treatment share must be between 0 and 1")
    if metric in ("conversion", "churn"):
        target = base.mean * (1 - effect if metric == "churn" else 1 + effect)
        if not 0 < target < 1 or not 0 < base.mean < 1:
            raise PlanError(f"a {effect:+.0%} change of a {base.mean:.2%} baseline is not a proportion")
        effect_size = stats.cohens_h(target, base.mean)
    else:
        if base.variance <= 0:
            raise PlanError("the baseline has no variance: nothing to plan")
        target = base.mean * (1 + effect)
        effect_size = (target - base.mean) / math.sqrt(base.variance)
    ratio = treatment_share / (1 - treatment_share)
    n_control = stats.sample_size(effect_size, alpha, power, ratio)
    n_control_persons = math.ceil(n_control)
    n_treatment_persons = math.ceil(n_control * ratio)
    total = n_control_persons + n_treatment_persons
    if metric == "aov":  # measured on buyers only: persons to expose
        total = math.ceil(total / max(base.buyers_share, 1e-9))
    short = max(0, total - base.persons)
    if short and base.daily_arrivals <= 0:
        enrol_days: float | None = None
    else:
        enrol_days = math.ceil(short / base.daily_arrivals) if short else 0
    return {**asdict(base), "metric": metric, "effect": effect, "alpha": alpha, "power": power,
            "baseline": base.mean, "target": target, "effect_size": effect_size,
            "n_control": n_control_persons, "n_treatment": n_treatment_persons, "persons_needed": total,
            "enrolment_days": enrol_days,
            "duration_days": None if enrol_days is None else enrol_days + window_days}
