"""Small DuckDB helpers shared by the identity modules (DuckDB 2.0 API)."""

from __future__ import annotations

import duckdb

from core.warehouse import table_exists  # noqa: F401  (re-exported for identity modules)


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def value(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    r = rows(con, sql, params)
    return r[0][0] if r else None


def has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """``<schema>.<table>`` exists; ``schema`` may name its catalog (``identity_work.main``).
    (A catalog lookup, not a query that fails: DuckDB's Python client would read a missing
    table's name as a Python variable of the caller's.)"""
    catalog, _, name = schema.rpartition(".")
    where = "table_catalog = ?" if catalog else "table_catalog = current_database()"
    return bool(rows(con, f"SELECT 1 FROM information_schema.tables WHERE {where} AND table_schema = ? AND table_name = ?",
                     [catalog, name, table] if catalog else [name, table]))
