"""What a sync should have delivered, read from the published snapshot only (read-only).

A segment or table source is joined to the golden record (``customers``) and
``customer_traits`` so the identifier and mapped fields can come from either; a query source
returns its own columns. Persons without the sync's consent are split off: they are never
sent, and are removed from the destination if they were there.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass, field

import duckdb

from core.settings.activation import SyncConfig


class SourceError(ValueError):
    """The sync's source cannot be read from the published snapshot; says what to fix."""


@dataclass(frozen=True)
class Wanted:
    person_id: str
    key: str
    field_hash: str        # the fields themselves are fetched only for persons that are sent


@dataclass
class SourceRead:
    wanted: dict[str, Wanted]           # consented persons with an identifier
    no_consent: set[str]                # in the source but without consent
    no_identifier: int                  # in the source but no identifier value
    duplicate_key: int                  # a second person with an identifier already taken
    known_persons: set[str]             # every person_id in customers (to tell "left" from "vanished")
    merged_into: dict[str, str]         # old person_id -> surviving person_id
    consented: set[str] | None          # persons with the sync's consent granted (None: no rule)
    snapshot: str | None
    # person_id -> destination identifier fields whose value another wanted person shares (a shared
    # phone would make the destination merge them into one profile): those fields are not sent
    shared: dict[str, set[str]] = field(default_factory=dict)
    # persons in a holdout arm of an experiment attached to the sync: never sent
    held_out: set[str] = field(default_factory=set)


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}


def _columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()]


# Destination fields that identify a profile: two persons sharing a value would become one profile.
IDENTIFIER_FIELDS = {"email", "phone_number", "phone", "external_id", "email_address"}

_PLAIN = (str, int, float, bool, type(None))


def _jsonable(v):
    if type(v) in _PLAIN:
        return v
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def base_select(con, tables: set[str]) -> str:
    """customers joined with customer_traits, one row per person, customers' columns first."""
    if "customers" not in tables:
        raise SourceError("the published snapshot has no customers table; publish the marts first")
    cust = _columns(con, "customers")
    if "customer_traits" not in tables:
        return "SELECT * FROM customers"
    extra = [c for c in _columns(con, "customer_traits") if c not in cust]
    cols = ", ".join(["c.*"] + [f't."{c}"' for c in extra])
    return f"SELECT {cols} FROM customers c LEFT JOIN customer_traits t USING (person_id)"


def source_sql(sync: SyncConfig, con) -> tuple[str, list]:
    tables = _tables(con)
    src = sync.source
    if src.query:
        return src.query, []
    base = base_select(con, tables)
    if src.segment:
        if "segment_membership" not in tables:
            raise SourceError(f"syncs[{sync.name}].source.segment: the published snapshot has no segment_membership")
        known = {r[0] for r in con.execute("SELECT DISTINCT segment FROM segment_membership").fetchall()}
        if "segment_catalog" in tables:
            known |= {r[0] for r in con.execute("SELECT segment FROM segment_catalog").fetchall()}
        if src.segment not in known:
            raise SourceError(
                f"syncs[{sync.name}].source.segment: no segment named {src.segment!r} in the published snapshot; "
                f"known: {', '.join(sorted(known)[:20]) or '(none)'}"
            )
        return (f"SELECT b.* FROM ({base}) b WHERE b.person_id IN "
                f"(SELECT person_id FROM segment_membership WHERE segment = ?)", [src.segment])
    table = src.table
    if table not in tables:
        raise SourceError(f"syncs[{sync.name}].source.table: {table!r} is not a published table; "
                          f"published: {', '.join(sorted(tables))}")
    if table in ("customers", "customer_traits"):
        return base, []
    tcols = _columns(con, table)
    if "person_id" not in tcols:
        raise SourceError(f"syncs[{sync.name}].source.table: {table!r} has no person_id column")
    basecols = set(_columns(con, "customers")) | (set(_columns(con, "customer_traits")) if "customer_traits" in tables else set())
    extra = [c for c in tcols if c not in basecols]
    cols = ", ".join(["b.*"] + [f'x."{c}"' for c in extra])
    return f'SELECT {cols} FROM ({base}) b JOIN "{table}" x USING (person_id)', []


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def holdouts(sync: SyncConfig, con: duckdb.DuckDBPyConnection, experiments: list[str]) -> set[str]:
    """Persons in a holdout arm of the given experiments (published experiment_assignments)."""
    if not experiments:
        return set()
    if "experiment_assignments" not in _tables(con):
        # Sending without knowing who is held out could reach the holdout: refuse instead.
        raise SourceError(f"syncs[{sync.name}]: experiments {', '.join(experiments)} hold people out of this sync, "
                          f"but the published snapshot has no experiment_assignments; publish the marts first")
    return {r[0] for r in con.execute(
        "SELECT DISTINCT CAST(person_id AS VARCHAR) FROM experiment_assignments WHERE holdout "
        "AND experiment IN (SELECT unnest(?::VARCHAR[]))", [list(experiments)]).fetchall()}


def read_source(sync: SyncConfig, con: duckdb.DuckDBPyConnection, snapshot: str | None = None,
                holdout_experiments: list[str] | tuple[str, ...] = ()) -> SourceRead:
    sql, params = source_sql(sync, con)
    try:
        cols = [d[0] for d in con.execute(f"SELECT * FROM ({sql}) q LIMIT 0", params).description]
    except duckdb.Error as e:
        raise SourceError(f"syncs[{sync.name}].source: the published snapshot cannot run it: {e}") from None
    needed = {"person_id", sync.identifier, *sync.fields.values()}
    missing = sorted(c for c in needed if c not in cols)
    if missing:
        raise SourceError(
            f"syncs[{sync.name}]: the source has no column(s) {', '.join(missing)} "
            f"(identifier / fields); available: {', '.join(cols)}"
        )
    # Key normalisation and the field hash are computed in SQL: one vectorised pass instead of
    # a JSON dump and a digest per row in Python.
    key = f"trim(CAST(q.{_q(sync.identifier)} AS VARCHAR))"
    if sync.identifier == "email":
        key = f"lower({key})"
    packed = ", ".join([f"{_q('~key')} := {key}"] + [f"{_q(dest)} := q.{_q(col)}" for dest, col in sync.fields.items()])
    rows = con.execute(
        f"SELECT CAST(q.person_id AS VARCHAR), NULLIF({key}, ''), "
        f"md5(CAST(to_json(struct_pack({packed})) AS VARCHAR)) "
        f"FROM ({sql}) q ORDER BY 1", params).fetchall()
    tables = _tables(con)
    consented: set[str] | None = None
    if sync.consent is not None:
        if "consent" not in tables:
            consented = set()  # no consent table published yet: nobody may be contacted
        else:
            consented = {r[0] for r in con.execute(
                "SELECT person_id FROM consent WHERE channel = ? AND status = 'granted'",
                [sync.consent.channel]).fetchall()}
    held_out = holdouts(sync, con, list(holdout_experiments))
    wanted: dict[str, Wanted] = {}
    taken: set[str] = set()
    no_consent, no_id, dup = set(), 0, 0
    for r in rows:
        pid = r[0]
        if pid in wanted or pid in held_out:
            continue
        if consented is not None and pid not in consented:
            no_consent.add(pid)
            continue
        if r[1] is None:
            no_id += 1
            continue
        if r[1] in taken:
            dup += 1
            continue
        taken.add(r[1])
        wanted[pid] = Wanted(pid, r[1], r[2])
    known = {r[0] for r in con.execute("SELECT person_id FROM customers").fetchall()} if "customers" in tables else set()
    merged: dict[str, str] = {}
    if "identity_changes" in tables:
        for old, new in con.execute(
            "SELECT person_id, other_person_id FROM identity_changes WHERE change = 'merged_into' "
            "AND other_person_id IS NOT NULL ORDER BY changed_at"
        ).fetchall():
            merged[old] = new
    shared: dict[str, set[str]] = {}
    for dest, col in sync.fields.items():
        if dest not in IDENTIFIER_FIELDS or col == sync.identifier:
            continue
        holders: dict[str, set[str]] = {}
        for pid, v in con.execute(f"SELECT DISTINCT CAST(q.person_id AS VARCHAR), lower(trim(CAST(q.{_q(col)} AS VARCHAR))) "
                                  f"FROM ({sql}) q", params).fetchall():
            if v and pid in wanted:
                holders.setdefault(v, set()).add(pid)
        for pids in holders.values():
            if len(pids) > 1:
                for pid in pids:
                    shared.setdefault(pid, set()).add(dest)
    return SourceRead(wanted, no_consent, no_id, dup, known, merged, consented, snapshot, shared,
                      held_out & {r[0] for r in rows})


def fetch_fields(sync: SyncConfig, con: duckdb.DuckDBPyConnection, person_ids: list[str],
                 of_total: int | None = None) -> dict[str, dict]:
    """Destination field -> JSON-ready value, for the persons about to be sent (all rows are
    read when that is most of the source: cheaper than passing a long id list in)."""
    if not person_ids:
        return {}
    sql, params = source_sql(sync, con)
    cols = "".join(f", q.{_q(col)}" for col in sync.fields.values())
    select = f"SELECT CAST(q.person_id AS VARCHAR){cols} FROM ({sql}) q"
    if of_total and len(person_ids) * 2 > of_total:
        wanted = set(person_ids)
        rows = [r for r in con.execute(select, params).fetchall() if r[0] in wanted]
    else:
        rows = con.execute(f"{select} WHERE CAST(q.person_id AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))",
                           params + [person_ids]).fetchall()
    names = list(sync.fields)
    return {r[0]: {n: _jsonable(v) for n, v in zip(names, r[1:])} for r in rows}
