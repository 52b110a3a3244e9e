"""Opening the DuckDB warehouse.

DuckDB allows one writing process per file. Every writer goes through
:func:`connect`, which turns DuckDB's lock error into a message that says what to do.
Readers of published snapshots open them read-only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse's write lock."""


# A writer waits this long for the lock before giving up: short readers (`cdp status`, a
# reporting command) hold the file for under a second, and a run's step
# must not fail on them. A run holding it is refused sooner by the run lock (core/run_lock.py).
WRITER_WAIT_SECONDS = 10.0


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no warehouse file here yet; run `cdp run` first")
    deadline = time.monotonic() + (0.0 if read_only else WRITER_WAIT_SECONDS)
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise WarehouseBusy(
                f"{path} is open by another process (a Dagster run, `cdp run`, `cdp serve` or a "
                f"notebook). Wait for it to finish or close it, then retry. DuckDB said: {e}"
            ) from None
    # Every timestamp is stored and shown in UTC, whatever the machine's zone.
    con.execute("SET TimeZone = 'UTC'")
    return con


@contextmanager
def open_warehouse(path: Path | str, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All of the block's writes or none: COMMIT at its end, ROLLBACK (and re-raise) on any error."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.TransactionException:
            pass  # (a COMMIT that failed has already rolled back: no transaction is left to end)
        raise


def fetch_all(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    """Run a query and fetch every row at once (DuckDB 2.0 relations have no fetchone,
    and an unfinished result blocks the connection's next query)."""
    return con.execute(sql, params or []).fetchall()


def fetch_value(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    rows = fetch_all(con, sql, params)
    return rows[0][0] if rows else None


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(fetch_all(
        con, "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
    ))
