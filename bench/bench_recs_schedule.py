"""What recommendations on a schedule cost and change (scoring/recommend_store.py): a week of
simulated days on a built warehouse, the saved model's lists (refitted on day 0, changed persons
only on days 1-6) against a refit on day 6, and both against the purchases of the next 30 days.

    python -m bench.bench_recs_schedule WAREHOUSE [--share 0.2] [--window 30] [--days 7] [--before] [--no-compare]

WAREHOUSE: a project's warehouse after a `cdp run` (opened read-only; e.g. bench_pipeline's
100k project). `--share`: the customers kept (a hash of person_id; their purchases and views,
and the same share of anonymous sessions' views), copied into memory. Day 6 = the newest
purchase minus `--window` days, so that the lists of day 6 can be scored on the next `--window`
days. Reports per day the CPU seconds (one thread) and persons recomputed, and at day 6: the
share of persons whose top-k list (products, in order; and as a set) differs between the saved
model and a refit, and HitRate@k / Recall@k of both on the buyers of the window (`--no-compare`:
not). `--days N`: N simulated days (the last is "day 6" above). `--before`: also the CPU of the
stage as it was before it ran on a schedule (recommend.run_recommendations: the blend fitted and
every list made, every run) on the last day.
"""

from __future__ import annotations

import argparse
import json
import time

import duckdb
import pandas as pd
from threadpoolctl import threadpool_limits

from core.settings.scoring import RecommendationsSettings
from scoring.pipeline import run_recommendation_stage
from scoring.recommend import run_recommendations
from scoring.recommend_metrics import ranking_metrics


def sample(warehouse: str, share: float) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"ATTACH '{warehouse}' AS w (READ_ONLY)")
    modulo = round(1 / share)
    for schema in ("intermediate", "staging", "marts"):
        con.execute(f"CREATE SCHEMA {schema}")
    con.execute("CREATE TABLE staging.stg_catalog__products AS SELECT sku, category, non_product "
                "FROM w.staging.stg_catalog__products")
    con.execute(f"CREATE TABLE marts.customers AS SELECT person_id FROM w.marts.customers "
                f"WHERE hash(person_id) % {modulo} = 0")
    con.execute("CREATE TABLE intermediate.int_order_lines AS SELECT person_id, order_key, sku, ordered_at, category, "
                "quantity FROM w.intermediate.int_order_lines WHERE person_id IN (SELECT person_id FROM marts.customers)")
    con.execute(f"""CREATE TABLE intermediate.int_web_product_events AS
                    SELECT person_id, session_id, sku, occurred_at, event_name FROM w.intermediate.int_web_product_events
                    WHERE event_name = 'product_viewed' AND (person_id IN (SELECT person_id FROM marts.customers)
                       OR (person_id IS NULL AND hash(session_id) % {modulo} = 0))""")
    con.execute("DETACH w")
    return con


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("warehouse")
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--before", action="store_true")
    ap.add_argument("--no-compare", action="store_true")
    args = ap.parse_args()
    base = sample(args.warehouse, args.share)
    last = pd.Timestamp(base.execute("SELECT max(ordered_at) FROM intermediate.int_order_lines").fetchone()[0])
    day6 = last.normalize() - pd.Timedelta(days=args.window)
    days = [day6 - pd.Timedelta(days=args.days - 1 - d) for d in range(args.days)]
    out: dict = {"customers": base.execute("SELECT count(*) FROM marts.customers").fetchone()[0],
                 "days": [str(d) for d in days], "window_days": args.window}
    settings = RecommendationsSettings()
    k = settings.list_length
    saved = base.cursor()
    per_day = []
    with threadpool_limits(limits=1):
        for d in days:
            c0, t0 = time.process_time(), time.perf_counter()
            r = run_recommendation_stage(saved, d, settings, progress=lambda m: None)
            per_day.append({"day": str(d.date()), "decision": r.decision.split(":")[0], "recomputed": r.recomputed,
                            "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(per_day[-1]), flush=True)
        incremental = r.recommendations
        if args.before:
            c0, t0 = time.process_time(), time.perf_counter()
            run_recommendations(base, day6, settings)
            out["before_every_run_refit"] = {"cpu_s": round(time.process_time() - c0, 1),
                                             "wall_s": round(time.perf_counter() - t0, 1)}
            print(json.dumps(out["before_every_run_refit"]), flush=True)
        if args.no_compare:
            out["per_day"] = per_day
            print(json.dumps(out, indent=2))
            return
        c0, t0 = time.process_time(), time.perf_counter()
        # A separate connection to the same in-memory database would share scoring.*: a new
        # database with the same four tables instead.
        fresh = duckdb.connect()
        for schema in ("intermediate", "staging", "marts"):
            fresh.execute(f"CREATE SCHEMA {schema}")
        for schema, table in (("staging", "stg_catalog__products"), ("marts", "customers"),
                              ("intermediate", "int_order_lines"), ("intermediate", "int_web_product_events")):
            frame = base.execute(f"SELECT * FROM {schema}.{table}").df()  # noqa: F841 (read by DuckDB)
            fresh.execute(f"CREATE TABLE {schema}.{table} AS SELECT * FROM frame")
        refit = run_recommendation_stage(fresh, day6, settings, progress=lambda m: None)
        out["refit_day6"] = {"decision": refit.decision, "cpu_s": round(time.process_time() - c0, 1),
                             "wall_s": round(time.perf_counter() - t0, 1)}
    out["per_day"] = per_day
    a = incremental.groupby("person_id")["sku"].agg(list)
    b = refit.recommendations.groupby("person_id")["sku"].agg(list).reindex(a.index)
    out["persons"] = int(len(a))
    out["top_k_differs_share"] = round(float((a != b).mean()), 4)
    out["top_k_set_differs_share"] = round(float(pd.Series([set(x) != set(y) for x, y in zip(a, b)]).mean()), 4)
    # Both scored on the purchases of the next `window` days.
    persons = pd.Index(sorted(a.index))
    truth = base.execute("""SELECT DISTINCT person_id, sku FROM intermediate.int_order_lines
                            WHERE ordered_at > ? AND ordered_at <= ?
                              AND sku IN (SELECT sku FROM staging.stg_catalog__products WHERE NOT coalesce(non_product, false))""",
                         [day6.to_pydatetime(), (day6 + pd.Timedelta(days=args.window)).to_pydatetime()]).df()
    truth = truth[truth["person_id"].isin(persons)]
    codes = {p: n for n, p in enumerate(persons)}
    truth = pd.DataFrame({"u": truth["person_id"].map(codes), "i": truth["sku"]})
    for name, recs in (("saved_model", incremental), ("refit", refit.recommendations)):
        lists = pd.DataFrame({"u": recs["person_id"].map(codes), "rank": recs["rank"], "i": recs["sku"]})
        m = ranking_metrics(lists, truth, k)
        out[name] = {key: round(v, 4) if isinstance(v, float) else v for key, v in m.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
