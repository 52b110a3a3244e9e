"""Subject access: ``export_subject(config, kind, value)`` -> everything held about a person.

Read-only on the warehouse. The person is found the way erasure finds them (identity graph,
then every identifier of every record of theirs), so an export shows exactly what a
`cdp forget` with the same identifier would remove: the raw rows from every source, the
quarantined lines holding their identifiers, the identity records and graph, the golden
record, traits, segments, scores, offers, recommendations, consent, and sync history (the
``activation`` schema's tables, when syncs have run).
"""

from __future__ import annotations

import json
import secrets
from datetime import date, datetime, timezone
from decimal import Decimal

from core import identifiers as keys
from core.warehouse import open_warehouse
from privacy.erasure import PERSON_COLUMNS, SKIP_SCHEMAS, _tables, collect_identifiers, resolve_persons
from privacy.requests import phone_region

# published name -> section of the export (the rest of marts.* goes under other_tables)
PROFILE_SECTIONS = {
    "customers": "golden_record", "customer_traits": "traits", "segment_membership": "segments",
    "segment_membership_history": "segment_history", "churn_scores": "churn_score", "cart_intent": "cart_intent",
    "next_best_offer": "offers", "recommendations": "recommendations", "consent": "consent",
}
SYNC_SCHEMA = "activation"


def _plain(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _rows(con, sql: str, params=None) -> list[dict]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [{n: _plain(v) for n, v in zip(names, row)} for row in cur.fetchall()]


def export_subject(config, kind: str, value: str) -> dict:
    # A throwaway salt: hashes here only join the person's identifiers to rows, inside this query.
    session_salt = secrets.token_hex(16)
    wanted = keys.request_keys(kind, value, phone_region(config))
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        keys.install(con, session_salt)
        con.execute("CREATE OR REPLACE TEMP TABLE pv_request (kind VARCHAR, hash VARCHAR)")
        con.executemany("INSERT INTO pv_request VALUES (?, ?)",
                        [[k, keys.key_hash(session_salt, k, v)] for k, v in wanted])
        resolve_persons(con)
        persons = [r[0] for r in con.execute("SELECT person_id FROM pv_persons ORDER BY 1").fetchall()]
        out: dict = {
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "requested": {"kind": kind, "value": value},
            "person_ids": persons,
            "found": bool(persons),
        }
        if not persons:
            out["note"] = "no person in the identity graph holds this identifier"
            return out
        collect_identifiers(con)
        con.execute("""CREATE OR REPLACE TEMP TABLE pv_erased AS
                       SELECT DISTINCT pv_hash(kind, value) AS hash FROM pv_identifiers WHERE NOT shared""")
        tables = _tables(con)
        raw_tables = {t for s, t, _ in tables if s == "raw"}
        out["source_records"] = {
            t: _rows(con, f"SELECT * FROM raw.{t} WHERE {keys.row_erased_sql(t)} ORDER BY _source, _file, _row")
            for t in keys.ROW_KEYS if t in raw_tables
        }
        if "quarantine" in raw_tables:
            out["quarantined_lines"] = _rows(
                con, f"SELECT * FROM raw.quarantine WHERE {keys.text_erased_sql('raw_record', '_source')} "
                     "ORDER BY _file, _row")
        profile, identity, sync, other = {}, {}, {}, {}
        for schema, table, cols in tables:
            if schema in SKIP_SCHEMAS:
                continue
            conds = [f'"{c}" IN (SELECT person_id FROM pv_persons)' for c in PERSON_COLUMNS if c in cols]
            if "record_key" in cols:
                conds.append('"record_key" IN (SELECT record_key FROM pv_records)')
            if not conds:
                continue
            rows = _rows(con, f'SELECT * FROM "{schema}"."{table}" WHERE {" OR ".join(conds)}')
            if schema == "marts" and table in PROFILE_SECTIONS:
                profile[PROFILE_SECTIONS[table]] = rows
            elif schema == "identity":
                identity[table] = rows
            elif schema == SYNC_SCHEMA:
                sync[table] = rows
            elif rows:
                other[f"{schema}.{table}"] = rows
        out["profile"] = profile
        out["identity"] = identity
        out["sync_history"] = sync or {"note": "no sync state in this warehouse (no syncs have run)"}
        out["other_tables"] = other
    return out
