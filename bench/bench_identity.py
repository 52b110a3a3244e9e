"""Benchmark: the whole identity stage on ~1,000,000 identity records, against Splink's own
bare training + predict + clustering with the same settings, in the same run.

    .venv/bin/python bench/bench_identity.py --customers 205000 [--workdir DIR]

Steps: generate + ingest the data once (cached in the work dir), then ``--rounds`` times (3;
the median round is reported, with every round's ratio) two child processes run one after the
other on a fresh copy of the same warehouse: (1) ``identity.pipeline.resolve``
(records, deterministic rules, Splink training + prediction, constrained clustering, stable
ids, golden records); (2) bare Splink: the same input records, settings and training recipe,
then ``predict`` and ``cluster_pairwise_predictions_at_threshold``. Each child reports its
wall time and peak resident memory (``ru_maxrss``: DuckDB's memory is native, so tracemalloc
would not see it). Prints one JSON document.
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


def _prepare(customers: int, workdir: Path, seed: int) -> Path:
    from cdp.scaffold import init_project
    from core.config import load_config
    from core.warehouse import open_warehouse
    from ingestion.generator import generate
    from ingestion.loader import ingest

    proj = workdir / f"c{customers}_s{seed}"
    done = proj / "READY"
    if done.exists():
        return proj
    if proj.exists():
        shutil.rmtree(proj)
    cfg = load_config(init_project(proj))
    t0 = time.perf_counter()
    generate(customers=customers, seed=seed, out=cfg.landing_dir, as_of=dt.date(2025, 6, 30))
    t1 = time.perf_counter()
    with open_warehouse(cfg.warehouse_path) as con:
        ingest(cfg, con)
    done.write_text(json.dumps({"generate_s": round(t1 - t0, 1), "ingest_s": round(time.perf_counter() - t1, 1)}))
    return proj


def _child_identity(proj: Path, db: Path) -> dict:
    import duckdb

    from core.config import load_config
    from identity.evaluate import evaluate, truth_path
    from identity.pipeline import resolve

    cfg = load_config(proj / "cdp.yaml")
    con = duckdb.connect(str(db))
    t0, c0 = time.perf_counter(), _cpu_s()
    res = resolve(cfg, con, run_id="bench", model_dir=db.parent / "bench_models")
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    out = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": _peak_mb(),
           "records": res.records, "persons": res.persons,
           "splink_input_records": None, "splink_pairs": res.splink_pairs, "timings": res.timings,
           "largest_cluster": res.largest_cluster, "refused_by_reason": res.refused_by_reason}
    out["splink_input_records"] = con.sql(
        "SELECT count(*) FROM identity.records WHERE NOT is_satellite AND (first_name IS NOT NULL "
        "OR last_name IS NOT NULL OR date_of_birth IS NOT NULL)").fetchall()[0][0]
    if truth_path(cfg).is_file():
        ev = evaluate(con, truth_path(cfg))
        out["evaluation"] = {k: ev[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1",
                                                "bcubed_precision", "bcubed_recall", "over_merged_clusters",
                                                "under_merged_persons", "linkable_true_pairs_by_identifiers",
                                                "pairwise_recall_linkable_by_identifiers", "linkable_true_pairs",
                                                "pairwise_recall_linkable", "unique_id_conflicts")}
    con.close()
    return out


def _child_bare_splink(proj: Path, db: Path) -> dict:
    """Splink alone: same input records, settings, training recipe and threshold."""
    import duckdb

    from core.config import load_config
    from identity import splink_model

    cfg = load_config(proj / "cdp.yaml")
    settings = cfg.identity
    con = duckdb.connect(str(db), read_only=True)
    tbl = con.sql(splink_model.input_sql()).to_arrow_table()  # records built by the identity run
    con.close()
    t0, c0 = time.perf_counter(), _cpu_s()
    linker, sdb = splink_model.make_linker(tbl, settings)
    del tbl
    timings = splink_model.train(linker, settings)
    t1 = time.perf_counter()
    pred = linker.inference.predict(threshold_match_probability=settings.match_threshold, warning_mode="never")
    t2 = time.perf_counter()
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pred, settings.match_threshold)
    n_clusters = sdb.sql(f"SELECT count(DISTINCT cluster_id) FROM {clusters.physical_name}").fetchall()[0][0]
    t3 = time.perf_counter()
    sdb.close()
    return {"wall_s": round(t3 - t0, 2), "cpu_s": round(_cpu_s() - c0, 2), "peak_rss_mb": _peak_mb(), "train_s": round(t1 - t0, 2),
            "predict_s": round(t2 - t1, 2), "cluster_s": round(t3 - t2, 2), "clusters": n_clusters,
            "training_steps_s": {k: round(v, 2) for k, v in timings.items()}}


def _cpu_s() -> float:
    """User + system CPU seconds of this process (all its threads): steadier than wall time when
    the machine is shared, since waiting for a core is not counted."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _run_child(phase: str, proj: Path, db: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", phase, "--project", str(proj), "--db", str(db)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# `make bench` passes one customer count to every benchmark; 205k of its 1M customers make
# ~1.27M identity records, the "1,000,000 identity records".
SHARE_OF_RUN_ALL_CUSTOMERS = 0.205


def main(customers: int = 205_000, workdir: str | Path | None = None, seed: int = 1, rounds: int = 3) -> dict:
    """``rounds`` pairs of (identity stage, bare Splink), each on a fresh copy of the warehouse;
    the figures are the median pair's. On a shared machine one pair can be off by a third
    (bare Splink took 12.5-16.8 s on identical input in one afternoon), so the spread is reported."""
    workdir = Path(workdir or os.environ.get("TESSERA_BENCH_DIR", "/tmp/tessera_bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    proj = _prepare(customers, workdir, seed)
    src = proj / "warehouse" / "tessera.duckdb"
    db = workdir / "bench_identity.duckdb"
    pairs = []
    for i in range(rounds):
        shutil.copy(src, db)
        identity = _run_child("identity", proj, db)
        bare = _run_child("bare_splink", proj, db)
        pairs.append((identity, bare, identity["wall_s"] / bare["wall_s"] if bare["wall_s"] else float("nan")))
        print(f"identity bench: round {i + 1}/{rounds}: stage {identity['wall_s']} s, bare Splink {bare['wall_s']} s, "
              f"{pairs[-1][2]:.2f}x", file=sys.stderr, flush=True)
    db.unlink(missing_ok=True)
    identity, bare, ratio = sorted(pairs, key=lambda p: p[2])[len(pairs) // 2]
    result = {
        "customers": customers,
        "identity_records": identity["records"],
        "splink_input_records": identity["splink_input_records"],
        "data_preparation": json.loads((proj / "READY").read_text()),
        "identity_stage": identity,
        "bare_splink": bare,
        "ratio_identity_to_bare_splink": round(ratio, 2),
        "cpu_ratio_identity_to_bare_splink": round(identity["cpu_s"] / bare["cpu_s"], 2) if bare["cpu_s"] else None,
        "ratio_every_round": [round(p[2], 2) for p in pairs],
        "cores": os.cpu_count(),
    }
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=205_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="pairs of (stage, bare Splink) runs; the median pair is reported")
    ap.add_argument("--child", choices=["identity", "bare_splink"])
    ap.add_argument("--project")
    ap.add_argument("--db")
    a = ap.parse_args()
    if a.child:
        fn = _child_identity if a.child == "identity" else _child_bare_splink
        print(json.dumps(fn(Path(a.project), Path(a.db)), default=str))
    else:
        print(json.dumps(main(a.customers, a.workdir, a.seed, a.rounds), indent=2, default=str))
