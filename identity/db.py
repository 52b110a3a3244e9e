"""Small DuckDB helpers shared by the identity modules (DuckDB 2.0 API)."""

from __future__ import annotations

import duckdb

from core.warehouse import table_exists  # noqa: F401  (re-exported for identity modules)


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """A query's whole result as a pyarrow Table."""
    return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def value(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    r = rows(con, sql, params)
    return r[0][0] if r else None


