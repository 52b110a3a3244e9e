"""Benchmark the experiment statistics against the generator's truth.

    .venv/bin/python -m bench.bench_experiments            # 100 + 100 experiments
    .venv/bin/python -m bench.bench_experiments 30         # a quicker look

Outcomes are simulated straight from the generator's latent model (ingestion/generator/
population.py's purchase rate and discount sensitivity, ingestion/generator/treatment.py's offer
response) rather than by running the whole pipeline per experiment: each experiment assigns the
same generated people with the production hash under its own name (experiments/assignment.py),
draws their orders in the window, and is analysed by experiments/analysis.py, the code behind
the published experiment_results.

  coverage   experiments where the treatment arm gets a win-back discount with a known effect; at
             the planned end, does the 95% interval of the absolute lift cover the true lift (the
             mean of the exposed persons' true effects)? Conversion and revenue per person.
  A/A        both arms untreated, persons exposed day by day, a look every day of the planned
             duration with the alpha-spending boundary: how many ever flag a difference (with
             its exact binomial interval: 100 runs pin a 5% rate down only to about 2-11%)?
             The final look alone against 1.96 checks the test statistic by itself; the same
             daily looks against a fixed 1.96 show what peeking without a correction would do.
  A/A bulk   the same A/A vectorised (200 runs per experiment asked for: 20,000 by default), for
             a rate known to a quarter of a point rather than to +-4 points.
  boundary   the alpha-spending rule by itself: the A/A's looks on exact Gaussian null paths.

A larger A/A in chunks (each its own experiments and seed):
    .venv/bin/python -c "from bench.bench_experiments import aa; print(aa(250, seed=13 + C, first=250 * C))"
for C = 0, 1, 2, ... (C = 0's first 100 are the default run's).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import beta

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.settings.experiments import Arm, Experiment  # noqa: E402
from experiments.analysis import Look, analyse  # noqa: E402
from experiments.assignment import assign  # noqa: E402
from experiments.stats import sequential_boundaries, welch, z_of  # noqa: E402
from ingestion.generator.identity_mess import MessRates  # noqa: E402
from ingestion.generator.population import build_population  # noqa: E402
from ingestion.generator.timeline import Timeline  # noqa: E402
from ingestion.generator.treatment import expected_orders, simulate_outcomes, true_effects  # noqa: E402

OFFER = "winback_discount"
WINDOW_DAYS = 14
PLANNED_DAYS = 28
START = dt.date(2025, 6, 1)


def population(people: int, seed: int = 7):
    """The generator's latent purchase rate and discount sensitivity of `people` persons."""
    pop = build_population(np.random.default_rng(seed), people, Timeline.for_as_of(START), MessRates())
    return pop.person_id, pop.purchase_rate, pop.discount_sensitivity


def experiment(name: str, metric: str) -> Experiment:
    return Experiment(name=name, metric=metric, window_days=WINDOW_DAYS, start=START, planned_days=PLANNED_DAYS,
                      arms=[Arm(name="holdout", share=0.5, holdout=True), Arm(name="treatment", share=0.5)])


def coverage(n_experiments: int, people: int = 20_000, seed: int = 11) -> dict:
    ids, rate, sensitivity = population(people)
    truth = true_effects(OFFER, rate, sensitivity, WINDOW_DAYS)
    rng = np.random.default_rng(seed)
    covered = {"conversion": 0, "revenue_per_person": 0}
    lifts = {"conversion": [], "revenue_per_person": []}
    for k in range(n_experiments):
        arms = assign(ids, experiment(f"coverage_{k}", "conversion"))
        treated = arms == "treatment"
        sim = simulate_outcomes(rng, OFFER, rate, sensitivity, treated, WINDOW_DAYS)
        for metric, y in (("conversion", sim["converted"]), ("revenue_per_person", sim["revenue"])):
            exp = experiment(f"coverage_{k}", metric)
            rows = analyse(exp, pd.DataFrame({"arm": arms, "y": y}), dict(zip(*np.unique(arms, return_counts=True))),
                           [Look(1.0, float(len(y)))])
            row = next(r for r in rows if r["arm"] == "treatment")
            true_lift = float(truth[metric].mean())  # every generated person is exposed
            covered[metric] += row["abs_lift_low"] <= true_lift <= row["abs_lift_high"]
            lifts[metric].append((row["abs_lift"], true_lift))
    return {
        "coverage_conversion": f"{covered['conversion']}/{n_experiments}",
        "coverage_revenue": f"{covered['revenue_per_person']}/{n_experiments}",
        "covered_conversion": covered["conversion"], "covered_revenue": covered["revenue_per_person"],
        "true_conversion_lift": round(lifts["conversion"][0][1], 5),
        "mean_measured_conversion_lift": round(float(np.mean([m for m, _ in lifts["conversion"]])), 5),
        "true_revenue_lift": round(lifts["revenue_per_person"][0][1], 4),
        "mean_measured_revenue_lift": round(float(np.mean([m for m, _ in lifts["revenue_per_person"]])), 4),
    }


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k of n: how precisely n runs pin down a rate."""
    a = 1 - level
    return (float(beta.ppf(a / 2, k, n - k + 1)) if k > 0 else 0.0,
            float(beta.ppf(1 - a / 2, k + 1, n - k)) if k < n else 1.0)


def aa(n_experiments: int, people: int = 20_000, seed: int = 13, metric: str = "conversion", first: int = 0) -> dict:
    """A/A with daily looks: persons exposed uniformly over the days before the last window.
    `first`: the number of the first experiment (its name, hence its assignment): a run in
    chunks gives each chunk its own experiments and seed."""
    ids, rate, sensitivity = population(people)
    rng = np.random.default_rng(seed)
    flagged = naive_flagged = final_flagged = 0
    final_z: list[float] = []
    enrol_days = PLANNED_DAYS - WINDOW_DAYS
    for k in range(n_experiments):
        exp = experiment(f"aa_{first + k}", metric)
        arms = assign(ids, exp)
        sim = simulate_outcomes(rng, OFFER, rate, sensitivity, np.zeros(len(ids), dtype=bool), WINDOW_DAYS)
        y = sim["converted"] if metric == "conversion" else sim["revenue"]
        exposed_day = rng.integers(0, enrol_days, len(ids))
        looks: list[Look] = []
        naive = False
        for day in range(1, PLANNED_DAYS + 1):
            done = exposed_day + WINDOW_DAYS <= day  # outcome window closed by this look
            if not done.any():
                continue
            a, yy = arms[done], y[done]
            t, c = yy[a == "treatment"], yy[a == "holdout"]
            if len(t) < 2 or len(c) < 2:
                continue
            w = welch(t.mean(), t.var(ddof=1), len(t), c.mean(), c.var(ddof=1), len(c))
            z = w.diff / w.se if w.se > 0 else 0.0
            naive |= abs(z) >= z_of(exp.alpha)
            looks.append(Look(day / PLANNED_DAYS, float(done.sum()), (("treatment", z),)))
        final = exposed_day + WINDOW_DAYS <= PLANNED_DAYS
        rows = analyse(exp, pd.DataFrame({"arm": arms[final], "y": y[final]}),
                       dict(zip(*np.unique(arms, return_counts=True))), looks)
        row = next(r for r in rows if r["arm"] == "treatment")
        flagged += bool(row["sequential_significant"])
        naive_flagged += naive
        # The final look alone against 1.96: checks the test statistic apart from the sequential rule.
        final_z.append(row["z"])
        final_flagged += abs(row["z"]) >= z_of(exp.alpha)
    low, high = clopper_pearson(flagged, n_experiments)
    return {"aa_flagged": flagged, "aa_flagged_of": f"{flagged}/{n_experiments}",
            "aa_rate_95ci": f"{flagged / n_experiments:.2%} [{low:.2%}, {high:.2%}] (Clopper-Pearson)",
            "aa_final_look_only_1_96_flagged": f"{final_flagged}/{n_experiments}",
            "aa_final_z_sd": round(float(np.std(final_z, ddof=1)), 3),
            "aa_naive_daily_1_96_flagged": f"{naive_flagged}/{n_experiments}", "aa_looks": PLANNED_DAYS - WINDOW_DAYS + 1}


def aa_vectorised(n_experiments: int, people: int = 20_000, seed: int = 17, batch: int = 250) -> dict:
    """The A/A above in bulk, for a tight rate: the same people, exposure days, daily looks, z
    (difference over its unpooled standard error, as experiments/analysis.py computes it) and
    boundaries (experiments/stats.py, from each look's calendar fraction and the expected
    information), with conversion drawn straight from the generator's model (P(orders > 0) =
    1 - exp(-mu)) and a uniform random split standing in for the hash (the hash's own z is
    checked by `aa`). Many runs in seconds instead of one per 0.2 CPU-s."""
    _, rate, _ = population(people)
    p_convert = 1 - np.exp(-expected_orders(rate, WINDOW_DAYS))
    enrol_days = PLANNED_DAYS - WINDOW_DAYS
    days = range(WINDOW_DAYS, PLANNED_DAYS + 1)
    info = [min(d - WINDOW_DAYS + 1, enrol_days) / enrol_days for d in days]
    bounds = np.array(sequential_boundaries([d / PLANNED_DAYS for d in days], 0.05, information=info))
    rng = np.random.default_rng(seed)
    flagged = final_flagged = 0
    done = 0
    while done < n_experiments:
        b = min(batch, n_experiments - done)
        y = rng.random((b, people)) < p_convert
        treated = rng.random((b, people)) < 0.5
        day = rng.integers(0, enrol_days, (b, people))
        cell = (treated * enrol_days + day) + (np.arange(b)[:, None] * 2 * enrol_days)
        n = np.bincount(cell.ravel(), minlength=b * 2 * enrol_days).reshape(b, 2, enrol_days).cumsum(axis=2)
        x = np.bincount(cell.ravel(), weights=y.ravel(), minlength=b * 2 * enrol_days).reshape(b, 2, enrol_days).cumsum(axis=2)
        # look at day d analyses those exposed on days 0 .. d - WINDOW_DAYS
        idx = [min(d - WINDOW_DAYS, enrol_days - 1) for d in days]
        n, x = n[:, :, idx], x[:, :, idx]
        m = x / np.maximum(n, 1)
        se = np.sqrt(m[:, 1] * (1 - m[:, 1]) / np.maximum(n[:, 1], 1) + m[:, 0] * (1 - m[:, 0]) / np.maximum(n[:, 0], 1))
        z = np.where(se > 0, (m[:, 1] - m[:, 0]) / np.where(se > 0, se, 1), 0.0)
        flagged += int((np.abs(z) >= bounds[None, :]).any(axis=1).sum())
        final_flagged += int((np.abs(z[:, -1]) >= z_of(0.05)).sum())
        done += b
    low, high = clopper_pearson(flagged, n_experiments)
    return {"aa_vectorised": f"{flagged}/{n_experiments} = {flagged / n_experiments:.2%} [{low:.2%}, {high:.2%}]",
            "aa_vectorised_final_look_only_1_96": f"{final_flagged}/{n_experiments} = {final_flagged / n_experiments:.2%}"}


def boundary_null_rate(paths: int = 400_000, seed: int = 1, alpha: float = 0.05) -> dict:
    """The alpha-spending rule alone, without the data: the A/A's looks (their calendar
    fractions and the information analysed at each) on exact Gaussian null paths. How often
    does |Z| cross the boundaries? At most alpha if the rule is right."""
    enrol_days = PLANNED_DAYS - WINDOW_DAYS
    days = range(WINDOW_DAYS, PLANNED_DAYS + 1)
    info = [min(d - WINDOW_DAYS + 1, enrol_days) / enrol_days for d in days]
    bounds = sequential_boundaries([d / PLANNED_DAYS for d in days], alpha, information=info)
    rng = np.random.default_rng(seed)
    b, crossed, before = np.zeros(paths), np.zeros(paths, dtype=bool), 0.0
    for t, c in zip(info, bounds):
        if t > before:
            b = b + rng.normal(0.0, np.sqrt(t - before), paths)
            before = t
        crossed |= np.abs(b / np.sqrt(t)) >= c
    low, high = clopper_pearson(int(crossed.sum()), paths)
    return {"boundary_null_rate": f"{crossed.mean():.3%} [{low:.3%}, {high:.3%}] of {paths:,} Gaussian null paths"}


def main(customers: int | None = None, n_experiments: int = 100) -> dict:
    """`customers` (bench/run_all.py passes its size) is not used: the experiments run on a fixed
    20,000 generated people, so their figures compare across machines and runs."""
    started, cpu = time.perf_counter(), time.process_time()
    out = {**coverage(n_experiments), **aa(n_experiments), **aa_vectorised(200 * n_experiments), **boundary_null_rate()}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["cpu_seconds"] = round(time.process_time() - cpu, 1)
    out["targets"] = (f"coverage >= {round(0.93 * n_experiments)}/{n_experiments}, A/A <= 6% (judged on aa_vectorised: "
                      f"{n_experiments} runs pin a 5% rate down only to about +-{196 * (0.0475 / n_experiments) ** 0.5:.0f} points)")
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for key, value in main(n_experiments=n).items():
        print(f"{key:<32} {value}")
