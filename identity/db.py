"""Small DuckDB helpers shared by the identity modules (DuckDB 2.0 API)."""

from __future__ import annotations

import duckdb

from core.warehouse import table_exists  # noqa: F401  (re-exported for identity modules)


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def value(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    r = rows(con, sql, params)
    return r[0][0] if r else None
