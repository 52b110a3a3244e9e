"""Reading the published snapshot for marketers: segments, members, one person's profile and
ad-hoc SQL. Every function opens snapshots read-only; nothing here can change a published file.

The snapshot's tables are discovered, not listed: a table that a later stage publishes (churn
scores, offers...) shows up in profiles and queries without a code change, and one that is not
published yet is reported as such.
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb

from core.published import CONSENT_CHANNELS, SERVE_TABLES, published_tables
from core.snapshots import current_path, open_snapshot, read_manifest, snapshot_file

# Consent channels (interfaces: consent.channel) and the campaign channel each one allows.
EXPORT_CHANNELS = {"email": "email_marketing", "sms": "sms_marketing"}
# The contact field each export channel needs to be useful.
CHANNEL_CONTACT = {"email": "email", "sms": "phone"}

# Statement types `query` runs; anything else (DDL, DML, COPY, ATTACH, SET, PRAGMA...) is refused.
READ_STATEMENTS = {"SELECT", "EXPLAIN"}


class MarketingError(ValueError):
    """Bad input from the user (unknown segment, bad SQL, nothing published...): one clear
    message, never personal data."""


def expected_tables() -> tuple[str, ...]:
    """Tables a complete publish holds (the dbt models tagged `published`); a profile or report
    names those missing from a snapshot."""
    return tuple(t.name for t in published_tables())


def profile_order() -> tuple[str, ...]:
    """Sections of a profile, in the order a person reads them (each model's
    `meta.tessera.profile` in dbt); any other published table keyed by person_id follows
    these, alphabetically."""
    ranked = sorted((t.profile, t.name) for t in published_tables() if t.profile is not None)
    return tuple(name for _, name in ranked)


# --------------------------------------------------------------------------- opening snapshots
@contextmanager
def open_published(published_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The current published snapshot, read-only."""
    path = current_path(published_dir)
    if not path.exists():
        raise MarketingError(
            f"nothing has been published yet under {published_dir}: run `cdp run` (a run whose "
            f"quality gate passes publishes a snapshot), then try again")
    con = open_snapshot(path)
    try:
        yield con
    finally:
        con.close()


def previous_run(published_dir: Path) -> dict | None:
    """The manifest entry published before the current one (whose file is still kept), if any."""
    manifest = read_manifest(published_dir)
    runs = manifest["history"]
    ids = [h["run_id"] for h in runs]
    if manifest["current"] not in ids:
        return None
    for entry in runs[ids.index(manifest["current"]) + 1:]:
        if snapshot_file(published_dir, entry["run_id"]).exists():
            return entry
    return None


def tables(con) -> dict[str, list[str]]:
    """Published table -> its columns, in order."""
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def _rows(con, sql: str, params: list | None = None) -> list[dict]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- segments
def segment_sizes(con) -> dict[str, int]:
    if "segment_membership" not in tables(con):
        return {}
    return dict(con.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall())


def _catalog(con, have: dict[str, list[str]]) -> dict[str, dict]:
    if "segment_catalog" not in have:
        return {}
    return {r["segment"]: r for r in _rows(con, "SELECT * FROM segment_catalog")}


def segments_overview(published_dir: Path) -> dict:
    """Every segment with its size, kind, description and definition, and the change since the
    previous publish (size then, persons who entered and who left)."""
    prev = previous_run(published_dir)
    with open_published(published_dir) as con:
        have = tables(con)
        if "segment_membership" not in have:
            raise MarketingError("the published snapshot holds no segment_membership table yet")
        sizes = segment_sizes(con)
        catalog = _catalog(con, have)
        moves: dict[str, tuple[int, int]] = {}
        prev_sizes: dict[str, int] = {}
        if prev is not None:
            path = snapshot_file(published_dir, prev["run_id"]).resolve()
            moves, prev_sizes = _changes_since(con, path)
        as_of = con.execute("SELECT max(as_of) FROM segment_membership").fetchall()[0][0]
    names = sorted(set(sizes) | set(prev_sizes) | set(catalog))
    segments = []
    for name in names:
        entry = catalog.get(name, {})
        entered, left = moves.get(name, (0, 0)) if prev is not None else (None, None)
        size = sizes.get(name, 0)
        segments.append({
            "segment": name,
            "kind": entry.get("kind"),  # None: segment_catalog not published, or the segment not in it
            "size": size,
            "previous_size": prev_sizes.get(name, 0) if prev is not None else None,
            "change": size - prev_sizes.get(name, 0) if prev is not None else None,
            "entered": entered,
            "left": left,
            "description": entry.get("description"),
            "definition": entry.get("definition"),
        })
    segments.sort(key=lambda s: (-s["size"], s["segment"]))
    return {
        "as_of": as_of,
        "previous_run": prev["run_id"] if prev else None,
        "previous_published_at": prev["published_at"] if prev else None,
        "catalog_published": "segment_catalog" in have,
        "segments": segments,
    }


def _changes_since(con, previous_path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    prev = open_snapshot(previous_path)
    try:
        if "segment_membership" not in tables(prev):
            return {}, {}
        prev_rows = prev.sql("SELECT segment, person_id FROM segment_membership").to_arrow_table()
    finally:
        prev.close()
    con.register("previous_membership", prev_rows)
    try:
        rows = con.execute(
            """WITH cur AS (SELECT segment, person_id FROM segment_membership),
                    old AS (SELECT segment, person_id FROM previous_membership)
               SELECT coalesce(cur.segment, old.segment) AS segment,
                      count(*) FILTER (WHERE old.person_id IS NULL) AS entered,
                      count(*) FILTER (WHERE cur.person_id IS NULL) AS left_,
                      count(*) FILTER (WHERE old.person_id IS NOT NULL) AS previous_size
               FROM cur FULL OUTER JOIN old ON cur.segment = old.segment AND cur.person_id = old.person_id
               GROUP BY 1""").fetchall()
    finally:
        con.unregister("previous_membership")
    return {s: (e, l) for s, e, l, _ in rows}, {s: p for s, _, _, p in rows if p}


def unknown_segment_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close = list(dict.fromkeys(close + [k for k in known if name.lower() in k.lower()]))[:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"no segment named {name!r} in the published snapshot.{hint} `cdp segments` lists them all."


# --------------------------------------------------------------------------- members
@dataclass
class Members:
    segment: str
    channel: str | None  # export channel whose consent was required, None = no consent filter
    columns: list[str]
    rows: list[tuple]
    in_segment: int  # every member, before the consent filter
    excluded_no_consent: int = 0
    excluded_no_contact: int = 0
    notes: list[str] = field(default_factory=list)


def segment_members(published_dir: Path, segment: str, channel: str | None = "email") -> Members:
    """The members of a segment with the fields a campaign needs: person_id, names, email,
    phone, one consent flag per channel and since-when in the segment.

    ``channel`` 'email' or 'sms' keeps only persons with consent granted on that channel
    (email_marketing / sms_marketing; no consent row means no consent) who have the contact
    field; None keeps everyone (an analysis list, not for sending)."""
    if channel is not None and channel not in EXPORT_CHANNELS:
        raise MarketingError(f"channel {channel!r} is not one of: {', '.join(EXPORT_CHANNELS)} (or none)")
    with open_published(published_dir) as con:
        have = tables(con)
        if "segment_membership" not in have:
            raise MarketingError("the published snapshot holds no segment_membership table yet")
        known = [r[0] for r in con.execute("SELECT DISTINCT segment FROM segment_membership ORDER BY 1").fetchall()]
        if segment not in known:
            catalog = _catalog(con, have)
            if segment in catalog:  # defined, but nobody is in it
                known.append(segment)
            else:
                raise MarketingError(unknown_segment_message(segment, sorted(known + list(catalog))))
        has_consent = "consent" in have
        if channel is not None and not has_consent:
            raise MarketingError(
                f"the published snapshot holds no consent table, so consent for {channel} cannot be "
                f"checked and nothing is exported; use --channel none for an analysis list (not for sending)")
        consent_cols = ",\n".join(
            f"coalesce(bool_or(c.channel = '{ch}' AND c.status = 'granted'), false) AS consent_{ch}"
            for ch in CONSENT_CHANNELS) if has_consent else ""
        consent_join = "LEFT JOIN consent c ON c.person_id = m.person_id" if has_consent else ""
        select = f"""
            SELECT m.person_id, cu.first_name, cu.last_name, cu.email, cu.phone,
                   {consent_cols + ',' if consent_cols else ''}
                   m.since AS in_segment_since
            FROM segment_membership m
            LEFT JOIN customers cu ON cu.person_id = m.person_id
            {consent_join}
            WHERE m.segment = ?
            GROUP BY ALL
            ORDER BY m.person_id"""
        cur = con.execute(select, [segment])
        columns = [d[0] for d in cur.description]
        everyone = cur.fetchall()
    result = Members(segment, channel, columns, everyone, in_segment=len(everyone))
    if not has_consent:
        result.notes.append("the snapshot holds no consent table: consent flags are not shown")
    if channel is not None:
        flag = columns.index(f"consent_{EXPORT_CHANNELS[channel]}")
        contact = columns.index(CHANNEL_CONTACT[channel])
        consented = [r for r in everyone if r[flag]]
        result.rows = [r for r in consented if r[contact]]
        result.excluded_no_consent = len(everyone) - len(consented)
        result.excluded_no_contact = len(consented) - len(result.rows)
    return result


def write_members(members: Members, path: Path) -> Path:
    """Write members to FILE.csv or FILE.parquet (by the extension)."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise MarketingError(f"{path}: the export file must end in .csv or .parquet")
    if not path.parent.exists():
        raise MarketingError(f"{path.parent}: no such folder for the export file")
    table = pa.table({c: [r[i] for r in members.rows] for i, c in enumerate(members.columns)})
    tmp = path.with_name(f".{path.name}.partial")
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    tmp.replace(path)  # a reader never sees half a file
    return path


# --------------------------------------------------------------------------- profile
def _person_tables(have: dict[str, list[str]]) -> list[str]:
    keyed = [t for t, cols in have.items() if "person_id" in cols and t not in SERVE_TABLES]  # the server's inputs
    order = profile_order()
    return [t for t in order if t in keyed] + sorted(t for t in keyed if t not in order)


_ORDER_BY = {
    "identity_graph": "source, entity, source_record_id",
    "segment_membership": "segment",
    "recommendations": "rank",
    "consent": "channel",
    "segment_membership_history": "entered_at, segment",
    "identity_changes": "changed_at",
}


def find_person(con, email: str | None = None, person_id: str | None = None) -> tuple[str, int]:
    """The person_id asked for, and how many persons matched (an email may be shared)."""
    have = tables(con)
    if "customers" not in have:
        raise MarketingError("the published snapshot holds no customers table yet")
    if person_id is not None:
        if not con.execute("SELECT 1 FROM customers WHERE person_id = ?", [person_id]).fetchall():
            raise MarketingError("no person with that person_id in the published snapshot")
        return person_id, 1
    found = con.execute(
        "SELECT person_id FROM customers WHERE lower(trim(email)) = lower(trim(?)) ORDER BY person_id",
        [email]).fetchall()
    if not found:
        raise MarketingError("no person in the published snapshot has that email as their best email "
                             "(customers.email); check the spelling, or look the person up with --person-id")
    return found[0][0], len(found)


def profile(published_dir: Path, email: str | None = None, person_id: str | None = None) -> dict:
    """One person: every published table keyed by person_id, as sections of rows; tables a
    complete publish would hold but this snapshot lacks are listed in ``not_published``."""
    if (email is None) == (person_id is None):
        raise MarketingError("give exactly one of --email or --person-id")
    with open_published(published_dir) as con:
        have = tables(con)
        pid, matches = find_person(con, email=email, person_id=person_id)
        sections: dict[str, list[dict]] = {}
        for table in _person_tables(have):
            order = _ORDER_BY.get(table)
            order = order if order and all(c.strip().split()[0] in have[table] for c in order.split(",")) else None
            sections[table] = _rows(
                con, f"SELECT * FROM {_q(table)} WHERE person_id = ?" + (f" ORDER BY {order}" if order else ""),
                [pid])
    return {
        "person_id": pid,
        "sections": sections,
        "not_published": [t for t in profile_order() if t not in have],
        "notes": [f"{matches} persons have this email; showing the first (look up the others with --person-id)"]
                  if matches > 1 else [],
    }


# --------------------------------------------------------------------------- ad-hoc SQL
def check_read_only_sql(sql: str) -> None:
    """Refuse anything but one SELECT (or EXPLAIN): the message says what was found."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise MarketingError(f"the SQL does not parse: {_first_line(e)}") from None
    if not statements:
        raise MarketingError("no SQL statement given")
    if len(statements) > 1:
        raise MarketingError(f"give one statement at a time ({len(statements)} found)")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind not in READ_STATEMENTS:
        raise MarketingError(
            f"only SELECT queries are allowed here (this is a {kind} statement): the published snapshot is "
            f"read-only; build new tables in dbt or your own DuckDB file instead")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_query(published_dir: Path, sql: str) -> tuple[list[str], list[tuple]]:
    check_read_only_sql(sql)
    with open_published(published_dir) as con:
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, cur.fetchall()
        except duckdb.Error as e:
            message = str(e).strip()
            if re.search(r"read-only|read only", message, re.I):
                raise MarketingError("the published snapshot is read-only; the statement was refused") from None
            hint = ""
            if isinstance(e, duckdb.CatalogException):
                hint = f" Published tables: {', '.join(sorted(tables(con)))}."
            raise MarketingError(f"the query failed: {message}{hint}") from None
