"""Applying erasure requests: ``process_requests(config, con)`` (the ``privacy/erasure`` asset).

For each pending request:

1. **Resolve** the requested hashes to persons through the last identity graph (an email,
   its canonical form, a phone, or a person id), then collect every identifier of every
   record of those persons: emails, phones and the source systems' ids (loyalty, subscriber,
   web account and device, receipt, ticket), and the ids their records had before a merge
   (``identity.id_history``) that nobody holds now.
2. **Keep only hashes**: the identifiers no other person holds are hashed with the secret salt
   into ``privacy.erased_identifiers``. Identifiers another person also holds (a household's
   landline) are neither hashed nor used to find rows: that person's rows stay.
3. **Sync destinations** first (``erase_from_sync_destinations``), while the sync state still
   knows the person; a failure there leaves everything as it was and the request pending.
4. **Published snapshots**: every kept snapshot file holding the persons is rewritten aside
   without them and swapped in atomically (the current one re-linked); the manifest's row
   counts follow.
5. **Warehouse**, in one transaction: every raw row carrying an erased hash (which covers the
   persons' records and their identifiers), quarantined lines that contain one, and every row
   of every other table keyed by the persons' person_id or record keys (identity, marts,
   scoring, segments, sync state...) or carrying one of their identifiers in a column named
   for it (dbt staging tables). dbt rebuilds the marts afterwards.
6. **Texts** the project wrote that may quote the persons (``privacy/stores.py``): load
   messages, Dagster's run storage and compute logs, ``last_run.json``, reports (the kept
   snapshots' ``report.html``), files drops: their identifiers and full names masked in place.
7. **Report** ``<privacy.folder>/reports/erasure-<request>.json``: hashes, table names and row
   counts only; the request file moves to ``requests/done/``.

The loader drops rows carrying an erased hash at load time (``raw.loads.rows_erased``), so
files landed again later do not bring the person back. Names are not identifiers (namesakes):
a row is found by the identifiers above, never by name alone.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb

from activation import erase_persons
from core import identifiers as keys
from core.pii import KnownValues
from core.published import SERVE_TABLES
from core.salt import load_salt
from core.snapshots import CURRENT, MANIFEST, SNAPSHOTS, open_snapshot, read_manifest
from core.warehouse import transaction
from privacy.requests import ErasureRequest, mark_done, pending_requests, reports_dir, requests_dir
from privacy.stores import redact_load_messages, redact_project_files
from publish.snapshot import switch_current, write_json_atomically

Progress = Callable[[str], None]
SKIP_SCHEMAS = ("raw", "privacy", "information_schema", "pg_catalog")
PERSON_COLUMNS = ("person_id", "other_person_id")


def _tables(con) -> list[tuple[str, str, list[str]]]:
    """(schema, table, columns) of every base table of the connection's database."""
    where = "t.table_type = 'BASE TABLE' AND t.table_catalog = current_database()"
    rows = con.execute(f"""
        SELECT t.table_schema, t.table_name, list(c.column_name ORDER BY c.ordinal_position)
        FROM information_schema.tables t JOIN information_schema.columns c
          ON c.table_catalog = t.table_catalog AND c.table_schema = t.table_schema AND c.table_name = t.table_name
        WHERE {where} GROUP BY ALL ORDER BY 1, 2""").fetchall()
    return [(s, t, list(cols)) for s, t, cols in rows]


def _columns(con, schema: str, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "AND table_catalog = current_database() ORDER BY ordinal_position", [schema, table]).fetchall()]


def _has(con, schema: str, table: str) -> bool:
    return bool(con.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ? "
                            "AND table_catalog = current_database()", [schema, table]).fetchall())


# --------------------------------------------------------------------------- resolve
def resolve_persons(con) -> None:
    """Temp table pv_persons(person_id) from temp table pv_request(kind, hash)."""
    con.execute("CREATE OR REPLACE TEMP TABLE pv_persons (person_id VARCHAR)")
    if not (_has(con, "identity", "records") and _has(con, "identity", "graph")):
        return
    con.execute("""
        INSERT INTO pv_persons
        SELECT DISTINCT g.person_id FROM identity.graph g JOIN identity.records r USING (record_key)
        WHERE pv_hash('email', r.email) IN (SELECT hash FROM pv_request WHERE kind = 'email')
           OR pv_hash('email', r.email_canon) IN (SELECT hash FROM pv_request WHERE kind = 'email')
           OR pv_hash('phone', r.phone) IN (SELECT hash FROM pv_request WHERE kind = 'phone')
        UNION
        SELECT DISTINCT person_id FROM identity.graph
        WHERE pv_hash('person_id', person_id) IN (SELECT hash FROM pv_request WHERE kind = 'person_id')""")


def collect_identifiers(con) -> None:
    """From pv_persons: temp tables pv_records(record_key, rid) and pv_identifiers(kind, value, shared)."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE pv_records AS
        SELECT record_key, rid FROM identity.graph WHERE person_id IN (SELECT person_id FROM pv_persons)""")
    entity_kind = " ".join(f"WHEN '{e}' THEN '{k}'" for e, k in keys.RECORD_ENTITY_KIND.items())
    # (records built before a column existed, e.g. card_token, lack it: its ids are then none)
    columns = set(_columns(con, "identity", "records"))
    scoped = "".join(f"\n        UNION ALL SELECT '{c}', source || ':' || {c}, person_id FROM r"
                     for c in ("loyalty_id", "user_id", "anonymous_id", "subscriber_id", "card_token") if c in columns)
    ids_of = """
        SELECT 'email' AS kind, email AS value, person_id FROM r
        UNION ALL SELECT 'email', email_canon, person_id FROM r
        UNION ALL SELECT 'phone', phone, person_id FROM r""" + scoped + """
        UNION ALL SELECT CASE entity """ + entity_kind + """ END, source || ':' || source_record_id, person_id FROM r"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pv_identifiers AS
        WITH r AS (SELECT rec.*, g.person_id FROM identity.records rec JOIN identity.graph g USING (record_key)),
        all_ids AS ({ids_of}),
        mine AS (SELECT DISTINCT kind, value FROM all_ids
                 WHERE value IS NOT NULL AND kind IS NOT NULL AND person_id IN (SELECT person_id FROM pv_persons)),
        others AS (SELECT DISTINCT kind, value FROM all_ids
                   WHERE value IS NOT NULL AND person_id NOT IN (SELECT person_id FROM pv_persons))
        SELECT m.kind, m.value, o.value IS NOT NULL AS shared
        FROM mine m LEFT JOIN others o USING (kind, value)""")


def former_person_ids(con) -> list[str]:
    """Ids the persons' records had in earlier identity runs and nobody holds now (merged away
    since): kept snapshots, the sync state and incremental tables may still hold rows under
    them. An old id another person holds now (a split) is that person's, and is left alone."""
    if not _has(con, "identity", "id_history"):
        return []
    return [r[0] for r in con.execute("""
        SELECT DISTINCT h.person_id FROM identity.id_history h
        WHERE h.record_key IN (SELECT record_key FROM pv_records) AND h.person_id IS NOT NULL
          AND h.person_id NOT IN (SELECT person_id FROM identity.graph WHERE person_id IS NOT NULL)
        ORDER BY 1""").fetchall()]


def known_values(con, person_ids: list[str]) -> KnownValues:
    """The persons' identifiers as text, to mask wherever a text store quotes them: identifiers
    no other person holds (source ids without their source prefix), person ids, and full names
    (first and last name together: a first name alone belongs to namesakes too)."""
    known = KnownValues(person_ids)
    for kind, value in con.execute("SELECT kind, value FROM pv_identifiers WHERE NOT shared").fetchall():
        known.add(value.split(":", 1)[1] if kind in keys.SCOPED_KINDS else value)
    columns = set(_columns(con, "identity", "records"))
    for first, last in (("first_name_display", "last_name_display"), ("first_name", "last_name")):
        if {first, last} <= columns:
            for f, l in con.execute(f"""
                    SELECT DISTINCT trim({first}), trim({last}) FROM identity.records
                    WHERE record_key IN (SELECT record_key FROM pv_records)
                      AND nullif(trim({first}), '') IS NOT NULL AND nullif(trim({last}), '') IS NOT NULL""").fetchall():
                known.add([f"{f} {l}", f"{l}, {f}", f"{f},{l}", f"{f}|{l}"])  # prose, CSV, Markdown tables
    return known


# --------------------------------------------------------------------------- sync destinations
def erase_from_sync_destinations(config, person_ids: list[str]) -> dict:
    """Delete the persons from every sync destination and purge their sync state
    (``activation.erase_persons``). Returns counts only: the erasure report keeps no ids.

    Runs first, before anything is deleted here: when a destination cannot be reached this
    raises, the request stays pending, and the next run retries it (the destinations'
    deletions are idempotent)."""

    report = erase_persons(config, person_ids)
    if not report.get("complete", True):
        unreached = sorted({f["sync"] for f in report["failed"]})
        raise ErasureIncomplete(
            f"could not delete {len(report['failed'])} person(s) from sync destination(s) "
            f"{', '.join(unreached)}; the request stays pending and the next run retries it")
    return {
        "destinations": [{"sync": d["sync"], "destination": d["destination"], "deleted": len(d["deleted"])}
                         for d in report["destinations"]],
        "sync_state_rows_removed": report.get("state_rows_removed", {}),
    }


class ErasureIncomplete(RuntimeError):
    """A sync destination could not be reached: nothing was erased, the request is kept."""


# --------------------------------------------------------------------------- snapshots
def erase_from_snapshots(config, person_ids: list[str]) -> dict[str, dict[str, int]]:
    """Rewrite every kept published snapshot that holds the persons, without them; returns
    {run_id: {table: rows removed}} for the snapshots changed."""
    published = config.published_dir
    snap_dir = published / SNAPSHOTS
    if not person_ids or not snap_dir.is_dir():
        return {}
    changed: dict[str, dict[str, int]] = {}
    new_counts: dict[str, dict[str, int]] = {}
    for path in sorted(snap_dir.glob("*.duckdb")):
        removed, counts = _rewrite_snapshot(path, person_ids, published / CURRENT)
        if removed:
            changed[path.stem] = removed
            new_counts[path.stem] = counts
    if new_counts and (published / MANIFEST).exists():
        manifest = read_manifest(published)
        for entry in manifest.get("history", []):
            if entry.get("run_id") in new_counts:  # `tables` holds the gated tables; serve's apart
                counts = new_counts[entry["run_id"]]
                entry["tables"] = {t: n for t, n in counts.items() if t not in SERVE_TABLES}
                if any(t in SERVE_TABLES for t in counts):
                    entry["serve_tables"] = {t: n for t, n in counts.items() if t in SERVE_TABLES}
        manifest.setdefault("erasures", []).append(
            {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "snapshots_rewritten": sorted(changed)})
        write_json_atomically(published / MANIFEST, manifest)
    return changed


def _rewrite_snapshot(path: Path, person_ids: list[str], current: Path) -> tuple[dict[str, int], dict[str, int]]:
    ro = open_snapshot(path)
    try:
        tables = [(s, t, cols) for s, t, cols in _tables(ro) if s == "main"]
        removed = {}
        for _, t, cols in tables:
            cond = _person_condition(cols)
            if cond:
                n = ro.execute(f'SELECT count(*) FROM main."{t}" WHERE {cond}', [person_ids] * cond.count("?")).fetchall()[0][0]
                if n:
                    removed[t] = n
    finally:
        ro.close()
    if not removed:
        return {}, {}
    # A fresh file, not DELETEs in place: deleted rows could linger in free blocks of the old one.
    tmp = path.with_name(f".{path.name}.erasing")
    tmp.unlink(missing_ok=True)
    out = duckdb.connect(str(tmp))
    counts = {}
    try:
        out.execute(f"ATTACH '{path}' AS old_snapshot (READ_ONLY)")
        for _, t, cols in tables:
            cond = _person_condition(cols)
            where = f"WHERE NOT ({cond})" if cond else ""
            params = [person_ids] * cond.count("?") if cond else []
            out.execute(f'CREATE TABLE main."{t}" AS SELECT * FROM old_snapshot.main."{t}" {where}', params)
            counts[t] = out.execute(f'SELECT count(*) FROM main."{t}"').fetchall()[0][0]
        out.execute("DETACH old_snapshot")
        out.execute("CHECKPOINT")
    finally:
        out.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    was_current = current.exists() and os.stat(current).st_ino == os.stat(path).st_ino
    os.replace(tmp, path)
    if was_current:
        switch_current(current.parent, path)
    return removed, counts


def _person_condition(cols: list[str]) -> str | None:
    parts = [f'"{c}" IN (SELECT unnest(?::VARCHAR[]))' for c in PERSON_COLUMNS if c in cols]
    return " OR ".join(parts) if parts else None


# --------------------------------------------------------------------------- warehouse
def erase_from_warehouse(con, request_id: str) -> dict[str, int]:
    """Store the erased hashes and delete every row about the persons; returns rows removed
    per table. Runs inside the caller's transaction."""
    keys.ensure_erased_table(con)
    con.execute(f"""
        INSERT INTO {keys.ERASED_TABLE}
        SELECT DISTINCT h, kind, ?, now() FROM (
            SELECT kind, pv_hash(kind, value) AS h FROM pv_identifiers WHERE NOT shared
            UNION ALL
            -- the requested identifier itself, unless another person holds it
            SELECT kind, hash FROM pv_request
            WHERE hash NOT IN (SELECT pv_hash(kind, value) FROM pv_identifiers WHERE shared AND value IS NOT NULL))
        WHERE h IS NOT NULL AND kind <> 'person_id'
        ON CONFLICT DO NOTHING""", [request_id])
    keys.load_erased(con)
    removed: dict[str, int] = {}
    raw_tables = {t for s, t, _ in _tables(con) if s == "raw"}
    for table in keys.ROW_KEYS:
        if table in raw_tables:
            cond = keys.row_erased_sql(table)
            n = con.execute(f"DELETE FROM raw.{table} WHERE {cond}").fetchall()[0][0]
            if n:
                removed[f"raw.{table}"] = n
    if "quarantine" in raw_tables:
        n = con.execute(f"DELETE FROM raw.quarantine WHERE {keys.text_erased_sql('raw_record', '_source')}").fetchall()[0][0]
        if n:
            removed["raw.quarantine"] = n
    for schema, table, cols in _tables(con):
        if schema in SKIP_SCHEMAS:
            continue
        conds = [f'"{c}" IN (SELECT person_id FROM pv_persons)' for c in PERSON_COLUMNS if c in cols]
        if "record_key" in cols:
            conds.append('"record_key" IN (SELECT record_key FROM pv_records)')
        if schema == "identity":
            conds += [f'"{c}" IN (SELECT rid FROM pv_records)' for c in ("rid_l", "rid_r") if c in cols]
            # (identity.splink_pairs: the saved Splink pairs, by record key)
            conds += [f'"{c}" IN (SELECT record_key FROM pv_records)' for c in ("key_l", "key_r") if c in cols]
        by_identifier = keys.derived_erased_sql(cols)  # dbt staging tables and the like, without person_id
        if by_identifier:
            conds.append(by_identifier)
        if conds:
            n = con.execute(f'DELETE FROM "{schema}"."{table}" WHERE {" OR ".join(conds)}').fetchall()[0][0]
            if n:
                removed[f"{schema}.{table}"] = n
    return removed


def _spark_warehouse_dir(config) -> Path | None:
    if getattr(config, "engine", "duckdb") != "spark":
        return None
    from core.spark import local_dir

    return local_dir(config.spark_warehouse)


# --------------------------------------------------------------------------- requests
def process_requests(config, con: duckdb.DuckDBPyConnection, progress: Progress | None = None,
                     other_store: Callable[[duckdb.DuckDBPyConnection, dict[str, int]], dict[str, int]] | None = None
                     ) -> list[dict]:
    """Apply every pending erasure request; returns their reports (also written as files).
    ``other_store``: on engine: spark, ``con`` is the driver's working copy and this brings the
    Spark warehouse to its erased state (privacy/spark_erasure.py), called with the working
    copy's rows removed per table, after the warehouse's erasure and before the request is done."""
    say = progress or (lambda m: None)
    pending = pending_requests(config)
    if not pending:
        return []
    keys.install(con, load_salt(config))
    reports = []
    for request in pending:
        reports.append(_process(config, con, request, say, other_store))
    for t in ("pv_request", "pv_persons", "pv_records", "pv_identifiers", "pv_erased"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return reports


def _process(config, con, request: ErasureRequest, say: Progress, other_store=None) -> dict:
    con.execute("CREATE OR REPLACE TEMP TABLE pv_request (kind VARCHAR, hash VARCHAR)")
    con.executemany("INSERT INTO pv_request VALUES (?, ?)", [list(h) for h in request.hashes])
    resolve_persons(con)
    person_ids = [r[0] for r in con.execute("SELECT person_id FROM pv_persons ORDER BY 1").fetchall()]
    former: list[str] = []
    if person_ids:
        collect_identifiers(con)
        former = former_person_ids(con)
        # rows still keyed by an id the person had before a merge go too (the sync state,
        # older snapshots, incremental tables)
        con.execute("INSERT INTO pv_persons SELECT unnest(?::VARCHAR[])", [former])
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE pv_records (record_key VARCHAR, rid BIGINT)")
        con.execute("CREATE OR REPLACE TEMP TABLE pv_identifiers (kind VARCHAR, value VARCHAR, shared BOOLEAN)")
    ids = con.execute("""SELECT kind, count(*) FILTER (WHERE NOT shared), count(*) FILTER (WHERE shared)
                         FROM pv_identifiers GROUP BY kind ORDER BY kind""").fetchall()
    say(f"privacy: request {request.request_id}: {len(person_ids)} person(s) found")

    all_ids = person_ids + former
    sync = erase_from_sync_destinations(config, all_ids) if person_ids else {"status": "nothing to erase"}
    snapshots = erase_from_snapshots(config, all_ids)
    known = known_values(con, all_ids)
    with transaction(con):
        removed = erase_from_warehouse(con, request.request_id)
        texts = {"raw.loads.message": redact_load_messages(con, known)}
    if other_store is not None:
        removed |= other_store(con, dict(removed))
    # the landing folder holds the source systems' exports (not rewritten: see the README)
    # (and the Spark warehouse's Parquet files, erased row by row above: masking bytes would break them)
    texts |= redact_project_files(config.root, known, skip=[
        config.landing_dir, config.resolve(config.privacy.salt_file), requests_dir(config),
        *([spark_dir] if (spark_dir := _spark_warehouse_dir(config)) else [])])
    salt_hash = lambda kind, v: con.execute("SELECT pv_hash(?, ?)", [kind, v]).fetchall()[0][0]  # noqa: E731
    report = {
        "request_id": request.request_id,
        "requested_at": request.requested_at,
        "processed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "erased" if person_ids else "not_found",
        "requested": [{"kind": k, "hash": h} for k, h in request.hashes],
        "persons": [salt_hash("person_id", p) for p in person_ids],
        "former_person_ids": len(former),
        "identifiers_erased": {k: n for k, n, _ in ids if n},
        "identifiers_kept_shared_with_other_persons": {k: s for k, _, s in ids if s},
        "erased_hashes": [r[0] for r in con.execute(
            f"SELECT hash FROM {keys.ERASED_TABLE} WHERE request_id = ? ORDER BY hash", [request.request_id]).fetchall()],
        "rows_removed": removed,
        "snapshots_rewritten": snapshots,
        "sync_destinations": sync,
        "texts_redacted": texts,
        "note": ("not found in the identity graph: the requested identifier is kept as a hash so that "
                 "files landed later with it are dropped") if not person_ids else "",
    }
    folder = reports_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"erasure-{request.request_id}.json").write_text(json.dumps(report, indent=2, default=str))
    mark_done(request)
    say(f"privacy: request {request.request_id}: removed "
        f"{sum(removed.values()):,} warehouse rows in {len(removed)} tables, "
        f"{sum(sum(v.values()) for v in snapshots.values()):,} rows in {len(snapshots)} snapshot(s)")
    return report
