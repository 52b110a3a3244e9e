"""One experiment's result rows (one per arm) from per-person outcomes: what `experiment_results`
publishes. Pure: a frame in, dicts out (the pipeline reads the warehouse; the bench and the tests
feed simulated outcomes straight in).

Outcomes per metric (per person exposed, once their window has closed):
  conversion          1 if they ordered within window_days after exposure, else 0
  churn               1 if they did not (lower is better)
  revenue_per_person  revenue of their orders in the window (0 without orders)
  aov                 their revenue / orders in the window, among those who ordered
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.settings.experiments import LOWER_IS_BETTER, Experiment
from experiments import stats

PROPORTIONS = {"conversion", "churn"}


@dataclass(frozen=True)
class Look:
    """One look at the data: the share of the planned duration elapsed, the persons analysed, and
    (for earlier looks) each arm's z then, to tell whether its boundary was crossed."""
    spending_fraction: float
    information: float
    z: tuple[tuple[str, float], ...] = ()


def _round(v, digits: int = 6):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), digits)


def analyse(experiment: Experiment, outcomes: pd.DataFrame, exposed: dict[str, int], looks: list[Look],
            conflicts: dict[str, int] | None = None) -> list[dict]:
    """`outcomes`: columns arm, y (the metric's outcome; persons whose window is still open left
    out). `exposed`: persons assigned per arm (the SRM check). `looks`: every look so far, this one
    last (alpha spending); once an arm's boundary is crossed at a look, the decision stands.
    `conflicts`: persons per arm whose merged ids had different arms (experiments/remap.py)."""
    metric, alpha = experiment.metric, experiment.alpha
    lower_better = metric in LOWER_IS_BETTER
    control = experiment.control_arm
    arms = [a.name for a in experiment.arms]
    counts = [int(exposed.get(a, 0)) for a in arms]
    srm_p = stats.srm_pvalue(counts, [a.share for a in experiment.arms])
    z95 = stats.z_of(alpha)
    look = looks[-1] if looks else Look(0.0, 0.0)
    by_arm = {a: outcomes.loc[outcomes["arm"] == a, "y"].to_numpy(float) for a in arms}

    def moments(y: np.ndarray) -> tuple[float, float, int]:
        n = len(y)
        return (float(y.mean()) if n else math.nan, float(y.var(ddof=1)) if n > 1 else math.nan, n)

    m0, v0, n0 = moments(by_arm[control])
    rows = []
    for arm in arms:
        m1, v1, n1 = moments(by_arm[arm])
        row = {
            "experiment": experiment.name, "arm": arm, "is_control": arm == control,
            "holdout": arm in experiment.holdout_arms, "metric": metric, "window_days": experiment.window_days,
            "exposed": counts[arms.index(arm)], "n": n1, "outcome_mean": _round(m1),
            "abs_lift": None, "abs_lift_low": None, "abs_lift_high": None,
            "rel_lift": None, "rel_lift_low": None, "rel_lift_high": None,
            "prob_beats_control": None, "z": None, "sequential_boundary": None, "sequential_significant": None,
            "decision": "control" if arm == control else "collecting",
            "srm_p_value": _round(srm_p, 8), "srm_flag": bool(srm_p < stats.SRM_ALPHA),
            "mde_absolute": None, "mde_relative": None,
            "spending_fraction": _round(look.spending_fraction, 4), "alpha_spent": _round(stats.obf_spent(look.spending_fraction, alpha), 6),
            "looks": len(looks), "arm_conflicts": int((conflicts or {}).get(arm, 0)),
            "interval_method": "newcombe_hybrid_score" if metric in PROPORTIONS else "welch_t",
            "posterior_method": "beta_binomial" if metric in PROPORTIONS else "normal_approximation",
        }
        rows.append(row)
        if arm == control or n1 < 2 or n0 < 2:
            continue
        if metric in PROPORTIONS:
            x1, x0 = float(by_arm[arm].sum()), float(by_arm[control].sum())
            lo, hi = stats.newcombe(x1, n1, x0, n0, z95)
            rel, rel_lo, rel_hi = stats.relative_proportion(x1, n1, x0, n0, z95)
            se = math.sqrt(m1 * (1 - m1) / n1 + m0 * (1 - m0) / n0)
            p_beats = stats.prob_beats_beta(x1, n1, x0, n0, lower_better)
            pooled = (x1 + x0) / (n1 + n0)
            mde_abs = stats.mde(pooled * (1 - pooled), n1, pooled * (1 - pooled), n0, alpha)
        else:
            w = stats.welch(m1, v1, n1, m0, v0, n0)
            lo, hi = w.interval(alpha)
            rel, rel_lo, rel_hi = stats.relative_mean(m1, v1, n1, m0, v0, n0, z95)
            se = w.se
            p_beats = stats.prob_beats_normal(w.diff, w.se, lower_better)
            mde_abs = stats.mde(v1, n1, v0, n0, alpha)
        diff = m1 - m0
        z = diff / se if se > 0 else 0.0
        row.update({
            "abs_lift": _round(diff), "abs_lift_low": _round(lo), "abs_lift_high": _round(hi),
            "rel_lift": _round(rel), "rel_lift_low": _round(rel_lo), "rel_lift_high": _round(rel_hi),
            "prob_beats_control": _round(p_beats, 4), "z": _round(z, 4),
            "mde_absolute": _round(mde_abs), "mde_relative": _round(mde_abs / abs(m0)) if m0 else None,
        })
    # The boundaries need every look's information; one recursion serves all arms.
    boundaries = (stats.sequential_boundaries([lk.spending_fraction for lk in looks], alpha,
                                              information=[max(lk.information, 1e-9) for lk in looks])
                  if looks else [])
    boundary = boundaries[-1] if boundaries else math.inf
    for row in rows:
        if row["is_control"] or row["z"] is None:
            continue
        earlier = [(dict(lk.z).get(row["arm"]), c) for lk, c in zip(looks[:-1], boundaries[:-1])]
        crossed = any(z is not None and abs(z) >= c for z, c in earlier) or abs(row["z"]) >= boundary
        row["sequential_boundary"] = _round(boundary, 4)
        row["sequential_significant"] = crossed
        better = (row["z"] > 0) != lower_better
        if crossed:
            row["decision"] = "arm_better" if better else "arm_worse"
        elif look.spending_fraction >= 1:
            row["decision"] = "no_difference_detected"
        else:
            row["decision"] = "collecting"
    return rows
