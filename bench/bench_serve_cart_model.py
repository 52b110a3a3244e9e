"""Live cart intent's cost per decision: the batch's cart-intent model (fitted by
scoring.cart.train_and_score on synthetic carts shaped like int_cart_features) compiled by
scoring.compiled, against scikit-learn's own predict_proba on one row, as /v1/decide calls it.

    python -m bench.bench_serve_cart_model [--carts N] [--calls N]

Reported in CPU microseconds (time.process_time), beside wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.settings.scoring import CartIntentSettings
from scoring.cart import FEATURES, LABEL, train_and_score
from scoring.compiled import compile_model


def _carts(rng, n: int, cutoff: pd.Timestamp, snapshot: str, first: int) -> pd.DataFrame:
    f = pd.DataFrame({c: rng.gamma(2, 3, n) for c in FEATURES})
    f["checkout_started"] = rng.integers(0, 2, n).astype(float)
    f["hours_since_added"] = rng.uniform(0.5, 700, n)
    f["cart_value"] = rng.gamma(2, 40, n).round(2)
    logit = -2 + 1.5 * f["checkout_started"] - f["hours_since_added"] / 200 + f["orders_365d"] / 6
    f[LABEL] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int) if snapshot == "history" else None
    ids = np.arange(first, first + n)
    f["snapshot"], f["cutoff_at"], f["cart_id"], f["person_id"] = snapshot, cutoff, [f"c{i}" for i in ids], [f"P{i}" for i in ids]
    f["last_added_at"] = cutoff - pd.to_timedelta(f["hours_since_added"], unit="h")
    return f


def main(carts: int = 40_000, calls: int = 20_000) -> dict:
    rng = np.random.default_rng(5)
    cutoff = pd.Timestamp("2026-11-22")
    weeks = 12
    frames = [_carts(rng, carts // weeks, cutoff - pd.Timedelta(days=7 * w), "history", w * carts) for w in range(1, weeks + 1)]
    score = _carts(rng, 2000, cutoff, "score", 0)
    result = train_and_score(pd.concat([*frames, score], ignore_index=True), rng.uniform(1, 150, 500),
                             CartIntentSettings())
    model = result.model
    rows = score[model.features].to_numpy(float)
    compiled = compile_model(model.deployed)
    out = {"algorithm": model.algorithm, "training_rows": model.training_rows, "compiled": compiled.compiled}
    for name, fn, n in (("compiled", lambda r: compiled.probability(r), calls),
                        ("scikit-learn predict_proba", lambda r: model.deployed.predict_proba(r.reshape(1, -1))[0, 1],
                         min(calls, 500))):
        with threadpool_limits(limits=1):
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(n):
                fn(rows[i % len(rows)])
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        out[name] = {"calls": n, "cpu_us_per_call": round(cpu / n * 1e6, 1), "wall_us_per_call": round(wall / n * 1e6, 1)}
    err = max(abs(compiled.probability(r) - p) for r, p in zip(rows[:500], model.deployed.predict_proba(rows[:500])[:, 1]))
    out["max_abs_difference"] = float(err)
    print(out, flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--carts", type=int, default=40_000)
    ap.add_argument("--calls", type=int, default=20_000)
    a = ap.parse_args()
    main(a.carts, a.calls)
