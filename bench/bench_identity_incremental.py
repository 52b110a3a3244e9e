"""Identity's daily run against a full one: CPU of identity for each simulated day (the saved
Splink model reused) and for a full rebuild of the last day (the model retrained,
identity.splink.retrain_every_days: 0), and how far their clusters differ.

    python -m bench.bench_identity_incremental --customers 100000 --days 30

Data: the generator's (bench/common.py, as of BENCH_AS_OF, seed 11, clean), landed into a fresh
project; each day is one more day written by ingestion/generator/increment.py (the as_of day's rows
again, moved on with new record ids) and ingested. Identity runs in this process with the day's
as_of (end of day, UTC); CPU is this process's user + system time over `resolve` (every thread).
Ingestion's time is not counted. The difference is counted on record pairs one person holds:
pairs held by the daily run's graph or the full one's but not both, over the full one's pairs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time

from bench.common import BENCH_AS_OF, OUT, data_dir


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.timezone.utc)


def main(customers: int = 100_000, days: int = 30) -> dict:
    import duckdb
    import yaml

    from cdp.scaffold import init_project
    from core.config import load_config
    from core.warehouse import open_warehouse
    from identity.pipeline import resolve
    from ingestion.generator.increment import write_day
    from ingestion.loader import ingest

    first = dt.date.fromisoformat(BENCH_AS_OF)
    work = OUT / f"identity_incremental_{customers}"
    shutil.rmtree(work, ignore_errors=True)
    cfg_path = init_project(work / "proj")
    shutil.rmtree(work / "proj" / "landing", ignore_errors=True)
    shutil.copytree(data_dir(customers), work / "proj" / "landing", ignore=shutil.ignore_patterns(".complete",
                                                                                                   "ground_truth*"))
    config = load_config(cfg_path)
    out: dict = {"customers": customers, "days": days, "per_day": []}

    def run(cfg, con, run_id: str, day: dt.date) -> tuple[float, float, object]:
        c0, w0 = _cpu(), time.perf_counter()
        res = resolve(cfg, con, run_id=run_id, as_of=_day_end(day))
        return _cpu() - c0, time.perf_counter() - w0, res

    for n in range(days + 1):
        day = first + dt.timedelta(days=n)
        if n:
            write_day(config.landing_dir, first, day)
        with open_warehouse(config.warehouse_path) as con:
            assert ingest(config, con).ok, f"ingestion failed on day {n}"
            cpu, wall, res = run(config, con, f"day{n}", day)
        row = {"day": n, "records": res.records, "persons": res.persons, "cpu_s": round(cpu, 1),
               "wall_s": round(wall, 1), "model": res.model_decision,
               "changes": res.changes}
        out["per_day"].append(row)
        print(json.dumps(row), flush=True)

    # the last day again from its raw tables, the model retrained: what a full run costs
    full = work / "full.duckdb"
    with open_warehouse(config.warehouse_path) as con:
        con.execute(f"ATTACH '{full}' AS f")
        con.execute("CREATE SCHEMA f.raw")
        for (table,) in con.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw' "
                                "AND table_catalog = current_database()").fetchall():
            con.execute(f"CREATE TABLE f.raw.{table} AS SELECT * FROM raw.{table}")
        con.execute("DETACH f")
    data = yaml.safe_load(cfg_path.read_text())
    data.setdefault("identity", {}).setdefault("splink", {})["retrain_every_days"] = 0
    cfg_path.write_text(yaml.safe_dump(data))
    forced = load_config(cfg_path)
    with duckdb.connect(str(full)) as con:
        cpu, wall, res = run(forced, con, "full", first + dt.timedelta(days=days))
    out["full"] = {"records": res.records, "persons": res.persons, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                   "model": res.model_decision}
    with duckdb.connect(str(full), read_only=True) as con:
        con.execute(f"ATTACH '{config.warehouse_path}' AS d (READ_ONLY)")
        pairs = """SELECT a.record_key k1, b.record_key k2 FROM {g} a JOIN {g} b
                   ON a.person_id = b.person_id AND a.record_key < b.record_key"""
        only_daily, only_full, full_pairs = con.sql(f"""
            WITH d AS ({pairs.format(g='d.identity.graph')}), f AS ({pairs.format(g='identity.graph')})
            SELECT (SELECT count(*) FROM (SELECT * FROM d EXCEPT SELECT * FROM f)),
                   (SELECT count(*) FROM (SELECT * FROM f EXCEPT SELECT * FROM d)),
                   (SELECT count(*) FROM f)""").fetchall()[0]
    daily = out["per_day"][1:]
    out["difference"] = {"pairs_only_daily": only_daily, "pairs_only_full": only_full, "full_pairs": full_pairs,
                         "share": round((only_daily + only_full) / max(full_pairs, 1), 6)}
    out["daily_cpu_s_mean"] = round(sum(r["cpu_s"] for r in daily) / max(len(daily), 1), 1)
    out["daily_over_full_cpu"] = round(out["daily_cpu_s_mean"] / max(out["full"]["cpu_s"], 1e-9), 3)
    out["first_run_cpu_s"] = out["per_day"][0]["cpu_s"]
    print(json.dumps({k: v for k, v in out.items() if k != "per_day"}), flush=True)
    (OUT / f"identity_incremental_{customers}.json").write_text(json.dumps(out, indent=2, default=str))
    return {k: v for k, v in out.items() if k != "per_day"}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    main(args.customers, args.days)
