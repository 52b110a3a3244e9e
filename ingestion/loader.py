"""Landing files -> ``raw.*`` tables, incrementally, atomically, with a quarantine.

How one file is loaded (:func:`load_file`: stage, validate, claim, commit):

1. The manifest (``raw.loads``) is consulted: a file already loaded under the same name
   and size/mtime is skipped without reading it; otherwise its SHA-256 and line count are
   taken in a thread while it is staged.
2. Stage: a clean file is parsed by DuckDB's reader in one scan (JSON lines straight into the
   raw table in an open transaction; a CSV into a temp table). A file with any bad line, or
   whose rows do not account for its lines, is read again line by line in Python, so that a
   line the reader cannot take (not UTF-8, too long, a stray ``\\r``, an unterminated quote)
   costs that line alone and reaches the quarantine verbatim. Each row gets the reason it
   breaks the contract, if any.
3. Validate: every file must satisfy ``lines = rows loaded + quarantined + erased + skipped``
   (skipped: a CSV's header, blank lines, the extra lines of quoted fields that span lines),
   or it is rejected by name. A file that cannot be read, lacks a required column, or whose
   share of bad rows is over ``ingestion.max_bad_row_rate`` is rejected whole.
4. Claim: same content under any name -> ``duplicate``; new content under a name loaded
   before -> ``changed`` and *not* loaded (never double-loaded).
5. Commit: good rows to ``raw.<kind>_<entity>``, bad rows verbatim to ``raw.quarantine`` with
   their reason, and the manifest row, all in one transaction: a crash mid-load leaves nothing
   behind and the rerun loads the file.

Messages name the file, row, field or column position, never a value (values may be personal:
a header-less CSV has a person in its first line).

Erased persons (``cdp forget``) stay out: once ``privacy.erased_identifiers`` holds salted
hashes, every row whose identifiers hash to one of them is dropped at load time and counted in
``raw.loads.rows_erased`` - never quarantined, since the quarantine keeps lines verbatim.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from core import segment_spec
from core.config import Config, EntityFiles, Source
from core.contracts import (
    BOOLEAN,
    DATE,
    DECIMAL,
    DUCKDB_TYPES,
    ENTITIES,
    INTEGER,
    JSON,
    STRING,
    TIMESTAMP,
    Entity,
)
from core.contracts import (
    entity as contract_entity,
)
from core.expressions import columns as expression_columns
from core.expressions import compile_condition
from core.expressions import compile_sql as compile_expression
from core.expressions import parse as parse_expression
from core.identifiers import erased_count, load_erased, row_erased_sql, text_erased_sql
from core.identifiers import install as install_hashing
from core.salt import load_salt
from core.warehouse import transaction

LINEAGE_COLUMNS = (
    ("_source", "VARCHAR"),
    ("_file", "VARCHAR"),
    ("_row", "BIGINT"),
    ("_load_id", "VARCHAR"),
    ("_loaded_at", "TIMESTAMPTZ"),
)
# Timestamps before ingestion.earliest_date (default below) or more than a day after the load are
# impossible for a retailer's operational data (a typo'd year, an epoch-zero default). The
# setting reaches the checks as a DuckDB variable of the loading connection (load_file sets it).
EARLIEST_PLAUSIBLE = "2000-01-01"
_EARLIEST_SQL = f"coalesce(getvariable('tessera_earliest'), TIMESTAMPTZ '{EARLIEST_PLAUSIBLE}')"

# Outcome of one file.
LOADED, DUPLICATE, UNCHANGED, CHANGED, REJECTED = "loaded", "duplicate", "unchanged", "changed", "rejected"

Progress = Callable[[str], None]


class FileRejected(Exception):
    """The whole file breaks the contract; nothing of it is applied."""


@dataclass
class FileResult:
    source: str
    table: str
    file: str  # relative to the landing folder
    status: str
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_erased: int = 0  # rows of erased persons, dropped (see privacy/)
    # The count that must add up: lines = rows_loaded + rows_quarantined + rows_erased + rows_skipped + lines_skipped
    lines: int = 0  # lines in the file ("\n"-terminated, plus a last one without)
    lines_skipped: int = 0  # lines that are no row: a CSV's header, blank lines, continuation lines of quoted fields
    rows_skipped: int = 0  # rows left out by the entity's skip_when (wanted out, not bad)
    days_covered: float | None = None  # days the rows' timestamps span (at least 1; the load profile)
    message: str = ""
    load_id: str | None = None
    checksum: str | None = None
    seconds: float = 0.0


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def ok(self) -> bool:
        """False when any file was rejected or changed under a known name."""
        return not (self.by_status(REJECTED) or self.by_status(CHANGED))

    def rows_loaded(self, table: str | None = None) -> int:
        return sum(f.rows_loaded for f in self.files if table is None or f.table == table)

    def rows_quarantined(self, table: str | None = None) -> int:
        return sum(f.rows_quarantined for f in self.files if table is None or f.table == table)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "files": [asdict(f) for f in self.files]}


# --------------------------------------------------------------------------- schema
def ensure_raw_schema(con: duckdb.DuckDBPyConnection, entities: Iterable[Entity] = ENTITIES) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS raw.loads (
            load_id VARCHAR PRIMARY KEY,
            source VARCHAR NOT NULL,
            table_name VARCHAR NOT NULL,
            file VARCHAR NOT NULL,
            checksum VARCHAR,
            size_bytes BIGINT,
            mtime_ns BIGINT,
            status VARCHAR NOT NULL,
            rows_loaded BIGINT NOT NULL DEFAULT 0,
            rows_quarantined BIGINT NOT NULL DEFAULT 0,
            message VARCHAR,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL,
            rows_erased BIGINT DEFAULT 0
        )"""
    )
    # warehouses made before erasure, and before the line accounting, existed
    con.execute("ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS rows_erased BIGINT DEFAULT 0")
    con.execute("ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS lines BIGINT")
    con.execute("ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS lines_skipped BIGINT")
    # the load profile (see _profile): what the gate compares a load of a source with its earlier loads
    con.execute("ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS days_covered DOUBLE")
    con.execute("ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS rows_skipped BIGINT DEFAULT 0")
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS raw.load_profiles (
            load_id VARCHAR NOT NULL,
            field VARCHAR NOT NULL,
            filled BIGINT NOT NULL,
            top_value_rows BIGINT
        )"""
    )
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS raw.quarantine (
            _load_id VARCHAR NOT NULL,
            _source VARCHAR NOT NULL,
            _file VARCHAR NOT NULL,
            _row BIGINT,
            table_name VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            field VARCHAR,
            raw_record VARCHAR,
            _loaded_at TIMESTAMPTZ NOT NULL
        )"""
    )
    for ent in entities:
        cols = [f'"{f.name}" {DUCKDB_TYPES[f.type]}' for f in ent.fields]
        cols += [f"{name} {typ}" for name, typ in LINEAGE_COLUMNS]
        con.execute(f"CREATE TABLE IF NOT EXISTS raw.{ent.table} ({', '.join(cols)})")
        for f in ent.fields:  # fields added to a contract later (e.g. pos card_token): older warehouses get them
            con.execute(f'ALTER TABLE raw.{ent.table} ADD COLUMN IF NOT EXISTS "{f.name}" {DUCKDB_TYPES[f.type]}')


# --------------------------------------------------------------------------- helpers
def checksum_and_lines(path: Path) -> tuple[str, int]:
    """SHA-256 of the file and its number of non-empty-terminated lines, in one read."""
    h = hashlib.sha256()
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return h.hexdigest(), lines + (last != b"\n")


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _cast_expr(field_type: str, raw: str, fmt: str | None) -> str:
    """SQL turning the landed text ``raw`` into the contract type, NULL when it cannot."""
    if field_type == TIMESTAMP:
        if fmt:
            return f"CAST(try_strptime({raw}, {_lit(fmt)}) AS TIMESTAMP) AT TIME ZONE 'UTC'"
        return f"try_cast({raw} AS TIMESTAMPTZ)"
    if field_type == DATE:
        if fmt:
            return f"CAST(try_strptime({raw}, {_lit(fmt)}) AS DATE)"
        return f"try_cast({raw} AS DATE)"
    if field_type == INTEGER:
        return f"try_cast({raw} AS BIGINT)"
    if field_type == DECIMAL:
        return f"try_cast({raw} AS DOUBLE)"
    if field_type == BOOLEAN:
        return f"try_cast({raw} AS BOOLEAN)"
    if field_type == JSON:
        return f"CAST({raw} AS JSON)"
    return raw


def _validation_cases(ent: Entity, raw_name: Callable[[str], str], typed_name: Callable[[str], str],
                      computed: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(condition that marks a row bad, reason code, field) in the order they are checked.
    ``computed``: field -> SQL true when the inputs of its expression are there (a NULL result
    then means the expression could not compute it: invalid_expression, not missing)."""
    cases: list[tuple[str, str, str]] = []
    for name, inputs_present in (computed or {}).items():
        cases.append((f"({inputs_present}) AND {raw_name(name)} IS NULL", "invalid_expression", name))
    for f in ent.fields:
        raw, typed = raw_name(f.name), typed_name(f.name)
        present = f"({raw} IS NOT NULL AND {raw} <> '')" if f.type != JSON else f"({raw} IS NOT NULL)"
        if f.type == STRING and f.required:
            present = f"({raw} IS NOT NULL AND trim({raw}) <> '')"
        if f.required:
            cases.append((f"NOT {present}", "missing_required", f.name))
        if f.type in (TIMESTAMP, DATE, INTEGER, DECIMAL, BOOLEAN) and not (f.null_if_invalid and not f.required):
            reason = "invalid_timestamp" if f.type in (TIMESTAMP, DATE) else "invalid_type"
            cases.append((f"{present} AND {typed} IS NULL", reason, f.name))
        if f.type == TIMESTAMP:
            cases.append(
                (
                    f"{typed} IS NOT NULL AND ({typed} < {_EARLIEST_SQL} "
                    f"OR {typed} > now() + INTERVAL 1 DAY)",
                    "impossible_timestamp",
                    f.name,
                )
            )
        if f.values:
            allowed = ", ".join(_lit(v) for v in f.values)
            cases.append((f"{raw} NOT IN ({allowed})", "invalid_value", f.name))
    for condition, rule in ent.row_rules:
        reason, field_name = (part.strip() for part in rule.split(":", 1))
        landed = condition.format(**{f.name: raw_name(f.name) for f in ent.fields})
        cases.append((f"NOT ({landed})", reason, field_name))
    return cases


def _nulled_sql(ent: Entity, raw_name: Callable[[str], str], typed_name: Callable[[str], str]) -> str:
    """``<field> AS _nulled, <landed value> AS _nulled_value`` for the first optional field
    (``null_if_invalid``) whose landed value did not parse: the row loads with it NULL."""
    soft = [f for f in ent.fields if f.null_if_invalid and not f.required]
    if not soft:
        return "CAST(NULL AS VARCHAR) AS _nulled, CAST(NULL AS VARCHAR) AS _nulled_value"
    bad = [(f, f"({raw_name(f.name)} IS NOT NULL AND trim(CAST({raw_name(f.name)} AS VARCHAR)) <> '' "
               f"AND {typed_name(f.name)} IS NULL)") for f in soft]
    name = "CASE " + " ".join(f"WHEN {c} THEN {_lit(f.name)}" for f, c in bad) + " END"
    value = "CASE " + " ".join(f"WHEN {c} THEN CAST({raw_name(f.name)} AS VARCHAR)" for f, c in bad) + " END"
    return f"{name} AS _nulled, {value} AS _nulled_value"


def _reason_sql(cases: list[tuple[str, str, str]]) -> tuple[str, str]:
    """SQL for the index of the first failing case (NULL = good row), and the SQL that
    decodes an index into 'reason' and 'field' (evaluated for bad rows only)."""
    index = "CASE " + " ".join(f"WHEN {c} THEN {i}" for i, (c, _, _) in enumerate(cases, 1)) + " END"
    reasons = "[" + ", ".join(_lit(r) for _, r, _ in cases) + "]"
    fields = "[" + ", ".join(_lit(f) for _, _, f in cases) + "]"
    return index, f"{reasons}[_case] AS _reason, {fields}[_case] AS _field"


# --------------------------------------------------------------------------- reading line by line
# The line-by-line path reads the file in Python, splitting on "\n" only (a CRLF's "\r" is
# dropped with it), so that every line is accounted for: a line DuckDB's readers cannot take
# (too long, not UTF-8, a stray "\r", an unterminated quote) costs that line, never the file or
# its neighbours. Lines reach DuckDB as Arrow batches, so memory stays bounded by a batch.
BATCH_LINES = 20_000
BATCH_BYTES = 32 * 1024 * 1024
# A quoted CSV field may span at most this many lines: past it (or at the end of the file), the
# quote is taken as unterminated and its opening line alone is quarantined.
MAX_RECORD_LINES = 1_000
# Reasons the line-by-line reader gives before any parsing (checked before the contract's).
READER_REASONS = ("invalid_encoding", "malformed_csv_line")
_BOM = b"\xef\xbb\xbf"


@dataclass
class _Skipped:
    """Lines that are no row: the CSV header, blank lines, and the continuation lines of
    quoted CSV fields that span lines."""

    lines: int = 0


def _physical_lines(path: Path) -> Iterator[bytes]:
    """Every line without its "\\n" (a CRLF line keeps its "\\r"), read in large chunks."""
    with open(path, "rb") as f:
        rest = f.read(len(_BOM)).removeprefix(_BOM)
        while chunk := f.read(8 * 1024 * 1024):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest


def _decode(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _verbatim(line: bytes) -> str:
    """A line that is not UTF-8, as text: the bytes it could not decode spelled out (\\xff)."""
    return line.decode("utf-8", "backslashreplace")


def _jsonl_records(path: Path, skipped: _Skipped) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, reader's reason) for every line but blank ones."""
    for n, raw in enumerate(_physical_lines(path), 1):
        text = _decode(raw.removesuffix(b"\r"))
        if text is None:
            yield n, _verbatim(raw.removesuffix(b"\r")), "invalid_encoding"
        elif not text or text.isspace():
            skipped.lines += 1
        else:
            yield n, text, None


def _parse_csv_record(text: str, delimiter: str, n_cols: int) -> list[str] | None:
    if '"' not in text and "\r" not in text:  # nothing to unquote: a plain split is the same, and faster
        fields = text.split(delimiter)
    else:
        try:
            fields = next(csv.reader([text], delimiter=delimiter, strict=True))
        except csv.Error:
            return None
    return fields if len(fields) == n_cols else None


def _csv_records(path: Path, delimiter: str, n_cols: int, skipped: _Skipped) -> Iterator[tuple]:
    """(data row number, verbatim text, reader's reason, *fields) for every record after the
    header; blank lines are skipped. A record whose quote is still open at the end of its
    line takes the following lines while that makes it a whole record of the header's width;
    otherwise its first line alone is malformed and reading goes on at the next line."""
    lines: Iterator[bytes] = _physical_lines(path)
    next(lines, None)  # the header (read by _csv_header)
    skipped.lines += 1
    row, no_fields = 0, (None,) * n_cols
    while (raw := next(lines, None)) is not None:
        text = _decode(raw.removesuffix(b"\r"))
        if text is not None and (not text or text.isspace()):
            skipped.lines += 1
            continue
        row += 1
        if text is None:
            yield (row, _verbatim(raw.removesuffix(b"\r")), "invalid_encoding", *no_fields)
            continue
        fields = _parse_csv_record(text, delimiter, n_cols)
        if fields is None and text.count('"') % 2:  # a quote left open: a field over several lines?
            fields, record, ahead = _quoted_record(raw, lines, delimiter, n_cols)
            if fields is None:
                lines = chain(ahead, lines)  # given back: each is read as a line of its own
            else:
                text = record
                skipped.lines += len(ahead)
        if fields is None:
            yield (row, text, "malformed_csv_line", *no_fields)
        else:
            yield (row, text, None, *fields)


def _quoted_record(first: bytes, lines: Iterator[bytes], delimiter: str, n_cols: int
                   ) -> tuple[list[str] | None, str, list[bytes]]:
    """Read ahead until the quote opened in ``first`` closes: (fields, record text, lines read
    ahead). Fields are None when the joined lines are no record of the header's width."""
    ahead: list[bytes] = []
    quotes = first.count(b'"')
    for nxt in lines:
        ahead.append(nxt)
        quotes += nxt.count(b'"')
        if quotes % 2 == 0 or len(ahead) >= MAX_RECORD_LINES:
            break
    if quotes % 2:
        return None, "", ahead
    # line breaks inside the quotes are kept as they were (CRLF or LF), as DuckDB's reader does
    text = _decode(b"\n".join([first, *ahead]).removesuffix(b"\r"))
    fields = None if text is None else _parse_csv_record(text, delimiter, n_cols)
    return fields, text or "", ahead


def _arrow_batches(records: Iterator[tuple], names: list[str]) -> pa.RecordBatchReader:
    """Records (a row number, then text columns) as a stream of Arrow batches."""
    schema = pa.schema([(names[0], pa.int64())] + [(n, pa.string()) for n in names[1:]])

    def batch(rows: list[tuple]) -> pa.RecordBatch:
        return pa.record_batch([pa.array(col, f.type) for col, f in zip(zip(*rows), schema)], schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        rows: list[tuple] = []
        size = 0
        for rec in records:
            rows.append(rec)
            size += len(rec[1])
            if len(rows) >= BATCH_LINES or size >= BATCH_BYTES:
                yield batch(rows)
                rows, size = [], 0
        if rows:
            yield batch(rows)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _read_into(con, table: str, reader: pa.RecordBatchReader) -> None:
    con.register("_reader", reader)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _reader")
    finally:
        con.unregister("_reader")


# --------------------------------------------------------------------------- parsing
def _reader_cases() -> list[tuple[str, str, str]]:
    return [(f"_pre = {_lit(r)}", r, "") for r in READER_REASONS]


def _jsonl_checked_sql(ent: Entity, files: EntityFiles, path: Path | None) -> tuple[str, str]:
    """SQL for a JSON-lines file as rows (_row, _raw_record, _t_<field>..., _case), and the SQL
    that decodes _case into _reason/_field.

    Fast (``path`` given): DuckDB's JSON reader with the contract's columns declared;
    unparseable lines are skipped, which the caller detects by comparing row and line
    counts. Line by line (``path`` None): the lines of temp table _lines, parsed with
    ``from_json`` so that a broken one is kept verbatim. Both type and check the same way.
    """
    landed_key = {target: landed for landed, target in files.columns.items()}
    landed = {f.name: landed_key.get(f.name, f.name) for f in ent.fields}
    struct = {landed[f.name]: ("JSON" if f.type == JSON else "VARCHAR") for f in ent.fields}
    # the keys expressions read, each as its own text column _x<i>
    keys = sorted(files.read_columns())
    extra = {k: f"_x{i}" for i, k in enumerate(keys)}
    for k in keys:
        struct.setdefault(k, "VARCHAR")
    values, computed = _derived(ent, files, lambda k: extra[k], lambda n: f"_l_{n}")
    raw_name = lambda n: f"_v_{n}" if n in values else f"_l_{n}"  # noqa: E731
    typed_name = lambda n: f"_t_{n}"  # noqa: E731
    cases = (_reader_cases() + [("_bad_json", "malformed_json", "")]
             + _validation_cases(ent, raw_name, typed_name, computed))
    typed_cols = ", ".join(
        f"{_cast_expr(f.type, raw_name(f.name), files.formats.get(f.name))} AS _t_{f.name}"
        if f.type not in (STRING, JSON) else f"{raw_name(f.name)} AS _t_{f.name}"
        for f in ent.fields
    )
    case_index, decode = _reason_sql(cases)
    if path is None:
        unpack = ", ".join([f"j.{_q(landed[f.name])} AS _l_{f.name}" for f in ent.fields]
                           + [f"CAST(j.{_q(k)} AS VARCHAR) AS {x}" for k, x in extra.items()])
        parsed = f"""
            SELECT _row, _raw_record, _pre, j IS NULL AS _bad_json, {unpack}
            FROM (SELECT _row, line AS _raw_record, _pre,
                         CASE WHEN _pre IS NULL THEN try(from_json(line, {_lit(json.dumps(struct))})) END AS j
                  FROM _lines)"""
    else:
        columns = "{" + ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in struct.items()) + "}"
        unpack = ", ".join([f"{_q(landed[f.name])} AS _l_{f.name}" for f in ent.fields]
                           + [f"CAST({_q(k)} AS VARCHAR) AS {x}" for k, x in extra.items()])
        parsed = f"""
            SELECT row_number() OVER () AS _row, NULL::VARCHAR AS _raw_record, NULL::VARCHAR AS _pre,
                   false AS _bad_json, {unpack}
            FROM read_json({_lit(str(path))}, format='newline_delimited', columns={columns},
                           ignore_errors=true)"""
    rewrites = _spec_rewrites(ent, files)
    if rewrites:
        # the spec's derived values replace the landed ones before they are typed and checked
        # (all at once: each expression reads the values as landed)
        parsed = f"SELECT * REPLACE ({', '.join(f'{e} AS _l_{n}' for n, e in rewrites.items())}) FROM ({parsed})"
    computed_cols = "".join(f", {sql} AS _v_{name}" for name, sql in values.items())
    computed_cols += f", {_skip_sql(files, lambda k: extra[k])} AS _skip"
    sql = f"""
        WITH parsed AS (SELECT r.*{computed_cols} FROM ({parsed}) r),
        typed AS (SELECT *, {typed_cols} FROM parsed)
        SELECT _row, _raw_record, {', '.join(f'_t_{f.name}' for f in ent.fields)}, {case_index} AS _case,
               {_nulled_sql(ent, raw_name, typed_name)}, _skip FROM typed
    """
    return sql, decode


def _skip_sql(files: EntityFiles, column_sql: Callable[[str], str]) -> str:
    """SQL true for a row the entity's ``skip_when`` leaves out (false without one). A reader's
    bad line has no columns: the condition does not hold and the line is quarantined."""
    if not files.skip_when:
        return "false"
    return compile_condition(parse_expression(files.skip_when), column_sql)


def _spec_rewrites(ent: Entity, files: EntityFiles) -> dict[str, str]:
    """Contract field -> SQL over the landed ``_l_<field>`` values computing what is stored:
    web events as the Segment spec reads them (core.segment_spec, shared with any collector)."""
    if (ent.kind, ent.name) == ("web", "events"):
        return segment_spec.landed_sql(lambda n: f"_l_{n}", files.event_names)
    return {}


def _derived(ent: Entity, files: EntityFiles, column_sql: Callable[[str], str], plain: Callable[[str], str]
             ) -> tuple[dict[str, str], dict[str, str]]:
    """SQL (as text) of the fields the config computes rather than maps: ``expressions`` and a
    derived ``line_no``; and, per expression, SQL true when its inputs are all there.
    ``column_sql``: a landed column's text (raises FileRejected for one the file lacks);
    ``plain``: a field's mapped (not computed) text."""
    values: dict[str, str] = {}
    present: dict[str, str] = {}
    for target, text in files.expressions.items():
        node = parse_expression(text)
        values[target] = compile_expression(node, column_sql)
        inputs = [column_sql(c) for c in expression_columns(node)]
        present[target] = " AND ".join(f"({c} IS NOT NULL AND {c} <> '')" for c in inputs) or "false"
    if files.number_lines:
        txn = values.get("transaction_id", plain("transaction_id"))
        # file order within each receipt: an export that has only lines numbers nothing
        values["line_no"] = f"CAST(row_number() OVER (PARTITION BY {txn} ORDER BY r._row) AS VARCHAR)"
    return values, present


def _csv_checked_sql(ent: Entity, files: EntityFiles, header: list[str], source_sql: str,
                     lookups: list["_Lookup"] | None = None) -> tuple[str, str]:
    """SQL for CSV records (columns _row, _raw_record, _pre, c0..cN in header order) as rows
    (_row, _raw_record, _t_<field>..., _case, _newlines, _skip), and the SQL that decodes _case.
    ``_newlines``: the line breaks inside the row's quoted fields (lines it takes beyond one).
    ``lookups``: columns joined from other entities' files, read as columns after the header's."""
    lookups = lookups or []
    landed_width = len(header)
    if lookups:
        joined = "".join(
            f", l{i}.v AS c{landed_width + i}, (l{i}.k IS NULL AND nullif(r.c{lk.key_position}, '') IS NOT NULL) "
            f"AS _lk_miss_{i}, coalesce(l{i}.n, 0) > 1 AS _lk_amb_{i}" for i, lk in enumerate(lookups))
        joins = " ".join(f"LEFT JOIN {lk.table} l{i} ON l{i}.k = r.c{lk.key_position}" for i, lk in enumerate(lookups))
        source_sql = f"SELECT r.*{joined} FROM ({source_sql}) r {joins}"
        header = header + [lk.name for lk in lookups]
    to_contract = {landed: files.columns.get(landed, landed) for landed in header}
    column_of = {target: f"r.c{i}" for i, target in enumerate(to_contract[h] for h in header)}
    position = {h: i for i, h in enumerate(header)}

    def landed_column(name: str) -> str:
        if name not in position:
            raise FileRejected(f"an expression reads column '{name}', which the header lacks "
                               f"(the header has {len(header)} column(s))")
        return f"r.c{position[name]}"

    values, computed = _derived(ent, files, landed_column,
                                lambda n: column_of.get(n, "CAST(NULL AS VARCHAR)"))

    def raw_name(n: str) -> str:
        if n in values:
            return f"r._v_{n}"
        return column_of.get(n, "CAST(NULL AS VARCHAR)")

    typed_name = lambda n: f"_t_{n}"  # noqa: E731
    lookup_cases = [(f"r._lk_amb_{i}", "lookup_ambiguous", lk.name) for i, lk in enumerate(lookups)]
    lookup_cases += [(f"r._lk_miss_{i}", "lookup_no_match", lk.name)
                     for i, lk in enumerate(lookups) if lk.missing == "quarantine"]
    cases = _reader_cases() + lookup_cases + _validation_cases(ent, raw_name, typed_name, computed)
    typed_cols = ", ".join(
        f"{_cast_expr(f.type, raw_name(f.name), files.formats.get(f.name))} AS _t_{f.name}" for f in ent.fields
    )
    newlines = " + ".join(f"coalesce(length(r.c{i}) - length(replace(r.c{i}, chr(10), '')), 0)"
                          for i in range(landed_width))
    case_index, decode = _reason_sql(cases)
    # computed fields first, in a step of their own: the checks and casts read them like columns
    computed_cols = "".join(f", {sql} AS _v_{name}" for name, sql in values.items())
    computed_cols += f", {_skip_sql(files, landed_column)} AS _skip"
    sql = f"""
        WITH base AS (SELECT r.*{computed_cols} FROM ({source_sql}) r),
        typed AS (SELECT r.*, {typed_cols} FROM base r),
        checked AS (SELECT r.*, {case_index} AS _case FROM typed r)
        SELECT _row, CASE WHEN _case IS NOT NULL THEN _raw_record END AS _raw_record,
               {', '.join(f'_t_{f.name}' for f in ent.fields)}, _case, {newlines} AS _newlines,
               {_nulled_sql(ent, raw_name, typed_name)}, _skip
        FROM checked r
    """
    return sql, decode


def _insert_clean_jsonl(con, path: Path, ent: Entity, files: EntityFiles, lineage: str) -> int:
    """Fast path, inside the caller's transaction: insert the rows that parse and pass every
    check straight from DuckDB's JSON reader into the raw table; returns how many. The
    caller compares that with the file's line count and rolls back on any difference.

    ``row_number() OVER ()`` numbers the lines in file order; it makes this one scan
    single-threaded, so :func:`ingest` loads several files at once instead. (Numbering
    afterwards with an UPDATE instead cost more than the scan: DuckDB writes every updated
    row to its write-ahead log at commit.) Only used when every line became a row, so the
    row number is the line number.
    """
    sql, _ = _jsonl_checked_sql(ent, files, path)
    return _insert_checked(con, ent, sql, lineage)


def _insert_checked(con, ent: Entity, sql: str, lineage: str) -> int:
    """Insert the good rows of a checked query (``_jsonl_checked_sql``, ``_csv_checked_sql``)
    into the raw table; returns how many."""
    cols = ", ".join(_q(f.name) for f in ent.fields)
    typed = ", ".join(f"_t_{f.name}" for f in ent.fields)
    return con.execute(
        f"INSERT INTO raw.{ent.table} ({cols}, {', '.join(n for n, _ in LINEAGE_COLUMNS)}) "
        # (a row with a nulled field is left out: the slower paths record the field issue)
        f"SELECT {typed}, {lineage} FROM ({sql}) WHERE _case IS NULL AND _nulled IS NULL AND NOT _skip"
    ).fetchall()[0][0]


def _value_kind(cell: str) -> str | None:
    """What a header cell looks like if it is a value rather than a column name."""
    if "@" in cell:
        return "an email-like value"
    if sum(ch.isdigit() for ch in cell) >= 4:  # ids, phone numbers, dates, postcodes
        return "an identifier-like value"
    return None


def _csv_header(path: Path, files: EntityFiles) -> list[str]:
    """The header's column names. Messages name columns by position: a file without a header
    has a person's data in its first line."""
    with open(path, "rb") as f:
        first = f.readline().removeprefix(_BOM).rstrip(b"\r\n")
    text = _decode(first)
    if text is None:
        raise FileRejected("the header line is not valid UTF-8")
    try:
        header = next(csv.reader([text], delimiter=files.delimiter, strict=True), [])
    except csv.Error:
        raise FileRejected("the header line cannot be read as CSV") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise FileRejected("no header line")
    first_at: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        if name in first_at:
            raise FileRejected(f"the header names a column twice: columns {first_at[name]} and {i} have the same name")
        first_at[name] = i
    return header


def _check_header(header: list[str], ent: Entity, files: EntityFiles) -> list[str]:
    """Rejects a header without the contract's required columns; returns notes for the load's
    message (columns outside the contract, which are ignored)."""
    present = {files.columns.get(h, h) for h in [*header, *files.lookups]} | set(files.expressions)
    if files.number_lines:
        present.add("line_no")
    missing = [f.name for f in ent.fields if f.required and f.name not in present]
    if missing:
        hint = " (after the config's column mapping)" if files.columns else ""
        message = f"required column(s) missing{hint}: {', '.join(missing)}"
        looks_like = next(((i, k) for i, k in enumerate(map(_value_kind, header), 1) if k), None)
        if looks_like:
            raise FileRejected(
                f"the first line does not look like a header: column {looks_like[0]} is {looks_like[1]}; {message}"
            )
        raise FileRejected(f"{message} (the header has {len(header)} column(s))")
    read = files.read_columns() | {lk.key for lk in files.lookups.values()}
    extra = [h for h in header if files.columns.get(h, h) not in set(ent.field_names) and h not in read]
    return [f"ignored column(s) not in the contract: {', '.join(extra)}"] if extra else []


# --------------------------------------------------------------------------- lookups
@dataclass
class _Lookup:
    """A lookup made ready for one file: temp table ``table`` (k, v, n: the key, its value, how
    many distinct values the key has) and the position of the key in the file's header."""

    name: str
    table: str
    key_position: int
    missing: str


def _prepare_lookups(con, source: Source, files: EntityFiles, landing: Path, header: list[str]) -> list[_Lookup]:
    """Read each lookup's other file(s) as landed - every file its entity's glob matches, not
    the raw table - so the two files may land and load in any order, in the same run or not.
    The value is taken when this file loads: a later change to the other file does not remap
    rows already loaded. Lines of the other file its reader cannot take are not in the lookup
    (their own load quarantines them)."""
    out: list[_Lookup] = []
    for i, (name, lk) in enumerate(files.lookups.items()):
        where = f"lookup '{name}'"
        if name in header:
            raise FileRejected(f"{where}: the header already has a column '{name}'; name the lookup otherwise")
        if lk.key not in header:
            raise FileRejected(f"{where} reads column '{lk.key}', which the header lacks "
                               f"(the header has {len(header)} column(s))")
        other = source.entities[lk.entity]
        paths = sorted(str(p) for p in landing.glob(other.path) if p.is_file())
        if not paths:
            raise FileRejected(f"{where}: no file of {lk.entity} (path '{other.path}') has landed to look up in")
        match = lk.match or lk.key
        reader = (f"read_csv([{', '.join(_lit(p) for p in paths)}], header=true, all_varchar=true, "
                  f"delim={_lit(other.delimiter)}, quote='\"', escape='\"', union_by_name=true, ignore_errors=true)")
        try:
            have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
            lacking = [c for c in (match, lk.column) if c not in have]
            if lacking:
                raise FileRejected(f"{where}: the {lk.entity} file(s) lack column(s) {', '.join(lacking)}")
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _lookup_{i} AS SELECT {_q(match)} AS k, min({_q(lk.column)}) AS v, "
                f"count(DISTINCT {_q(lk.column)}) AS n FROM {reader} "
                f"WHERE nullif({_q(match)}, '') IS NOT NULL GROUP BY 1")
        except duckdb.Error as e:
            raise FileRejected(f"{where}: cannot read the {lk.entity} file(s) as CSV: {_without_values(e)}") from None
        out.append(_Lookup(name, f"_lookup_{i}", header.index(lk.key), lk.missing))
    return out


# --------------------------------------------------------------------------- staging
@dataclass
class _Staged:
    """A file parsed and checked, not yet applied: into temp table _landed, or (the fast JSONL
    path) already inserted into the raw table in a transaction left open."""

    in_transaction: bool = False
    rows: int = 0  # rows read, good and bad (rows of erased persons not included)
    bad: int = 0
    erased: int = 0
    skipped: int = 0  # lines that are no row (see _Skipped)
    rows_skipped: int = 0  # rows the entity's skip_when left out
    notes: list[str] = field(default_factory=list)
    rejection: str | None = None


def _without_values(e: Exception) -> str:
    """A reader error's first line with quoted text taken out (it may quote the data)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(e).splitlines()[0])


def _stage(con, path: Path, ent: Entity, files: EntityFiles, size: int, hashing: Future, load_id: str,
           lineage: str, source_name: str, erased_filter: bool, lookups: Callable[[list[str]], list["_Lookup"]]
           ) -> _Staged:
    """Parse and check a file: the fast path where it serves, else line by line."""
    fmt = files.format or ent.format
    staged = _Staged()
    try:
        if size == 0:
            raise FileRejected("the file is empty")
        if fmt == "jsonl":
            if files.rows == "records" and _stage_jsonl_fast(con, path, ent, files, hashing, load_id, lineage, erased_filter, staged):
                return staged
            _stage_jsonl_by_line(con, path, ent, files, staged)
        elif _stage_csv(con, path, ent, files, hashing, staged, lookups, load_id, lineage, erased_filter):
            return staged
    except FileRejected as e:
        staged.rejection = str(e)
        return staged
    except duckdb.Error as e:
        staged.rejection = f"cannot read as {fmt}: {_without_values(e)}"
        return staged
    if files.skip_when:
        staged.rows_skipped = con.execute("SELECT count(*) FROM _landed WHERE _skip").fetchall()[0][0]
        con.execute("DELETE FROM _landed WHERE _skip")
        if staged.rows_skipped:
            staged.notes.append(f"{staged.rows_skipped:,} row(s) skipped by skip_when")
    if files.rows == "lines":
        _fold_lines(con, ent, staged)
    _mark_erased(con, ent, source_name, erased_filter)
    staged.rows, staged.bad, staged.erased = con.execute(
        "SELECT count(*) FILTER (WHERE NOT _erased), count(*) FILTER (WHERE _reason IS NOT NULL AND NOT _erased), "
        "count(*) FILTER (WHERE _erased) FROM _landed"
    ).fetchall()[0]
    return staged


def _stage_jsonl_fast(con, path: Path, ent: Entity, files: EntityFiles, hashing: Future, load_id: str,
                      lineage: str, erased_filter: bool, staged: _Staged) -> bool:
    """Optimistic: a clean file goes straight from DuckDB's JSON reader into the raw table, in a
    transaction left open. If any line failed to parse or any row broke the contract, fewer
    rows than lines arrive: roll back and return False (the caller goes line by line)."""
    return _insert_if_clean(con, lambda: _insert_clean_jsonl(con, path, ent, files, lineage), hashing, 0, ent,
                            load_id, erased_filter, staged)


def _insert_if_clean(con, insert: Callable[[], int], hashing: Future, header_lines: int, ent: Entity, load_id: str,
                     erased_filter: bool, staged: _Staged) -> bool:
    """Both fast paths: in a transaction left open, ``insert`` the rows that pass every check
    straight into the raw table; keep them only when they account for every line of the file
    but its header (none bad, none skipped, no blank line, no line break inside a field), else
    roll back and return False."""
    con.execute("BEGIN TRANSACTION")
    try:
        rows = insert()
        if rows == 0 or rows + header_lines != hashing.result()[1]:
            con.execute("ROLLBACK")
            return False
        staged.erased = _delete_erased(con, ent, load_id) if erased_filter else 0
    except duckdb.Error:
        con.execute("ROLLBACK")
        return False
    except BaseException:
        con.execute("ROLLBACK")
        raise
    staged.rows, staged.skipped, staged.in_transaction = rows - staged.erased, header_lines, True
    return True


def _stage_jsonl_by_line(con, path: Path, ent: Entity, files: EntityFiles, staged: _Staged) -> None:
    """Every line into temp table _landed, bad ones kept verbatim with their reason."""
    skipped = _Skipped()
    _read_into(con, "_lines", _arrow_batches(_jsonl_records(path, skipped), ["_row", "line", "_pre"]))
    sql, decode = _jsonl_checked_sql(ent, files, None)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _landed AS
        -- keep the verbatim line only where it is needed: for the quarantine
        SELECT * REPLACE (CASE WHEN _case IS NOT NULL THEN _raw_record END AS _raw_record) FROM ({sql})
        """
    )
    con.execute("DROP TABLE _lines")
    _decode_reasons(con, decode)
    staged.skipped = skipped.lines


def _stage_csv(con, path: Path, ent: Entity, files: EntityFiles, hashing: Future, staged: _Staged,
               lookups: Callable[[list[str]], list["_Lookup"]], load_id: str, lineage: str,
               erased_filter: bool) -> bool:
    """A CSV: straight into the raw table when every line is a good row (True: in a transaction
    left open, as the JSONL fast path); else into temp table _landed: DuckDB's reader when the
    file is clean (every row good, every line accounted for: quoted fields over several lines,
    fields nulled), else line by line, so that each bad line is kept verbatim."""
    header = _csv_header(path, files)
    staged.notes = _check_header(header, ent, files)
    joined = lookups(header)
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header))) + "}"
    fast = f"""
        SELECT row_number() OVER () AS _row, NULL::VARCHAR AS _raw_record, NULL::VARCHAR AS _pre, *
        FROM read_csv({_lit(str(path))}, header=true, delim={_lit(files.delimiter)}, quote='"', escape='"',
                      auto_detect=false, columns={columns}, strict_mode=true)"""
    sql, decode = _csv_checked_sql(ent, files, header, fast, joined)
    if files.rows == "records" and not files.skip_when and _insert_if_clean(
            con, lambda: _insert_checked(con, ent, sql, lineage), hashing, 1, ent, load_id, erased_filter, staged):
        return True
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _landed AS {sql}")
        rows, bad, newlines = con.execute("SELECT count(*), count(_case), sum(_newlines) FROM _landed").fetchall()[0]
        # (blank lines, which DuckDB's reader skips without a word, also send a file line by line)
        clean = bad == 0 and rows + 1 + (newlines or 0) == hashing.result()[1]
    except duckdb.Error:
        clean = False
    if clean:
        staged.skipped = 1 + (newlines or 0)
    else:
        skipped = _Skipped()
        names = ["_row", "_raw_record", "_pre"] + [f"c{i}" for i in range(len(header))]
        _read_into(con, "_records", _arrow_batches(_csv_records(path, files.delimiter, len(header), skipped), names))
        # (an empty field is NULL, as DuckDB's reader has it)
        nulled = ", ".join(f"nullif(c{i}, '') AS c{i}" for i in range(len(header)))
        sql, decode = _csv_checked_sql(ent, files, header, f"SELECT _row, _raw_record, _pre, {nulled} FROM _records",
                                       joined)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _landed AS {sql}")
        con.execute("DROP TABLE _records")
        staged.skipped = skipped.lines
    _decode_reasons(con, decode)
    return False


def _fold_lines(con, ent: Entity, staged: _Staged) -> None:
    """``rows: lines``: a file with one row per receipt line becomes one record per key. Good
    lines with the same key fold into one (decimal fields summed - a receipt's total is the sum
    of its lines - the rest from its first line); a line without the key (a guest's line, for
    the loyalty members) is no record of this entity. Both count as skipped lines, so the file's
    lines still add up; a bad line is quarantined on its own and the record is made of the rest,
    as its line items are."""
    key = ent.key[0]
    keyless = con.execute(
        "SELECT count(*) FROM _landed WHERE _reason = 'missing_required' AND _field = ?", [key]).fetchall()[0][0]
    con.execute("DELETE FROM _landed WHERE _reason = 'missing_required' AND _field = ?", [key])
    folded = ", ".join(
        f"sum(_t_{f.name}) AS _t_{f.name}" if f.type == DECIMAL else f"arg_min(_t_{f.name}, _row) AS _t_{f.name}"
        for f in ent.fields if f.name != key
    )
    good = con.execute("SELECT count(*) FROM _landed WHERE _reason IS NULL").fetchall()[0][0]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _landed AS
        SELECT * FROM _landed WHERE _reason IS NOT NULL
        UNION ALL BY NAME
        SELECT min(_row) AS _row, _t_{key}, {folded} FROM _landed WHERE _reason IS NULL GROUP BY _t_{key}""")
    records = con.execute("SELECT count(*) FROM _landed WHERE _reason IS NULL").fetchall()[0][0]
    staged.skipped += keyless + good - records
    if keyless or good - records:
        staged.notes.append(f"{good:,} line(s) made {records:,} record(s)"
                            + (f"; {keyless:,} line(s) without {key} skipped" if keyless else ""))


def _decode_reasons(con, decode: str) -> None:
    """Add _reason/_field to _landed, decoded from _case for the (few) bad rows."""
    con.execute("ALTER TABLE _landed ADD COLUMN _reason VARCHAR")
    con.execute("ALTER TABLE _landed ADD COLUMN _field VARCHAR")
    reason, field_ = decode.split(" AS _reason, ")
    field_ = field_.removesuffix(" AS _field")
    con.execute(f"UPDATE _landed SET _reason = {reason}, _field = {field_} WHERE _case IS NOT NULL")


def _mark_erased(con, ent: Entity, source_name: str, erased_filter: bool) -> None:
    """Flag rows of _landed that carry an erased identifier: by their fields, and for bad rows
    also by the identifiers found in the verbatim line (a malformed line has no fields)."""
    con.execute("ALTER TABLE _landed ADD COLUMN _erased BOOLEAN DEFAULT false")
    if not erased_filter:
        return
    by_fields = row_erased_sql(ent.table, naming=lambda f: f"_t_{f}", source_expr=_lit(source_name))
    by_text = text_erased_sql("_raw_record", _lit(source_name))
    cond = f"({by_fields}) OR (_reason IS NOT NULL AND {by_text})" if by_fields else f"_reason IS NOT NULL AND {by_text}"
    con.execute(f"UPDATE _landed SET _erased = true WHERE {cond}")


def _delete_erased(con, ent: Entity, load_id: str) -> int:
    """Fast path: remove the just-inserted rows of erased persons (same transaction)."""
    cond = row_erased_sql(ent.table)
    if cond is None:
        return 0
    return con.execute(f"DELETE FROM raw.{ent.table} WHERE _load_id = ? AND {cond}", [load_id]).fetchall()[0][0]


# --------------------------------------------------------------------------- validating
def _validate(con, staged: _Staged, lines: int, file: str, max_bad_row_rate: float) -> None:
    """Decide whether the whole file must be rejected: its lines do not add up (a loader
    fault, never let pass), it has no rows, or too many bad ones."""
    if staged.rejection is not None:
        return
    if staged.rows + staged.erased + staged.rows_skipped + staged.skipped != lines:
        staged.rejection = (
            f"the counts do not add up for {file}: {lines} line(s) in the file, but {staged.rows} row(s) read + "
            f"{staged.erased} of erased persons + {staged.rows_skipped} skipped by skip_when + "
            f"{staged.skipped} header, blank or continuation line(s); "
            "nothing of it is loaded. This is a fault of the loader: please report it."
        )
    elif not (staged.rows == 0 and (staged.erased or staged.rows_skipped)):  # (only rows of erased persons or
        # skipped ones: loaded, with nothing in it)
        staged.rejection = _batch_rejection(con, staged.rows, staged.bad, max_bad_row_rate)


def _batch_rejection(con, total: int, bad: int, max_bad_row_rate: float) -> str | None:
    """Why the whole file must be rejected, or None."""
    return rejection_for(total, bad, max_bad_row_rate, lambda: con.execute(
        "SELECT _reason, _field, count(*) n, min(_row) FROM _landed WHERE _reason IS NOT NULL "
        "GROUP BY ALL ORDER BY n DESC LIMIT 3"
    ).fetchall())


def rejection_for(total: int, bad: int, max_bad_row_rate: float,
                  top_reasons: Callable[[], list[tuple[str, str, int, int]]]) -> str | None:
    """Why a file of ``total`` rows, ``bad`` of them quarantined, must be rejected whole, or None.
    ``top_reasons``: the three commonest (reason, field, rows, first row), asked only when needed.
    (Shared by both engines' loaders: one rule, one message.)"""
    if total == 0:
        return "the file has no rows"
    if bad / total <= max_bad_row_rate:
        return None
    top = top_reasons()
    detail = "; ".join(
        f"{r} in field '{f}' ({n} rows, first at row {row})" if f else f"{r} ({n} rows, first at row {row})"
        for r, f, n, row in top
    )
    hint = ""
    if any(r == "impossible_timestamp" for r, *_ in top):
        hint = ("; timestamps before ingestion.earliest_date (or over a day after the load) are impossible: "
                "set ingestion.earliest_date earlier to load older history")
    return (
        f"{bad} of {total} rows break the contract ({bad / total:.1%}, over the "
        f"{max_bad_row_rate:.1%} bound in ingestion.max_bad_row_rate): {detail}{hint}"
    )


# --------------------------------------------------------------------------- claiming and committing
@dataclass
class _Known:
    checksum: str
    size_bytes: int
    mtime_ns: int
    status: str


def _manifest(con, source: str, table: str) -> tuple[dict[str, _Known], set[str]]:
    """Files this source+table has seen (name -> last state) and checksums already applied."""
    rows = con.execute(
        """
        SELECT file, checksum, size_bytes, mtime_ns, status FROM raw.loads
        WHERE source = ? AND table_name = ?
        QUALIFY row_number() OVER (PARTITION BY file ORDER BY finished_at DESC) = 1
        """,
        [source, table],
    ).fetchall()
    by_name = {r[0]: _Known(r[1], r[2], r[3], r[4]) for r in rows}
    applied = {
        r[0]
        for r in con.execute(
            "SELECT checksum FROM raw.loads WHERE source = ? AND table_name = ? AND status = 'loaded'",
            [source, table],
        ).fetchall()
    }
    return by_name, applied


def _claim(prior: _Known | None, checksum: str, applied: set[str], rejection: str | None,
           claim_lock: threading.Lock | None) -> tuple[str, str]:
    """The file's outcome (status, message). LOADED claims the content: a copy loading
    alongside is then a duplicate. (If the load then fails, the exception ends the whole
    ingest, and with it ``applied``.)"""
    with claim_lock or nullcontext():
        if prior and prior.checksum == checksum and prior.status == LOADED:
            return UNCHANGED, ""  # touched but identical
        if checksum in applied:
            return DUPLICATE, "same content as a file already loaded; skipped"
        if prior and prior.status in (LOADED, CHANGED):
            return CHANGED, ("a file with this name was loaded before with different content; not loaded. "
                             "Land corrections under a new file name to apply them.")
        if rejection is not None:
            return REJECTED, rejection  # (tried again each run: the fix may have been to the config)
        applied.add(checksum)
        return LOADED, ""


def _commit(con, res: FileResult, staged: _Staged, ent: Entity, lineage: str, stat, started: datetime) -> None:
    """Apply a claimed file: its rows, its bad rows to the quarantine and its manifest row, in
    one transaction."""
    res.rows_loaded, res.rows_quarantined, res.rows_erased = staged.rows - staged.bad, staged.bad, staged.erased
    res.lines_skipped, res.rows_skipped = staged.skipped, staged.rows_skipped
    res.message = "; ".join(([f"{staged.bad} row(s) quarantined"] if staged.bad else [])
                            + ([f"{staged.erased} row(s) of erased persons dropped"] if staged.erased else [])
                            + staged.notes)
    if staged.in_transaction:  # the fast path: rows already inserted
        try:
            _profile(con, ent, res)
            _record(con, res, stat, started)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            staged.in_transaction = False
        return
    cols = ", ".join(_q(f.name) for f in ent.fields)
    typed = ", ".join(f"_t_{f.name}" for f in ent.fields)
    with transaction(con):
        con.execute(
            f"INSERT INTO raw.{ent.table} ({cols}, {', '.join(n for n, _ in LINEAGE_COLUMNS)}) "
            f"SELECT {typed}, {lineage} FROM _landed WHERE _reason IS NULL AND NOT _erased"
        )
        con.execute(
            f"INSERT INTO raw.quarantine SELECT {_lit(res.load_id)}, {_lit(res.source)}, {_lit(res.file)}, "
            f"_row, {_lit(ent.table)}, _reason, _field, _raw_record, now() FROM _landed "
            f"WHERE _reason IS NOT NULL AND NOT _erased ORDER BY _row"
        )
        # field-level issues: the row was loaded with the field NULL; the bad value alone is kept
        con.execute(
            f"INSERT INTO raw.quarantine SELECT {_lit(res.load_id)}, {_lit(res.source)}, {_lit(res.file)}, "
            f"_row, {_lit(ent.table)}, 'field_nulled:invalid_value', _nulled, _nulled_value, now() FROM _landed "
            f"WHERE _reason IS NULL AND NOT _erased AND _nulled IS NOT NULL ORDER BY _row"
        )
        _profile(con, ent, res)
        _record(con, res, stat, started)


def _record(con, res: FileResult, stat, started: datetime) -> None:
    con.execute(
        "INSERT INTO raw.loads (load_id, source, table_name, file, checksum, size_bytes, mtime_ns, status, "
        "rows_loaded, rows_quarantined, message, started_at, finished_at, rows_erased, lines, lines_skipped, "
        "days_covered, rows_skipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?, ?, ?, ?, ?)",
        [
            res.load_id, res.source, res.table, res.file, res.checksum, stat.st_size, stat.st_mtime_ns,
            res.status, res.rows_loaded, res.rows_quarantined, res.message, started, res.rows_erased,
            res.lines, res.lines_skipped, res.days_covered, res.rows_skipped,
        ],
    )


def profile_time_field(ent: Entity) -> str | None:
    """The timestamp whose span measures how many days a load covers: the first required
    one, else the first one; None for an entity without (the catalog)."""
    stamps = [f for f in ent.fields if f.type == TIMESTAMP]
    return next((f.name for f in stamps if f.required), stamps[0].name if stamps else None)


def _profile(con, ent: Entity, res: FileResult) -> None:
    """Record the committed rows' shape (same transaction): per field how many rows have a
    value and how many hold its most common value (the value itself is never kept: it may be
    personal), and the days the rows' timestamps span. The gate compares each load with the
    earlier loads of its source: a column suddenly empty, one value in every row, half the rows
    missing. Measured here because the rows were just written; grouping sets count every
    field's values in one pass."""
    # Top values are counted for what identifies a person and for enumerations, where one value
    # in every row is a broken export; not for keys, timestamps, amounts or JSON documents,
    # which differ per row and cost the most to count
    grouped = [f.name for f in ent.fields if f.type != JSON and (f.pii or f.values)]
    counted = [f.name for f in ent.fields if f.name not in grouped]
    ts = profile_time_field(ent)
    n = len(grouped)

    def single(i: int) -> int:  # GROUPING() of the set holding only grouped[i]: every other bit set
        return 2 ** n - 1 - 2 ** (n - 1 - i)

    columns = ", ".join(_q(c) for c in grouped)
    sets = ", ".join(f"({_q(c)})" for c in grouped)
    # The load's rows carry the transaction's start time (this transaction's, and constant in it)
    # as _loaded_at: a filter on it skips the row groups of every other load unread (a load id
    # has no min/max that tells loads apart), so profiling a load costs its own rows, not the table's.
    this_load = "_loaded_at = ? AND _load_id = ?"
    params = [con.execute("SELECT now()").fetchall()[0][0], res.load_id]
    inner = (f"SELECT GROUPING({columns}) AS _g, {columns}, count(*) AS _n FROM raw.{ent.table} "
             f"WHERE {this_load} GROUP BY GROUPING SETS ({sets})")
    # in the rows of one grouping set every other column is NULL: a non-NULL column is its value
    filled = " OR ".join(f"{_q(c)} IS NOT NULL" for c in grouped)
    counts = dict((g, (total, top)) for g, total, top in con.execute(
        f"SELECT _g, sum(_n), max(_n) FROM ({inner}) WHERE {filled} GROUP BY _g", params).fetchall()
    ) if grouped else {}
    span = f"greatest(1, date_diff('second', min({_q(ts)}), max({_q(ts)})) / 86400.0)" if ts else "NULL::DOUBLE"
    whole = con.execute(f"SELECT {span}{''.join(f', count({_q(c)})' for c in counted)} FROM raw.{ent.table} "
                        f"WHERE {this_load}", params).fetchall()[0]
    res.days_covered = whole[0]
    profile = [[res.load_id, c, int(counts.get(single(i), (0, None))[0]), counts.get(single(i), (0, None))[1]]
               for i, c in enumerate(grouped)]
    profile += [[res.load_id, c, int(whole[1 + j]), None] for j, c in enumerate(counted)]
    con.execute("INSERT INTO raw.load_profiles SELECT ?, unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::BIGINT[])",
                [res.load_id, *([r[i] for r in profile] for i in (1, 2, 3))])  # (one statement: executemany costs per row)


# --------------------------------------------------------------------------- loading
def load_file(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    ent: Entity,
    files: EntityFiles,
    path: Path,
    rel_name: str,
    max_bad_row_rate: float,
    known: dict[str, _Known] | None = None,
    applied: set[str] | None = None,
    erased_filter: bool = False,
    claim_lock: threading.Lock | None = None,
    earliest: date | None = None,
) -> FileResult:
    """Load one landed file: stage (parse and check), validate, claim, commit. Returns what
    happened; never raises for bad data.
    ``erased_filter``: drop rows of erased persons (needs ``core.identifiers.install`` and the
    ``pv_erased`` temp table on ``con``; :func:`ingest` sets both up).
    ``claim_lock``: held while this file's content is checked against, and added to,
    ``applied``, when several files load at once (two copies of one file landed together
    must still load once).
    ``earliest``: ingestion.earliest_date (None: the default, 2000-01-01)."""
    t0 = time.perf_counter()
    if earliest is not None:
        con.execute(f"SET VARIABLE tessera_earliest = TIMESTAMPTZ '{earliest.isoformat()}'")
    started = datetime.now(timezone.utc)
    if known is None or applied is None:
        known, applied = _manifest(con, source.name, ent.table)
    res = FileResult(source.name, ent.table, rel_name, status=LOADED)
    stat = path.stat()
    prior = known.get(rel_name)
    if prior and prior.status == LOADED and prior.size_bytes == stat.st_size and prior.mtime_ns == stat.st_mtime_ns:
        res.status = UNCHANGED  # same name, size and mtime as a loaded file: not even read
        return res
    res.load_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    lineage = f"{_lit(source.name)}, {_lit(rel_name)}, _row, {_lit(res.load_id)}, now()"
    staged = None
    try:
        # Hash in a thread while DuckDB parses (it releases the GIL): the checksum is needed
        # only to decide, before anything is committed, whether this content is new.
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing = pool.submit(checksum_and_lines, path)
            landing = path.parents[len(Path(rel_name).parts) - 1]
            staged = _stage(con, path, ent, files, stat.st_size, hashing, res.load_id, lineage,
                            source.name, erased_filter, lambda header: _prepare_lookups(con, source, files, landing, header))
            res.checksum, res.lines = hashing.result()
        _validate(con, staged, res.lines, rel_name, max_bad_row_rate)
        res.status, res.message = _claim(prior, res.checksum, applied, staged.rejection, claim_lock)
        if res.status == LOADED:
            _commit(con, res, staged, ent, lineage, stat, started)
        else:
            if staged.in_transaction:
                con.execute("ROLLBACK")
                staged.in_transaction = False
            if res.status == UNCHANGED:
                res.load_id = None
            else:
                _record(con, res, stat, started)
    finally:
        if staged is not None and staged.in_transaction:
            con.execute("ROLLBACK")
        con.execute("DROP TABLE IF EXISTS _landed")
        for i in range(len(files.lookups)):
            con.execute(f"DROP TABLE IF EXISTS _lookup_{i}")
    res.seconds = time.perf_counter() - t0
    return res


def _describe(res: FileResult) -> str:
    if res.status == LOADED:
        extra = f", {res.rows_quarantined:,} quarantined" if res.rows_quarantined else ""
        extra += f", {res.rows_erased:,} of erased persons dropped" if res.rows_erased else ""
        extra += f", {res.rows_skipped:,} skipped by skip_when" if res.rows_skipped else ""
        notes = "".join(f" — {m}" for m in res.message.split("; ") if m.startswith("ignored"))
        return f"[{res.source}] {res.file}: loaded {res.rows_loaded:,} rows{extra} ({res.seconds:.1f}s){notes}"
    return f"[{res.source}] {res.file}: {res.status.upper()} — {res.message}"


def landed_files(config: Config, source: Source, entity_name: str) -> list[tuple[Path, str]]:
    """The files matching a source entity's glob, as (absolute path, name relative to landing)."""
    landing = config.landing_dir
    pattern = source.entities[entity_name].path
    found = sorted(p for p in landing.glob(pattern) if p.is_file())
    return [(p, p.relative_to(landing).as_posix()) for p in found]


def unmatched_files(config: Config) -> list[str]:
    """Files in the landing folder that no source's path glob matches (a disabled source's
    included), relative to the landing folder: they are never loaded, so they are reported
    (`cdp status`, the run summary). Hidden files and folders (an upload under way) are left out."""
    landing = config.landing_dir
    if not landing.is_dir():
        return []
    matched = {p for source in config.sources for files in source.entities.values() for p in landing.glob(files.path)}
    stray = (p.relative_to(landing) for p in landing.rglob("*") if p.is_file() and p not in matched)
    return sorted(rel.as_posix() for rel in stray if not any(part.startswith(".") for part in rel.parts))


def ingest(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    tables: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Load every new landed file of every enabled source (or only the given raw tables).

    Files load side by side, as many as DuckDB has threads, each on its own cursor and in
    its own transaction: a clean JSON-lines file is read by a single-threaded scan (it
    numbers the lines), so parallelism comes from loading several files at once.
    """
    wanted = set(tables) if tables is not None else None
    ensure_raw_schema(con)
    erased_filter = prepare_erased_filter(config, con)
    workers = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    claim_lock = threading.Lock()
    report = IngestReport()

    def load_one(source: Source, ent: Entity, files: EntityFiles, path: Path, rel: str,
                 known: dict[str, _Known], applied: set[str]) -> FileResult:
        cur = con.cursor()
        try:
            cur.execute("SET TimeZone = 'UTC'")
            if erased_filter:
                prepare_erased_filter(config, cur)
            return load_file(cur, source, ent, files, path, rel, config.ingestion.max_bad_row_rate,
                             known, applied, erased_filter=erased_filter, claim_lock=claim_lock,
                             earliest=config.ingestion.earliest_date)
        finally:
            cur.close()

    # One DuckDB thread per query: queries side by side on every core beat every query
    # fighting for all of them (measured: 19 s against 25 s for 8 files on 2 cores).
    con.execute("SET threads = 1")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            loads = []
            for source in config.enabled_sources():
                for entity_name, files in source.entities.items():
                    ent = contract_entity(source.kind, entity_name)
                    if wanted is not None and ent.table not in wanted:
                        continue
                    known, applied = _manifest(con, source.name, ent.table)
                    loads += [pool.submit(load_one, source, ent, files, path, rel, known, applied)
                              for path, rel in landed_files(config, source, entity_name)]
            try:
                for load in loads:  # reported in landing order
                    res = load.result()
                    report.files.append(res)
                    if progress and res.status != UNCHANGED:
                        progress(_describe(res))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # loads under way finish or roll back
                raise
    finally:
        con.execute(f"SET threads = {workers}")
    return report


def prepare_erased_filter(config: Config, con: duckdb.DuckDBPyConnection) -> bool:
    """True when persons have been erased: the hashing macros and ``pv_erased`` are then set up
    on ``con``. Raises ``core.salt.SaltMissing`` when there are erased hashes but no salt
    (loading without the filter would bring erased persons back)."""
    if erased_count(con) == 0:
        return False
    install_hashing(con, load_salt(config))
    load_erased(con)
    return True
