"""Benchmark: every layer from raw.* to the published marts, with time and peak memory per layer.

    .venv/bin/python bench/bench_marts.py --customers 20000 [--workdir DIR]

Generates and ingests the data once (cached in the work dir, shared with bench_identity), copies
the warehouse, parses the dbt project once (reported as dbt_parse), then runs each layer in its
own child process, in pipeline order: identity
(identity.pipeline.resolve), staging, intermediate and the core marts (dbt run, in-process
dbtRunner), scoring (scoring.pipeline.run_scoring), recommendations (run_recommendation_stage) and the marts built after scoring (dbt models
tagged after_scoring). Each child reports its wall time and peak resident memory (ru_maxrss of
the child: DuckDB's memory is native). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AS_OF = dt.date(2025, 6, 30)  # bench_identity._prepare generates history up to this day
# (layer, dbt command) in pipeline order; None = a Python stage. `dbt_parse` comes first so that
# the layers measure their builds, not dbt's cold parse of the project (they reuse its state).
LAYERS = [
    ("dbt_parse", ["parse"]),
    ("identity", None),
    ("staging", ["run", "--select", "staging"]),
    ("intermediate", ["run", "--select", "intermediate", "--exclude", "tag:after_scoring"]),
    ("marts", ["run", "--select", "marts", "--exclude", "tag:after_scoring"]),
    ("scoring", None),
    ("recommendations", None),
    ("marts_after_scoring", ["run", "--select", "tag:after_scoring"]),
]


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _child(layer: str, proj: Path, db: Path, target: Path) -> dict:
    from core.config import load_config

    cfg = load_config(proj / "cdp.yaml")
    as_of = dt.datetime.combine(AS_OF, dt.time(23, 59, 59), tzinfo=dt.timezone.utc)
    t0 = time.perf_counter()
    extra: dict = {}
    if layer == "identity":
        import duckdb

        from identity.pipeline import resolve

        con = duckdb.connect(str(db))
        res = resolve(cfg, con, run_id="bench", as_of=as_of, model_dir=db.parent / "bench_models")
        con.close()
        extra = {"persons": res.persons}
    elif layer == "scoring":
        import duckdb

        from scoring.pipeline import run_scoring

        con = duckdb.connect(str(db))
        result = run_scoring(con, cfg.churn, cfg.cart_intent, cfg.offers, progress=lambda m: None)
        con.close()
        s = result.summary()
        extra = {k: s[k] for k in ("churn_scored", "churn_validation_roc_auc", "cart_scored", "offer_rows")}
    elif layer == "recommendations":
        import duckdb

        from scoring.pipeline import run_recommendation_stage

        con = duckdb.connect(str(db))
        result = run_recommendation_stage(con, as_of, cfg.recommendations, progress=lambda m: None)
        con.close()
        s = result.summary()
        extra = {"rows": s["rows"], "persons": s["persons"], "blend": s["blend"],
                 "validation_hit_rate": round(s["validation"].get("tessera", {}).get("hit_rate", float("nan")), 4)}
    else:
        from dbt.cli.main import dbtRunner

        from core.settings.scoring import dbt_vars

        os.environ["TESSERA_WAREHOUSE"] = str(db)
        os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        command = dict(LAYERS)[layer]
        dbt_dir = ROOT / "dbt"
        variables = {"as_of": AS_OF.isoformat(), **dbt_vars(cfg.churn, cfg.cart_intent)}
        res = dbtRunner().invoke([*command, "--project-dir", str(dbt_dir), "--profiles-dir", str(dbt_dir),
                                  "--target-path", str(target), "--vars", json.dumps(variables), "--quiet"])
        if not res.success:
            raise RuntimeError(f"dbt {' '.join(command)} failed: {res.exception}")
        if command[0] == "run":
            extra = {"models": len(res.result) if res.result is not None else None}
    # CPU seconds of the child beside wall time: on a shared machine wall time is mostly waiting.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": _peak_mb(), **extra}


def _run_child(layer: str, proj: Path, db: Path, target: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", layer, "--project", str(proj), "--db", str(db),
                           "--target", str(target)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{layer} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(customers: int = 20_000, workdir: str | Path | None = None, seed: int = 1) -> dict:
    from bench.bench_identity import _prepare

    workdir = Path(workdir or os.environ.get("TESSERA_BENCH_DIR", "/tmp/tessera_bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    proj = _prepare(customers, workdir, seed)
    db = workdir / "bench_marts.duckdb"
    target = workdir / "bench_marts_dbt_target"
    shutil.copy(proj / "warehouse" / "tessera.duckdb", db)
    layers = {}
    try:
        for layer, _ in LAYERS:
            layers[layer] = _run_child(layer, proj, db, target)
            print(f"   {layer:<22} {layers[layer]['wall_s']:>8.1f} s  {layers[layer]['peak_rss_mb']:>8.0f} MB", flush=True)
    finally:
        db.unlink(missing_ok=True)
    total = round(sum(v["wall_s"] for v in layers.values()), 1)
    return {"customers": customers, "layers": layers, "total_s": total,
            "peak_rss_mb": max(v["peak_rss_mb"] for v in layers.values()),
            "data_preparation": json.loads((proj / "READY").read_text())}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--project", default=None)
    ap.add_argument("--db", default=None)
    ap.add_argument("--target", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, Path(a.project), Path(a.db), Path(a.target))))
    else:
        print(json.dumps(main(a.customers, a.workdir), indent=2))
