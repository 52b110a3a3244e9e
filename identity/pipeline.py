"""One entry point for the identity stage: ``resolve(config, con, ...)``.

raw.* -> identity.records -> deterministic edges + Splink pairs -> constrained clustering ->
stable person ids -> identity.graph, identity.golden, identity.changes, identity.runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import duckdb
import pyarrow as pa

from core.settings.identity import IdentitySettings, settings_of
from core.warehouse import transaction
from identity import clustering, golden, model_store, overrides, records, rules, splink_model, stable_ids
from identity.db import has_table
from identity.evaluate import unique_id_conflicts

Progress = Callable[[str], None]
MIN_SPLINK_RECORDS = 50  # below this there is nothing for EM to learn from


@dataclass
class IdentityResult:
    run_id: str
    records: int
    persons: int
    multi_record_persons: int
    merge_rate: float  # 1 - persons / records
    largest_cluster: int
    largest_profile_cluster: int
    held_clusters: int
    deterministic_edges: int
    splink_pairs: int
    edges_accepted: int
    edges_refused: int
    refused_by_reason: dict[str, int]
    unique_id_conflicts: int
    changes: dict[str, int]
    model_path: str | None
    model_problems: list[str]
    model_notes: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    evaluation: dict | None = None
    model_decision: str = ""  # trained (and why) or reused (model_store.retrain_reason)
    splink_scored_new: int | None = None  # new or changed records scored against the rest; None = every pair scored

    def to_dict(self) -> dict:
        return asdict(self)


MOSTLY_REFUSED = 0.5  # a run refusing more than this share of its merge edges says so


def refusal_warnings(cstats: clustering.ClusterStats) -> list[str]:
    """A run whose edges are mostly refused has probably been configured against its data
    (e.g. duplicates holding different values of an id declared unique): it says so, with the
    top reasons, instead of reporting an OK run with no merges."""
    decided = cstats.accepted + cstats.refused
    if cstats.refused < 10 or cstats.refused <= MOSTLY_REFUSED * decided:
        return []
    top = sorted(cstats.refused_by_reason.items(), key=lambda kv: -kv[1])[:3]
    hint = ""
    if top and top[0][0].startswith("merge_protection:"):
        ident = top[0][0].split(":", 1)[1]
        hint = (f"; if one person may hold several {ident} values (duplicates in a customer list), "
                f"set identity.rules.{ident}.unique: false")
    return [f"{cstats.refused:,} of {decided:,} merge edges were refused ("
            + ", ".join(f"{r}: {n:,}" for r, n in top) + ")" + hint]


def models_dir(config) -> Path:
    return config.warehouse_path.parent / "identity_models"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def resolve(config, con: duckdb.DuckDBPyConnection, run_id: str | None = None, as_of: datetime | None = None,
            progress: Progress | None = None, *, settings: IdentitySettings | None = None,
            schema: str = "identity", model: Path | dict | None = None, write_history: bool = True,
            model_dir: Path | None = None, splink_threads: int | None = None,
            score_pairs: Callable | None = None) -> IdentityResult:
    """Resolve identities from raw.* into ``<schema>.*``.

    ``score_pairs(records, model, threshold)``: where every pair is scored with the model (an
    Arrow table with predict()'s columns); by default the DuckDB linker's predict. With
    engine: spark, Splink's Spark backend (identity/spark_splink.py: pair_scorer).

    ``model``: a trained Splink model (path or dict) to reuse instead of training (the plan
    uses the current run's model so that only the config change differs).
    ``write_history=False`` computes ids without recording the run (dry runs).
    Raises ``splink_model.ModelSanityError`` when a trained parameter makes no sense.
    """
    say = progress or (lambda m: None)
    settings = settings or settings_of(config)
    run_id = run_id or new_run_id()
    started = datetime.now(timezone.utc)
    t: dict[str, float] = {}
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    stable_ids.ensure_tables(con, schema)
    model_store.ensure_table(con, schema)
    work = _attach_work(con)
    threads, ordered = con.sql(
        "SELECT current_setting('threads'), current_setting('preserve_insertion_order')").fetchall()[0]
    # the clustering numbers edges by the order a sorted table was written in (clustering.cluster)
    con.execute("SET preserve_insertion_order = true")
    # Two workers beside this thread: writing a table to the warehouse file (compression) runs on
    # one core, so the writes and the deterministic rules overlap with Splink, which leaves a core
    # idle much of the time. They run niced, to take only what Splink and the clustering leave.
    with _bounded_memory(con, config, settings) as memory, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="identity") as pool:
        try:
            return _resolve(config, con, pool, work, threads, settings, run_id, started, as_of, say, t, schema=schema,
                            model=model, write_history=write_history, model_dir=model_dir,
                            splink_threads=splink_threads, score_pairs=score_pairs, memory=memory)
        finally:
            pool.shutdown(wait=True)  # (before the work catalog goes)
            con.execute(f"DETACH DATABASE IF EXISTS {WORK_CATALOG}")
            con.execute(f"SET threads = {threads}")
            con.execute(f"SET preserve_insertion_order = {str(bool(ordered)).lower()}")


SPLINK_MEMORY_SHARE = 0.75  # of identity.memory_limit_gb, to Splink's database while it runs
SPILL_PREFIX = "identity_spill_"


@dataclass(frozen=True)
class MemoryBudget:
    total_mb: int  # the warehouse connection's memory_limit for the stage (Splink's database closed)
    splink_mb: int  # Splink's database's, while it runs; the warehouse connection then has the rest
    spill_dir: Path  # Splink's database spills here (the warehouse connection: DuckDB's <warehouse>.tmp)


def _spill_parent(con: duckdb.DuckDBPyConnection, config) -> Path:
    """The folder of the connection's database file (the warehouse's, in a run); for an
    in-memory connection, the project's warehouse folder."""
    path = con.sql("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    folder = Path(path).parent if path else config.warehouse_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _bounded_memory(con: duckdb.DuckDBPyConnection, config, settings: IdentitySettings) -> Iterator[MemoryBudget]:
    """The stage's DuckDB memory, bounded by ``identity.memory_limit_gb``: unbounded, each DuckDB
    database takes up to 80% of the machine's memory, and at 1M customers Splink's and the
    warehouse's together held 11.7 GB. Past the bound DuckDB spills (its in-memory work tables
    too) to temporary files: Splink's in a directory beside the warehouse, removed at the end;
    the warehouse connection's in its own temp directory (``<warehouse>.tmp`` by default). The
    connection's own memory_limit is restored afterwards."""
    total = max(int(settings.memory_limit_gb * 1024), 64)
    old_limit, temp_dir = con.sql(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchall()[0]
    if not temp_dir:  # (spilling switched off: the work tables would have nowhere to go)
        con.execute("SET temp_directory = ?", [str(config.warehouse_path) + ".tmp"])
    con.execute(f"SET memory_limit = '{total}MiB'")
    spill = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=_spill_parent(con, config)))
    try:
        yield MemoryBudget(total_mb=total, splink_mb=max(int(total * SPLINK_MEMORY_SHARE), 32), spill_dir=spill)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        con.execute("RESET memory_limit")  # (the usual case; the setting reads back rounded: '18.8 GiB')
        if con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0] != old_limit:
            con.execute(f"SET memory_limit = '{old_limit}'")


WORK_CATALOG = "identity_work"


def _attach_work(con: duckdb.DuckDBPyConnection) -> str:
    """An in-memory catalog for the run's working tables, seen by every cursor of ``con``
    (temp tables are not): the stage computes there and copies the results to the warehouse."""
    con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {WORK_CATALOG}")
    return f"{WORK_CATALOG}.main"


def _on_cursor(pool: ThreadPoolExecutor, con: duckdb.DuckDBPyConnection, fn, *args):
    """Submit ``fn(cursor, *args)`` to a worker, on a cursor of its own (made here, on the thread
    that owns ``con``)."""
    cur = con.cursor()

    def run():
        _lower_this_threads_priority()
        try:
            return fn(cur, *args)
        finally:
            cur.close()

    return pool.submit(run)


BACKGROUND_NICE = 10


def _lower_this_threads_priority() -> None:
    """Background work (the copies to the warehouse, the deterministic rules) yields the cores
    to Splink and the clustering, which the rest of the run waits for. On Linux a thread has its
    own nice value; elsewhere, or where it is not allowed, the work runs at normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):
        pass


PUBLISHED_TABLES = ("records", "edges", "graph", "golden")
NEXT = "__next"  # a result is copied to <schema>.<table>__next, and all are swapped in at the end


# Text columns holding a value nearly unique per row are stored with zstd: DuckDB's default
# (dictionary + FSST) spends most of a table's write time on them and gains little; zstd wrote
# them in half the CPU time and smaller (record_key: 57 blocks -> 11 at 1.27M records).
ZSTD_COLUMNS = frozenset({"record_key", "source_record_id", "person_id", "email", "email_canon", "email_local",
                          "phone", "card_token", "loyalty_id", "anonymous_id"})


def _copy_table(cur: duckdb.DuckDBPyConnection, work: str, schema: str, table: str) -> None:
    """``<work>.<table>`` to ``<schema>.<table>__next`` (the source's row order is kept)."""
    columns = cur.execute(f"DESCRIBE {work}.{table}").fetchall()
    ddl = ", ".join(f'"{name}" {dtype}' + (" USING COMPRESSION zstd" if name in ZSTD_COLUMNS and dtype == "VARCHAR" else "")
                    for name, dtype, *_ in columns)
    cur.execute(f"CREATE OR REPLACE TABLE {schema}.{table}{NEXT} ({ddl})")
    cur.execute(f"INSERT INTO {schema}.{table}{NEXT} SELECT * FROM {work}.{table}")


def _deterministic(cur: duckdb.DuckDBPyConnection, settings: IdentitySettings, work: str,
                   raw: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = rules.build_deterministic_edges(cur, settings, work, raw)
    return n, time.perf_counter() - t0


def _swap_in(con: duckdb.DuckDBPyConnection, schema: str) -> None:
    """Replace every published table by its new version (inside the caller's transaction)."""
    for table in PUBLISHED_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {schema}.{table}")
        con.execute(f"ALTER TABLE {schema}.{table}{NEXT} RENAME TO {table}")


def _resolve(config, con, pool: ThreadPoolExecutor, work: str, threads: int, settings: IdentitySettings, run_id: str,
             started: datetime, as_of, say: Progress, t: dict[str, float], *, schema: str, model, write_history: bool,
             model_dir: Path | None, splink_threads: int | None,
             score_pairs: Callable | None = None, memory: MemoryBudget | None = None) -> IdentityResult:
    t0 = time.perf_counter()
    # a backtest (as_of in the past) sees no record dated after it
    raw = records.source_schema(con, as_of, WORK_CATALOG)
    n_records = records.build_records(con, settings, work, raw=raw)
    t["records"] = time.perf_counter() - t0
    say(f"identity: {n_records:,} identity records ({t['records']:.1f}s)")
    # a user's force-merge and force-split pairs, as rids of this run (before the rules read them)
    override_warnings = overrides.stage(con, overrides.read(overrides.path_of(config, settings)), work)
    # While Splink trains (on its own connection), the warehouse side runs on one thread: the
    # records copy and the deterministic rules only need the core Splink leaves idle, and more
    # busy threads than cores made both sides slower (~1 s of 27 at 1.1M records).
    if settings.splink.enabled:
        con.execute("SET threads = 1")
    copies = [_on_cursor(pool, con, _copy_table, work, schema, "records")]
    deterministic = _on_cursor(pool, con, _deterministic, settings, work, raw)

    pairs = None
    model_path: str | None = None
    problems: list[str] = []
    notes: list[str] = []
    decision = ""
    predicted_new: int | None = None  # records scored against the rest (None: every pair scored)
    pairs_model: str | None = None  # the saved model (its id) that scored this run's pairs
    trained: tuple | None = None  # (fingerprint, records, match rate, reason, model) of a model this run trained
    if settings.splink.enabled:
        t0 = time.perf_counter()
        tbl = con.sql(splink_model.input_sql(work)).to_arrow_table()
        if memory is not None:  # Splink's database takes most of the stage's memory while it runs
            con.execute(f"SET memory_limit = '{memory.total_mb - memory.splink_mb}MiB'")
        if tbl.num_rows >= MIN_SPLINK_RECORDS:
            saved = reason = fp = None
            when = as_of or started
            if model is None:  # (a model given by the caller, e.g. the plan's, is used as it is)
                fp = model_store.fingerprint(con, settings, f"{work}.records")
                saved = model_store.latest(con, schema)
                reason = model_store.retrain_reason(saved, settings, fp, n_records, when)
            while True:
                use = model if model is not None else (None if reason else saved.model)
                linker, sdb = splink_model.make_linker(
                    tbl, settings, model=use, threads=splink_threads,
                    memory_limit_mb=memory.splink_mb if memory else None,
                    temp_directory=memory.spill_dir / "splink" if memory else None)
                try:
                    if use is None:
                        t.update({f"splink_{k}": v for k, v in splink_model.train(linker, settings, say).items()})
                        notes = splink_model.smooth_untrained(linker)
                    md = splink_model.model_dict(linker)
                    problems = splink_model.check_parameters(md)
                    if use is None and (write_history or model_dir is not None):
                        path = (model_dir or models_dir(config)) / f"{run_id}.json"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(json.dumps(md, indent=2, default=str))
                        model_path = str(path)
                    if problems:
                        raise splink_model.ModelSanityError(
                            "the trained Splink model fails its sanity checks (model kept at "
                            f"{model_path}): " + "; ".join(problems))
                    t1 = time.perf_counter()
                    cached = _cached_pairs(con, work, schema, saved.model_id, settings.match_threshold) \
                        if use is not None and model is None else None
                    if cached is None and score_pairs is not None:
                        pairs = score_pairs(tbl, md, settings.match_threshold)
                    elif cached is None:
                        pairs = splink_model.predict(linker, settings.match_threshold)
                    else:  # the saved model's pairs among unchanged records, and the changed ones scored now
                        kept, new_rids = cached
                        pairs = kept
                        if new_rids.num_rows:
                            fresh = splink_model.predict_new(linker, settings.match_threshold, new_rids)
                            pairs = pa.concat_tables([kept, fresh.select(kept.column_names).cast(kept.schema)])
                        predicted_new = new_rids.num_rows
                    t["splink_predict"] = t["splink_predict"] + time.perf_counter() - t1 if "splink_predict" in t \
                        else time.perf_counter() - t1
                finally:
                    sdb.close()
                    del linker, sdb
                rate = _match_rate(pairs, n_records)
                if predicted_new is not None:
                    say(f"identity: Splink scored {predicted_new:,} new or changed records against the rest")
                if model is not None:
                    decision = "the model given to this run"
                    break
                if reason:
                    decision = f"trained: {reason}"
                    trained = (fp, n_records, rate, reason, md)
                    pairs_model = run_id
                    break
                moved = model_store.match_rate_moved(saved, rate, settings)
                if not moved:
                    decision = f"reused model {saved.model_id} trained {saved.trained_as_of:%Y-%m-%d %H:%M}"
                    model_path = f"{schema}.{model_store.TABLE}:{saved.model_id}"
                    pairs_model = saved.model_id
                    break
                reason = moved  # drifted: train on this run's records and score again
                predicted_new = None
            del tbl
            if pairs_model and write_history:
                _splink_input(con, work)  # (kept for the next run: written inside the final transaction)
            say(f"identity: Splink model {decision}; proposed {pairs.num_rows:,} pairs at >= {settings.match_threshold}")
        t["splink"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if memory is not None:  # Splink's database is closed: the rules still running get its share
        con.execute(f"SET memory_limit = '{memory.total_mb}MiB'")
    n_det, t["deterministic"] = deterministic.result()
    copies[0].result()
    con.execute(f"SET threads = {threads}")
    t["deterministic_wait"] = time.perf_counter() - t0  # (it ran beside Splink)
    say(f"identity: {n_det:,} deterministic edges ({t['deterministic']:.1f}s, beside Splink)")

    t0 = time.perf_counter()
    cstats = clustering.cluster(con, settings, pairs, work)
    t["clustering"] = time.perf_counter() - t0
    say(f"identity: clustering accepted {cstats.accepted:,} edges, refused {cstats.refused:,}; "
        f"{cstats.edges_checked_one_by_one:,} of {cstats.edges:,} edges checked one by one ({t['clustering']:.1f}s)")
    copies.append(_on_cursor(pool, con, _copy_table, work, schema, "edges"))

    t0 = time.perf_counter()
    seq = con.sql(f"SELECT coalesce(max(seq), 0) + 1 FROM {schema}.runs").fetchall()[0][0]
    changes = stable_ids.assign_ids(con, run_id, seq, schema, write=False, records=f"{work}.records")
    _build_graph(con, work)
    copies.append(_on_cursor(pool, con, _copy_table, work, schema, "graph"))
    t["stable_ids"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    golden.build_golden(con, settings, work)
    copies.append(_on_cursor(pool, con, _copy_table, work, schema, "golden"))
    t["golden"] = time.perf_counter() - t0

    stats = con.sql(f"""
        WITH c AS (SELECT person_id, count(*) AS n, count(*) FILTER (WHERE entity <> 'transactions') AS np
                   FROM {work}.graph GROUP BY person_id)
        SELECT count(*), count(*) FILTER (WHERE n > 1), coalesce(max(n), 0), coalesce(max(np), 0) FROM c""").fetchall()[0]
    persons, multi, largest, largest_profile = (int(x) for x in stats)
    conflicts = unique_id_conflicts(con, work, settings)
    warnings = override_warnings + refusal_warnings(cstats)
    for w in warnings:
        say(f"identity: WARNING {w}")
    t0 = time.perf_counter()
    for copy in copies:
        copy.result()
    result = IdentityResult(
        run_id=run_id, records=n_records, persons=persons, multi_record_persons=multi,
        merge_rate=round(1 - persons / n_records, 6) if n_records else 0.0,
        largest_cluster=largest, largest_profile_cluster=largest_profile, held_clusters=cstats.held_clusters,
        deterministic_edges=n_det, splink_pairs=int(pairs.num_rows) if pairs is not None else 0,
        edges_accepted=cstats.accepted, edges_refused=cstats.refused, refused_by_reason=cstats.refused_by_reason,
        unique_id_conflicts=conflicts, changes=changes, model_path=model_path,
        model_problems=problems, model_notes=notes, timings={k: round(v, 3) for k, v in t.items()},
        warnings=warnings, model_decision=decision, splink_scored_new=predicted_new,
    )
    with transaction(con):  # the new tables, the id history and the run: all or nothing
        _swap_in(con, schema)
        if write_history:
            if trained is not None:
                model_store.save(con, schema, run_id, as_of or started, *trained)
            if pairs is not None and pairs_model and has_table(con, work, "splink_input"):
                _save_pairs(con, work, schema, pairs_model, settings.match_threshold, pairs)
            stable_ids.write_history(con, run_id, seq, schema, changed_at=as_of)
            con.execute(f"INSERT INTO {schema}.runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                run_id, seq, started, datetime.now(timezone.utc), as_of, n_records, persons, model_path,
                json.dumps({k: v for k, v in result.to_dict().items() if k != "evaluation"}, default=str)])
    result.timings["writing"] = round(time.perf_counter() - t0, 3)  # what was left of writing to the warehouse
    for temp in ("id_edge_order", "id_splink_pairs", "id_cur", "id_prev", "id_person", "id_run_changes"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")
    return result


SPLINK_INPUT_COLUMNS = ("first_name", "first_name_canon", "last_name", "full_name", "email_canon", "email_local",
                        "phone", "address", "postcode", "postcode_outward", "dob", "city")
MAX_NEW_SHARE = 0.5  # past this share of new or changed records, scoring every pair costs about the same


def _splink_input(con: duckdb.DuckDBPyConnection, work: str) -> None:
    """``<work>.splink_input``: each Splink input record's key, rid and a hash of what Splink reads."""
    if not has_table(con, work, "splink_input"):
        con.execute(f"""CREATE TABLE {work}.splink_input AS
            SELECT r.record_key, i.unique_id AS rid, hash({', '.join(f'i.{c}' for c in SPLINK_INPUT_COLUMNS)}) AS h
            FROM ({splink_model.input_sql(work)}) i JOIN {work}.records r ON r.rid = i.unique_id""")


def _cached_pairs(con: duckdb.DuckDBPyConnection, work: str, schema: str, model_id: str, threshold: float):
    """The last run's Splink pairs that still hold (both records unchanged, scored by this model
    at this threshold) and the rids of the records to score now (new or changed), or None to
    score every pair.

    A kept pair keeps the score it had: term frequencies over the grown data may have moved it a
    little (bench/bench_identity_incremental.py counts what that changes)."""
    _splink_input(con, work)
    if not (has_table(con, schema, "splink_pairs") and has_table(con, schema, "splink_input")):
        return None
    same = con.sql(f"SELECT count(*) FROM (SELECT DISTINCT model_id, threshold FROM {schema}.splink_pairs) "
                   "WHERE model_id = ? AND threshold = ?", params=[model_id, threshold]).fetchall()[0][0]
    if not same:
        return None
    con.execute(f"""CREATE OR REPLACE TABLE {work}.splink_new AS
        SELECT rid AS unique_id FROM {work}.splink_input s
        WHERE NOT EXISTS (SELECT 1 FROM {schema}.splink_input p WHERE p.record_key = s.record_key AND p.h = s.h)""")
    n_new, n_all = con.sql(f"SELECT (SELECT count(*) FROM {work}.splink_new), "
                           f"(SELECT count(*) FROM {work}.splink_input)").fetchall()[0]
    if n_new > MAX_NEW_SHARE * n_all:
        return None
    kept = con.sql(f"""
        SELECT least(l.rid, r.rid) AS unique_id_l, greatest(l.rid, r.rid) AS unique_id_r,
               p.match_probability, p.match_weight
        FROM {schema}.splink_pairs p
        JOIN {work}.splink_input l ON l.record_key = p.key_l JOIN {work}.splink_input r ON r.record_key = p.key_r
        WHERE l.rid NOT IN (SELECT unique_id FROM {work}.splink_new)
          AND r.rid NOT IN (SELECT unique_id FROM {work}.splink_new)""").to_arrow_table()
    return kept, con.sql(f"SELECT unique_id FROM {work}.splink_new").to_arrow_table()


def _save_pairs(con: duckdb.DuckDBPyConnection, work: str, schema: str, model_id: str, threshold: float,
                pairs) -> None:
    """This run's Splink pairs by record key, and what each scored record held (read by the next
    run's _cached_pairs)."""
    con.register("_pairs_now", pairs)
    con.execute(f"CREATE OR REPLACE TABLE {schema}.splink_input AS SELECT record_key, h FROM {work}.splink_input")
    con.execute(f"""CREATE OR REPLACE TABLE {schema}.splink_pairs AS
        SELECT l.record_key AS key_l, r.record_key AS key_r, p.match_probability, p.match_weight,
               ?::VARCHAR AS model_id, ?::DOUBLE AS threshold
        FROM _pairs_now p JOIN {work}.splink_input l ON l.rid = p.unique_id_l
        JOIN {work}.splink_input r ON r.rid = p.unique_id_r""", [model_id, threshold])
    con.unregister("_pairs_now")


def _match_rate(pairs, n_records: int) -> float:
    """Share of records in at least one proposed Splink pair (the model's drift signal)."""
    if pairs is None or not n_records:
        return 0.0
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.chunked_array(pairs.column("unique_id_l").chunks + pairs.column("unique_id_r").chunks)
    return pc.count_distinct(ids).as_py() / n_records


def _build_graph(con: duckdb.DuckDBPyConnection, schema: str) -> None:
    """identity.graph: each record's person_id, how it was matched and with what probability."""
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.graph AS
        WITH ends AS (
            SELECT rid_l AS rid, method, match_probability FROM {schema}.edges WHERE decision = 'accepted'
            UNION ALL SELECT rid_r, method, match_probability FROM {schema}.edges WHERE decision = 'accepted'),
        -- a deterministic edge if the record has one (the first rule by name), else its most
        -- probable Splink edge
        best AS (SELECT rid, min(method) FILTER (WHERE method <> 'splink') AS det,
                        max(match_probability) FILTER (WHERE method = 'splink') AS splink_p
                 FROM ends GROUP BY rid)
        SELECT r.record_key, r.rid, r.source, r.entity, r.source_record_id, p.person_id,
               coalesce(b.det, CASE WHEN b.splink_p IS NOT NULL THEN 'splink' END, 'single record') AS match_method,
               CASE WHEN b.det IS NOT NULL THEN 1.0 ELSE b.splink_p END AS match_probability,
               c.held AS held_for_review
        FROM {schema}.records r JOIN id_clusters c USING (rid) JOIN id_person p USING (cluster_id)
        LEFT JOIN best b USING (rid)
        ORDER BY r.rid""")
