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
    churn = json.loads(_cdp("evaluate", "churn", "--config", str(cfg), "--json"))["churn"]
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
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else QUALITY_CUSTOMERS), indent=2))
