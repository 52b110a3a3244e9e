"""Run the compiled segments against the warehouse and write the `segments` schema:

- ``segments.declarative_membership(segment, person_id, as_of)``: current members;
- ``segments.definitions(segment, description, definition, as_of)``: what each segment means
  (``definition`` is its `where` as JSON), for the segment catalog.

Both are replaced in one transaction, so a failed evaluation leaves the previous run's tables.
dbt unions the membership into ``segment_membership`` (with since-when and history).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from core.warehouse import fetch_all, fetch_value, table_exists, transaction
from segments.compiler import CompiledSegment, compile_segment
from segments.model import AllOf, AnyOf, NotOf, SegmentFile, SegmentFileError, load_segments
from segments.vocabulary import TRAIT_TABLES, TRAITS

log = logging.getLogger("tessera.segments")

SCHEMA = "segments"


@dataclass
class SegmentResult:
    name: str
    members: int


def run_as_of(con: duckdb.DuckDBPyConnection, default: datetime | None = None) -> datetime:
    """The as_of the marts were built with: windows are relative to the run's as_of. `default`
    (the config's) when the marts hold nobody to read it from."""
    if not table_exists(con, "marts", "customer_traits"):
        raise RuntimeError("marts.customer_traits does not exist yet; build the marts first (`cdp run --only marts`)")
    value = fetch_value(con, "SELECT max(as_of) FROM marts.customer_traits")
    if value is None:
        if default is None:
            raise RuntimeError("marts.customer_traits is empty, so the run's as_of is unknown; build the marts first")
        return default
    return value


def _columns(con, schema: str, table: str) -> set[str]:
    return {r[0] for r in fetch_all(
        con, "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
        [schema, table])}


def resolve_trait_tables(con: duckdb.DuckDBPyConnection, segment) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """For each trait table the segment uses, the first candidate that exists and holds every
    column it needs; and the problems when there is none."""
    found, problems = {}, []
    needed: dict[str, set[str]] = {}
    for trait in _traits_used(segment):
        needed.setdefault(TRAITS[trait].table, set()).add(trait)
    needed.setdefault("customer_traits", set())
    for key, columns in sorted(needed.items()):
        for schema, table in TRAIT_TABLES[key]:
            if table_exists(con, schema, table) and columns <= _columns(con, schema, table):
                found[key] = (schema, table)
                break
        else:
            options = " or ".join(f"{s}.{t}" for s, t in TRAIT_TABLES[key])
            problems.append(f"segment {segment.name!r} uses {', '.join(sorted(columns)) or 'the traits'}, which no table "
                            f"holds yet (looked in {options}); build that stage first or remove the condition")
    return found, problems


def compile_for_warehouse(con: duckdb.DuckDBPyConnection, segment_file: SegmentFile,
                          as_of: datetime) -> list[CompiledSegment]:
    """Compile every segment against the tables this warehouse has; a segment that needs a
    table or column that is not there is an error naming it and what to run."""
    problems, compiled = [], []
    for segment in segment_file.segments:
        tables, missing = resolve_trait_tables(con, segment)
        problems += missing
        if not missing:
            compiled.append(compile_segment(segment, as_of, tables))
    if problems:
        raise SegmentFileError(f"{segment_file.path}: segments cannot be evaluated:\n" + "\n".join(f"  - {p}" for p in problems))
    return compiled


def _walk(node):
    if isinstance(node, (AllOf, AnyOf)):
        for c in node.conditions:
            yield from _walk(c)
    elif isinstance(node, NotOf):
        yield from _walk(node.condition)
    else:
        yield node


def _traits_used(segment) -> set[str]:
    return {n.trait for n in _walk(segment.where) if hasattr(n, "trait")}


def write_segments(con: duckdb.DuckDBPyConnection, segment_file: SegmentFile,
                   as_of: datetime | None = None) -> list[SegmentResult]:
    """Evaluate every segment at as_of (default: the marts' as_of) and replace the segments.*
    tables in one transaction. Returns each segment's member count."""
    as_of = as_of or run_as_of(con)
    compiled = compile_for_warehouse(con, segment_file, as_of)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.declarative_membership "
                    "(segment VARCHAR NOT NULL, person_id VARCHAR NOT NULL, as_of TIMESTAMP NOT NULL)")
        con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.definitions "
                    "(segment VARCHAR NOT NULL, description VARCHAR, definition VARCHAR NOT NULL, as_of TIMESTAMP NOT NULL)")
        for segment, c in zip(segment_file.segments, compiled):
            n = len(c.params)
            # The segment's name and as_of are parameters too: nothing from the file is SQL text.
            con.execute(
                f"INSERT INTO {SCHEMA}.declarative_membership (segment, person_id, as_of)\n"
                f"SELECT ${n + 1}, members.person_id, ${n + 2} FROM (\n{c.sql}\n) AS members",
                [*c.params, segment.name, as_of],
            )
            con.execute(
                f"INSERT INTO {SCHEMA}.definitions VALUES (?, ?, ?, ?)",
                [segment.name, segment.description, json.dumps(segment.definition, default=str), as_of],
            )
    counts = dict(fetch_all(con, f"SELECT segment, count(*) FROM {SCHEMA}.declarative_membership GROUP BY 1"))
    results = [SegmentResult(s.name, counts.get(s.name, 0)) for s in segment_file.segments]
    for r in results:
        log.info("segments: %s has %d members", r.name, r.members)
    return results


def load_configured_segments(segments_path: Path) -> SegmentFile:
    """The configured file, or no segments when it does not exist (a project without one)."""
    if not segments_path.exists():
        log.info("segments: no segments file at %s; no declarative segments", segments_path)
        return SegmentFile(segments_path, ())
    return load_segments(segments_path)
