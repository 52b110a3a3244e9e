"""Benchmark: recommendation quality and churn calibration on the generator, end to end through
the CLI a user runs - `cdp generate`, `cdp run`, `cdp evaluate recommendations --json` and
`cdp evaluate churn --json` - in a scratch project.

    .venv/bin/python -m bench.bench_recommendations [CUSTOMERS]   (default 20,000)

Quality needs no million customers: `make bench` passes its customer count, capped at
QUALITY_CUSTOMERS; recommendation CPU at scale is bench_marts' `recommendations` layer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BENCH_AS_OF, OUT, ROOT

QUALITY_CUSTOMERS = 20_000


def _cdp(*args: str) -> str:
    cdp = str(Path(sys.executable).parent / "cdp")
    proc = subprocess.run([cdp, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    if proc.returncode != 0:
        raise RuntimeError(f"cdp {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(customers: int = QUALITY_CUSTOMERS) -> dict:
    n = min(customers, QUALITY_CUSTOMERS)
    proj = OUT / f"recs_{n}"
    cfg = proj / "cdp.yaml"
    timings = {}
    if not (proj / ".built").exists():
        _cdp("init", str(proj), "--force")
        cfg.write_text(re.sub(r"(?m)^as_of:.*$", f"as_of: {BENCH_AS_OF}", cfg.read_text()))
        t0 = time.perf_counter()
        _cdp("generate", "--config", str(cfg), "--customers", str(n), "--seed", "7", "--as-of", BENCH_AS_OF)
        _cdp("run", "--config", str(cfg))
        timings["prepare_s"] = round(time.perf_counter() - t0, 1)
        (proj / ".built").write_text("ok")
    t0 = time.perf_counter()
    recs = json.loads(_cdp("evaluate", "recommendations", "--config", str(cfg), "--json"))
    timings["evaluate_recommendations_s"] = round(time.perf_counter() - t0, 1)
    evaluated = json.loads(_cdp("evaluate", "churn", "--config", str(cfg), "--json"))
    churn, cart = evaluated["churn"], evaluated["cart_intent"]
    methods = recs["methods"]
    return {
        "customers": n, **timings,
        "recommendations_cutoff": recs["cutoff"], "buyers_evaluated": recs["customers_evaluated"],
        **{f"hr@10_{m}": r["all"]["hit_rate"] for m, r in methods.items()},
        **{f"recall@10_{m}": r["all"]["recall"] for m, r in methods.items()},
        "tessera_at_least_best_baseline": recs["tessera_at_least_best_baseline"],
        "churn_ground_truth_roc_auc": churn["ground_truth"].get("roc_auc"),
        "churn_mean_predicted": churn["ground_truth"].get("mean_predicted"),
        "churn_positive_rate": churn["ground_truth"].get("positive_rate"),
        "churn_validation": {k: churn["stored"].get("validation", {}).get(k)
                             for k in ("roc_auc", "ece", "mean_predicted", "positive_rate")},
        "cart_ground_truth_roc_auc": cart["ground_truth"].get("roc_auc"),
        "cart_ground_truth_mean_predicted": cart["ground_truth"].get("mean_predicted"),
        "cart_ground_truth_positive_rate": cart["ground_truth"].get("positive_rate"),
        "cart_validation": {k: cart["stored"].get("validation", {}).get(k)
                            for k in ("roc_auc", "ece", "mean_predicted", "positive_rate", "baseline_roc_auc",
                                      "baseline_ece")},
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else QUALITY_CUSTOMERS), indent=2))


# --------------------------------------------------------------------------- CPU at scale
def synthetic_shop(persons: int, seed: int = 1, products: int = 5_000, categories: int = 40):
    """The four tables the recommender reads, made directly in DuckDB at any size: people with a
    favourite category, Zipf-popular products, some staples rebought, sessions of views. For
    measuring cost only (the quality figures come from the generator above)."""
    import duckdb
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    cat_of = np.sort(rng.integers(0, categories, products))
    skus = np.array([f"S{i:06d}" for i in range(products)])
    orders_per = rng.poisson(4, persons) + 1
    person = np.repeat(np.arange(persons), orders_per)
    order_day = rng.integers(0, 730, len(person))
    fav = rng.integers(0, categories, persons)
    lines_per = rng.integers(1, 4, len(person))
    line_order = np.repeat(np.arange(len(person)), lines_per)
    line_person = person[line_order]
    starts = np.searchsorted(cat_of, np.arange(categories))
    sizes = np.diff(np.r_[starts, products])
    cat = np.where(rng.random(len(line_order)) < 0.7, fav[line_person], rng.integers(0, categories, len(line_order)))
    item = starts[cat] + np.minimum((rng.pareto(1.2, len(cat))).astype(int), sizes[cat] - 1)
    t0 = pd.Timestamp("2023-07-01")
    con = duckdb.connect()
    for schema in ("intermediate", "staging", "marts"):
        con.execute(f"CREATE SCHEMA {schema}")
    con.register("p", pd.DataFrame({"sku": skus, "category": cat_of.astype(str), "non_product": False}))
    con.execute("CREATE TABLE staging.stg_catalog__products AS SELECT * FROM p")
    con.register("l", pd.DataFrame({"person_id": line_person.astype(str), "order_key": line_order.astype(str),
                                    "sku": skus[item], "ordered_at": t0 + pd.to_timedelta(order_day[line_order], "D")}))
    con.execute("CREATE TABLE intermediate.int_order_lines AS SELECT * FROM l")
    n_views = persons * 4
    view_person = rng.integers(0, persons, n_views)
    view_cat = fav[view_person]
    view_item = starts[view_cat] + np.minimum(rng.pareto(1.2, n_views).astype(int), sizes[view_cat] - 1)
    con.register("v", pd.DataFrame({"person_id": view_person.astype(str), "session_id": (np.arange(n_views) // 2).astype(str),
                                    "sku": skus[view_item], "event_name": "product_viewed",
                                    "occurred_at": t0 + pd.to_timedelta(rng.integers(600, 730, n_views), "D")}))
    con.execute("CREATE TABLE intermediate.int_web_product_events AS SELECT * FROM v")
    con.execute("CREATE TABLE marts.customers AS SELECT DISTINCT person_id FROM intermediate.int_order_lines")
    return con, t0 + pd.Timedelta(days=730)


def scale(sizes=(50_000, 250_000)) -> dict:
    """CPU seconds of the recommendation stage at each size (one thread, as in the pipeline)."""
    import resource

    from threadpoolctl import threadpool_limits

    from core.settings.scoring import RecommendationsSettings
    from scoring.recommend import run_recommendations

    out = {}
    for n in sizes:
        con, as_of = synthetic_shop(n)
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with threadpool_limits(limits=1):
            result = run_recommendations(con, as_of, RecommendationsSettings())
        after = resource.getrusage(resource.RUSAGE_SELF)
        out[n] = {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                  "wall_s": round(time.perf_counter() - t0, 1), "rows": int(len(result.recommendations))}
        con.close()
    first, last = sizes[0], sizes[-1]
    out["cpu_ratio"] = round(out[last]["cpu_s"] / max(out[first]["cpu_s"], 1e-9), 2)
    out["customers_ratio"] = round(last / first, 2)
    return out
