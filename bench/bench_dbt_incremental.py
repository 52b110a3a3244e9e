"""The incremental event staging models (dbt/macros/incremental_events.sql) alone: what a daily build
costs next to a full one, in dbt's own node time and the dbt process's CPU.

    python -m bench.bench_dbt_incremental --customers 20000

Data: the generator's (bench/common.py, as of BENCH_AS_OF, seed 11) landed into a fresh project;
then `dbt run --select stg_web__events stg_email__events` as of BENCH_AS_OF (the first, full build),
one more day landed (ingestion/generator/increment.py) and built as of that day (incremental),
the same day built again (nothing new), and a `--full-refresh` of that day for comparison. Each is
measured after a `dbt parse` with the same vars; `model_cpu_s` subtracts dbt's own start-up (an
invocation that selects nothing). `--reuse` measures on the project left by an earlier run, with
one more day landed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import time

from bench.common import BENCH_AS_OF, OUT, ROOT, data_dir

MODELS = ("stg_web__events", "stg_email__events")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _dbt(project_dir, warehouse, target, as_of: str, *args: str) -> None:
    env = {**os.environ, "TESSERA_WAREHOUSE": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    subprocess.run([str(ROOT / ".venv/bin/dbt"), *args, "--vars", json.dumps({"as_of": as_of}),
                    "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
                    "--target-path", str(target), "--log-path", str(target)], env=env, check=True, capture_output=True)


def _dbt_run(project_dir, warehouse, target, as_of: str, *extra: str) -> dict:
    """A measured `dbt run` of the two models. A new as_of makes dbt re-parse the whole project
    (vars changed), which `cdp run` pays once per run whatever the models do: parsed first,
    unmeasured; `model_cpu_s` is the run's CPU less an invocation that selects nothing."""
    _dbt(project_dir, warehouse, target, as_of, "parse")
    cpu0 = _children_cpu()
    _dbt(project_dir, warehouse, target, as_of, "run", "--select", MODELS[0], "--exclude", MODELS[0])
    baseline = _children_cpu() - cpu0
    cpu0, t0 = _children_cpu(), time.perf_counter()
    _dbt(project_dir, warehouse, target, as_of, "run", "--select", *MODELS, *extra)
    out = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_children_cpu() - cpu0, 1)}
    out["model_cpu_s"] = round(out["cpu_s"] - baseline, 1)
    results = json.loads((target / "run_results.json").read_text())["results"]
    out["node_s"] = {r["unique_id"].rsplit(".", 1)[1]: round(r["execution_time"], 2) for r in results}
    return out


def main(customers: int, reuse: bool = False) -> dict:
    from core.config import load_config
    from core.dbt_project import dbt_project_dir
    from core.warehouse import open_warehouse
    from ingestion.generator.increment import write_day
    from ingestion.loader import ingest

    folder = OUT / f"dbt_incremental_{customers}"
    if not reuse:
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(ROOT / ".venv/bin/cdp"), "init", str(folder)], check=True, capture_output=True)
        shutil.rmtree(folder / "landing", ignore_errors=True)
        shutil.copytree(data_dir(customers), folder / "landing", ignore=shutil.ignore_patterns("ground_truth", ".complete"))
    config = load_config(folder / "cdp.yaml")
    with open_warehouse(config.warehouse_path) as con:
        if not reuse:
            ingest(config, con)
        raw = dict(con.execute("""SELECT 'web_events', count(*) FROM raw.web_events
                                  UNION ALL SELECT 'email_events', count(*) FROM raw.email_events""").fetchall())
        last = max(con.execute("SELECT max(timestamp)::DATE FROM raw.web_events").fetchall()[0][0],
                   dt.date.fromisoformat(BENCH_AS_OF))
    project, target = dbt_project_dir(), folder / "dbt_target"
    runs = {}
    if not reuse:
        runs["full"] = _dbt_run(project, config.warehouse_path, target, BENCH_AS_OF)
    day = (last + dt.timedelta(days=1)).isoformat()
    landed = write_day(config.landing_dir, dt.date.fromisoformat(BENCH_AS_OF), dt.date.fromisoformat(day))
    with open_warehouse(config.warehouse_path) as con:
        ingest(config, con)
    runs["day"] = _dbt_run(project, config.warehouse_path, target, day)
    runs["no change"] = _dbt_run(project, config.warehouse_path, target, day)
    runs["full refresh"] = _dbt_run(project, config.warehouse_path, target, day, "--full-refresh")
    record = {"customers": customers, "raw_rows": raw, "day_rows_landed": landed, "runs": runs}
    print(json.dumps(record, indent=2))
    (OUT / f"bench_dbt_incremental_{customers}.json").write_text(json.dumps(record, indent=2))
    full = runs["full refresh"]
    return {f"{name} {k}": r[k] for name, r in runs.items() for k in ("wall_s", "cpu_s")} | {
        f"{name} node s / full": round(sum(r["node_s"].values()) / max(sum(full["node_s"].values()), 1e-9), 3)
        for name, r in runs.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--reuse", action="store_true", help="measure on the project an earlier run left")
    cli = parser.parse_args()
    main(cli.customers, cli.reuse)
