"""Ingestion's whole stage against the bare tool, at a given size, CPU beside wall.

    python -m bench.bench_ingestion [CUSTOMERS] [--rounds N]     (default 1,000,000 and 1)

Stage: `cdp run --only ingestion --json` on a fresh project whose landing folder holds the
generator's files (hard-linked, bench/bench_pipeline.project): every raw table's load (parsing,
contract checks, quarantine, the manifest, the load profile, erasure filter) and the source
checks, as Dagster runs them. CPU is the process tree's user + system time; the stage's share is
what falls inside its Dagster steps (bench_pipeline.per_stage), "orchestration" the rest
(start-up, definitions, planning, the summary).

Bare: one DuckDB process (default threads) reading the same files into one table per raw table
with `read_json` / `read_csv`, each column declared with the contract's type (the config's column
names and date formats), nothing else: no line numbers, checks, lineage, manifest or quarantine.

Each round runs the bare load, then the stage, each in a child process; the figures are the
rounds' medians (CPU is what holds on a shared machine; wall there mostly measures waiting).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from bench.bench_pipeline import dagster_intervals, measured_run, per_stage, project
from bench.common import OUT, ROOT


def bare_load(config_path: Path, db: Path) -> dict[str, int]:
    """The bare tool: every landed file of every enabled source entity into a table, typed as
    the contract says; returns rows per table."""
    import duckdb

    from core.config import load_config
    from core.contracts import DUCKDB_TYPES, JSON
    from core.contracts import entity as contract_entity
    from ingestion.loader import landed_files

    config = load_config(config_path)
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    rows: dict[str, int] = {}
    for source in config.enabled_sources():
        for name, files in source.entities.items():
            ent = contract_entity(source.kind, name)
            paths = [str(p) for p, _ in landed_files(config, source, name)]
            if not paths:
                continue
            landed_of = {target: landed for landed, target in files.columns.items()}
            table = f"{source.name}_{name}"
            listed = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
            if (files.format or ent.format) == "jsonl":
                cols = ", ".join(f"'{landed_of.get(f.name, f.name)}': '{DUCKDB_TYPES[f.type]}'" for f in ent.fields)
                reader = f"read_json({listed}, format='newline_delimited', columns={{{cols}}})"
            else:
                with open(paths[0], encoding="utf-8-sig") as fh:
                    header = fh.readline().rstrip("\r\n").split(files.delimiter)
                # (a column read with a strptime format is read as TIMESTAMP: DuckDB's reader applies
                # timestampformat to that type only; the loader converts it to UTC alike)
                types = {f.name: "TIMESTAMP" if f.name in files.formats and DUCKDB_TYPES[f.type] == "TIMESTAMPTZ"
                         else DUCKDB_TYPES[f.type] for f in ent.fields if f.type != JSON}
                cols = ", ".join(f"'{h}': '{types.get(files.columns.get(h, h), 'VARCHAR')}'" for h in header)
                fmt = "".join(f", {'dateformat' if t == 'DATE' else 'timestampformat'}='{files.formats[c]}'"
                              for c, t in types.items() if c in files.formats)
                reader = (f"read_csv({listed}, header=true, delim='{files.delimiter}', auto_detect=false, "
                          f"columns={{{cols}}}{fmt})")
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM {reader}")
            rows[table] = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    con.close()
    return rows


def _stage(folder: Path, env: dict) -> dict:
    shutil.rmtree(folder / "warehouse", ignore_errors=True)
    shutil.rmtree(folder / ".dagster", ignore_errors=True)
    cmd = [str(ROOT / ".venv/bin/cdp"), "run", "--config", str(folder / "cdp.yaml"), "--only", "ingestion", "--json"]
    run = measured_run(cmd, env)
    if run["returncode"] != 0:
        raise RuntimeError(f"cdp run --only ingestion failed: {run['stderr'][-2000:]}")
    steps, _ = dagster_intervals(folder / ".dagster", run["pid"])
    stages = per_stage(run, steps)
    return {"cpu_s": run["cpu"], "wall_s": run["wall"], "stage_cpu_s": stages["ingestion"]["cpu_s"],
            "stage_wall_s": stages["ingestion"]["wall_s"], "orchestration_cpu_s": stages["orchestration"]["cpu_s"],
            "peak_rss_mb": max((r for _, _, r in run["samples"]), default=0.0)}


def _bare(folder: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_ingestion", "--bare-load", str(folder / "cdp.yaml"),
           str(folder / "bare.duckdb")]
    run = measured_run(cmd, env)
    if run["returncode"] != 0:
        raise RuntimeError(f"bare load failed: {run['stderr'][-2000:]}")
    (folder / "bare.duckdb").unlink(missing_ok=True)
    return {"cpu_s": run["cpu"], "wall_s": run["wall"], "rows": json.loads(run["stdout"]),
            "peak_rss_mb": max((r for _, _, r in run["samples"]), default=0.0)}


def main(customers: int = 1_000_000, rounds: int = 1) -> dict:
    folder = project(customers, suffix="_ingestion")
    landing = folder / "landing"
    files = [p for p in landing.rglob("*") if p.is_file()]
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    bare, stage = [], []
    for attempt in range(rounds):
        bare.append(_bare(folder, env))
        stage.append(_stage(folder, env))
        print(f"  round {attempt + 1}: bare {bare[-1]['cpu_s']:.1f} CPU-s ({bare[-1]['wall_s']:.1f} s wall); "
              f"stage {stage[-1]['stage_cpu_s']:.1f} CPU-s ({stage[-1]['stage_wall_s']:.1f} s), "
              f"whole process {stage[-1]['cpu_s']:.1f} CPU-s ({stage[-1]['wall_s']:.1f} s)", flush=True)

    def med(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    result = {
        "customers": customers,
        "files": len(files),
        "landed_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
        "rows": sum(bare[0]["rows"].values()),
        "rounds": rounds,
        "bare_cpu_s": med(bare, "cpu_s"),
        "bare_wall_s": med(bare, "wall_s"),
        "stage_cpu_s": med(stage, "stage_cpu_s"),
        "stage_wall_s": med(stage, "stage_wall_s"),
        "cdp_run_cpu_s": med(stage, "cpu_s"),
        "cdp_run_wall_s": med(stage, "wall_s"),
        "orchestration_cpu_s": med(stage, "orchestration_cpu_s"),
        "stage_peak_rss_mb": med(stage, "peak_rss_mb"),
        "bare_peak_rss_mb": med(bare, "peak_rss_mb"),
    }
    result["cpu_ratio_stage_to_bare"] = round(result["stage_cpu_s"] / result["bare_cpu_s"], 2)
    result["cpu_ratio_cdp_run_to_bare"] = round(result["cdp_run_cpu_s"] / result["bare_cpu_s"], 2)
    result["target_cpu_ratio"] = 1.3
    shutil.rmtree(folder, ignore_errors=True)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-load":
        print(json.dumps(bare_load(Path(sys.argv[2]), Path(sys.argv[3]))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("customers", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    cli = parser.parse_args()
    out = main(cli.customers, cli.rounds)
    print(json.dumps(out, indent=2))
    (OUT / f"bench_ingestion_{cli.customers}.json").write_text(json.dumps(out, indent=2))
