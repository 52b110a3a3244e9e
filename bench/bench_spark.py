"""The same generated project through `cdp run` on DuckDB and on a local Spark (`engine: spark`,
local[2]), side by side: per stage wall, CPU seconds and peak RSS of the whole process tree
(the JVM Spark starts is a child of the `cdp run` process, so its CPU and memory are in the
tree), and whether the two published snapshots agree (persons, segment members, scores).

    python -m bench.bench_spark --customers 20000
    python -m bench.bench_spark --customers 1000000 --engines spark --landing DIR --driver-memory 8g --max-rss-gb 10

Data: the generator's (bench/common.py, as of BENCH_AS_OF, seed 11) or `--landing DIR` (an
existing generated landing folder, hard-linked), in a fresh project per engine under
$TESSERA_BENCH_DIR/spark_vs_duckdb_<N>/<engine>. One full `cdp run --as-of BENCH_AS_OF --json
--accept-drift` per engine, measured from outside (bench/bench_pipeline.py's sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb

from bench.bench_pipeline import _link_or_copy, dagster_intervals, failure_report, measured_run, per_stage
from bench.common import BENCH_AS_OF, OUT, ROOT, data_dir

ENGINES = ("duckdb", "spark")
# What both snapshots must agree on (the published tables' names; sorted rows compared).
AGREE = {
    "persons": "SELECT person_id FROM customers",
    "segment members": "SELECT segment, person_id FROM segment_membership",
}
SCORES = {
    "churn": "SELECT person_id, churn_probability FROM churn_scores",
    "cart intent": "SELECT person_id || ':' || cart_id, purchase_probability FROM cart_intent",
}


def project(customers: int, engine: str, landing: Path, driver_memory: str | None) -> Path:
    folder = OUT / f"spark_vs_duckdb_{customers}" / engine
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([str(ROOT / ".venv/bin/cdp"), "init", str(folder)], check=True, capture_output=True)
    cfg = folder / "cdp.yaml"
    text = cfg.read_text().replace("\nengine: duckdb\n", f"\nengine: {engine}\n")
    if engine == "spark" and driver_memory:
        # (local master: the driver is the executor; its heap is the JVM's bound)
        text = text.replace("  catalog: spark_catalog\n",
                            f"  catalog: spark_catalog\n  conf: {{spark.driver.memory: {driver_memory}}}\n", 1)
    cfg.write_text(text)
    shutil.rmtree(folder / "landing", ignore_errors=True)
    shutil.copytree(landing, folder / "landing", ignore=shutil.ignore_patterns("ground_truth", ".complete"),
                    copy_function=_link_or_copy)
    return folder


def run_one(folder: Path, max_rss_gb: float | None) -> dict:
    cmd = [str(ROOT / ".venv/bin/cdp"), "run", "--config", str(folder / "cdp.yaml"), "--as-of", BENCH_AS_OF,
           "--json", "--accept-drift"]
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    run = measured_run(cmd, env, max_rss_mb=max_rss_gb * 1024 if max_rss_gb else None)
    # The JVM is a child pyspark does not wait for at exit, so the reaped children's CPU may miss
    # it; the sampled tree (the JVM included while it ran) is then the larger figure.
    run["cpu"] = max(run["cpu"], max((c for _, c, _ in run["samples"][:-1]), default=0.0))
    try:
        summary = json.loads(run["stdout"][run["stdout"].index("{"):])
    except ValueError:
        summary = {}
    steps, runs = dagster_intervals(folder / ".dagster", run["pid"])
    record = {"ok": summary.get("ok"), "returncode": run["returncode"], "wall_s": round(run["wall"], 1),
              "cpu_s": round(run["cpu"], 1), "peak_rss_mb": round(max((r for _, _, r in run["samples"]), default=0), 1),
              "stages": per_stage(run, steps)}
    if run["returncode"] != 0 or not summary.get("ok"):
        record["failure"] = failure_report(run, summary, runs)
    return record


def _rows(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return sorted(map(tuple, con.execute(sql).fetchall()), key=repr)
    finally:
        con.close()


def agreement(folders: dict[str, Path]) -> dict:
    """Do the two published snapshots agree? Row sets for persons and segments; scores per key."""
    from core.snapshots import current_path

    paths = {e: current_path(f / "published") for e, f in folders.items()}
    if not all(p.exists() for p in paths.values()):
        return {"compared": False, "why": "a run published nothing"}
    out: dict = {"compared": True}
    for name, sql in AGREE.items():
        duck, spark = (_rows(paths[e], sql) for e in ENGINES)
        out[name] = {"duckdb": len(duck), "spark": len(spark), "equal": duck == spark}
    for name, sql in SCORES.items():
        duck, spark = (dict(_rows(paths[e], sql)) for e in ENGINES)
        common = duck.keys() & spark.keys()
        gaps = sorted(abs(duck[k] - spark[k]) for k in common)
        out[f"{name} scores"] = {"duckdb": len(duck), "spark": len(spark), "same_keys": duck.keys() == spark.keys(),
                                 "equal_to_1e-6": sum(g <= 1e-6 for g in gaps), "max_gap": max(gaps, default=0.0)}
    return out


def main(customers: int, engines: tuple[str, ...] = ENGINES, landing: Path | None = None,
         driver_memory: str | None = "8g", max_rss_gb: float | None = None) -> dict:
    """`make bench`'s entry (bench/run_all.py)."""
    landing = landing or data_dir(customers)
    results: dict = {"customers": customers, "engines": {}}
    folders = {}
    for engine in engines:
        folders[engine] = project(customers, engine, landing, driver_memory)
        print(f"{engine}: cdp run on {customers:,} customers ({folders[engine]})", flush=True)
        rec = results["engines"][engine] = run_one(folders[engine], max_rss_gb)
        print(f"  ok={rec['ok']} wall {rec['wall_s']} s, cpu {rec['cpu_s']} s, peak rss {rec['peak_rss_mb']:.0f} MB",
              flush=True)
        for line in rec.get("failure", []):
            print(f"  NOT OK: {line}", flush=True)
    if set(engines) == set(ENGINES):
        results["agreement"] = agreement(folders)
    stages = sorted({s for r in results["engines"].values() for s in r["stages"]},
                    key=lambda s: min(list(r["stages"]).index(s) if s in r["stages"] else 99
                                      for r in results["engines"].values()))
    header = "".join(f" | {e + ' wall s':>12} {'cpu s':>8} {'rss MB':>7}" for e in engines)
    print(f"\n{customers:,} customers, per stage{header}")
    for stage in stages + ["whole run"]:
        cells = ""
        for e in engines:
            r = results["engines"][e]
            m = r["stages"].get(stage) if stage != "whole run" else {
                "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"]}
            cells += (f" | {m['wall_s']:>12.1f} {m['cpu_s']:>8.1f} {m['peak_rss_mb']:>7.0f}" if m else f" | {'-':>29}")
        print(f"  {stage:<24}{cells}")
    if "agreement" in results:
        print("agreement:", json.dumps(results["agreement"]))
    out = OUT / f"bench_spark_{customers}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    flat = {f"{e} {k}": r[k] for e, r in results["engines"].items() for k in ("ok", "wall_s", "cpu_s", "peak_rss_mb")}
    if results.get("agreement", {}).get("compared"):
        a = results["agreement"]
        flat["agree persons, segments"] = a["persons"]["equal"] and a["segment members"]["equal"]
        flat["churn max gap"] = a["churn scores"]["max_gap"]
    return flat


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--engines", default=",".join(ENGINES), help="duckdb,spark (default), or one of them")
    parser.add_argument("--landing", type=Path, default=None, help="a generated landing folder to use (hard-linked)")
    parser.add_argument("--driver-memory", default="8g", help="spark.driver.memory (local master: the whole JVM heap)")
    parser.add_argument("--max-rss-gb", type=float, default=None,
                        help="kill a run whose process tree passes this RSS, and report the stage it was in")
    cli = parser.parse_args()
    main(cli.customers, tuple(e for e in cli.engines.split(",") if e), cli.landing, cli.driver_memory, cli.max_rss_gb)
