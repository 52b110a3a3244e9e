"""What each sync last delivered, in its own DuckDB file (never the warehouse, so syncs never
take the warehouse's write lock).

    sync_state   (sync, person_id) -> destination key, destination id, field hash, in audience,
                 rejected reason: what the destination has acknowledged
    sync_pending (sync, person_id) -> attempts and last error of a change that could not be
                 delivered; retried next run
    sync_log     one row per person and change per run: sent | rejected | failed
    sync_intent  (sync, person_id) -> a change about to be sent: written before the request, gone
                 with the acknowledgement; one still there next run may have been applied, so
                 the destination is asked what it holds before it is sent again

State is written per acknowledged batch, in one transaction with that batch's log rows, so a
run that stops half-way resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from core.warehouse import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_state (
    sync VARCHAR NOT NULL, person_id VARCHAR NOT NULL, dest_key VARCHAR NOT NULL, dest_id VARCHAR,
    field_hash VARCHAR, in_audience BOOLEAN NOT NULL, rejected_reason VARCHAR, updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sync, person_id));
CREATE TABLE IF NOT EXISTS sync_pending (
    sync VARCHAR NOT NULL, person_id VARCHAR NOT NULL, action VARCHAR NOT NULL, attempts INTEGER NOT NULL,
    last_error VARCHAR, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (sync, person_id));
CREATE TABLE IF NOT EXISTS sync_log (
    sync VARCHAR NOT NULL, run_id VARCHAR NOT NULL, person_id VARCHAR NOT NULL, action VARCHAR NOT NULL,
    result VARCHAR NOT NULL, attempt INTEGER NOT NULL, reason VARCHAR, logged_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS sync_runs (
    sync VARCHAR NOT NULL, run_id VARCHAR NOT NULL, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ,
    snapshot VARCHAR, planned INTEGER, sent INTEGER, rejected INTEGER, failed INTEGER, requests INTEGER,
    status VARCHAR);
CREATE TABLE IF NOT EXISTS sync_intent (
    sync VARCHAR NOT NULL, person_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, action VARCHAR NOT NULL,
    field_hash VARCHAR, recorded_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (sync, person_id));
ALTER TABLE sync_state ADD COLUMN IF NOT EXISTS contact VARCHAR;
"""


STATE_COLS = {"person_id": "VARCHAR", "dest_key": "VARCHAR", "dest_id": "VARCHAR", "field_hash": "VARCHAR",
              "in_audience": "BOOLEAN", "rejected_reason": "VARCHAR", "contact": "VARCHAR"}
LOG_COLS = {"person_id": "VARCHAR", "action": "VARCHAR", "result": "VARCHAR", "attempt": "INTEGER", "reason": "VARCHAR"}


def _insert(con: duckdb.DuckDBPyConnection, table: str, constants: dict, columns: dict[str, str],
            rows: list[tuple]) -> None:
    """Insert many rows in one statement: each varying column goes in as one typed list
    parameter and is unnested; columns equal for the whole batch go in once. (executemany runs
    row by row, and the Arrow route imports pandas, which costs more than the insert.)"""
    values = [list(col) for col in zip(*rows)]
    names = list(constants) + list(columns)
    select = ["?"] * len(constants) + [f"unnest(?::{t}[])" for t in columns.values()]
    con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(select)}",
                list(constants.values()) + values)


class StateBusy(RuntimeError):
    """Another sync run holds the sync state file."""


@dataclass(frozen=True)
class Delivered:
    person_id: str
    dest_key: str
    dest_id: str | None
    field_hash: str | None
    in_audience: bool
    rejected_reason: str | None
    contact: str | None = None   # the email / phone consent and erasure address the profile by


def state_path(root: Path) -> Path:
    return Path(root) / "activation" / "sync_state.duckdb"


def now() -> datetime:
    return datetime.now(timezone.utc)


class SyncState:
    def __init__(self, path: Path, read_only: bool = False, lock_wait_s: float = 60.0):
        self.path = Path(path)
        if read_only and not self.path.exists():
            self.con = duckdb.connect(":memory:")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + lock_wait_s
            while True:
                try:
                    self.con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.IOException as e:
                    if "lock" not in str(e).lower():
                        raise
                    if time.monotonic() > deadline:
                        raise StateBusy(
                            f"{self.path} is in use by another sync run (a Dagster run or `cdp sync`); "
                            "wait for it to finish, then retry"
                        ) from None
                    time.sleep(0.5)  # another sync is running: syncs take turns
        if not read_only or not self.path.exists():
            self.con.execute(SCHEMA)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "SyncState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # reading ------------------------------------------------------------------------
    def delivered(self, sync: str) -> dict[str, Delivered]:
        rows = self.con.execute(
            "SELECT person_id, dest_key, dest_id, field_hash, in_audience, rejected_reason, contact "
            "FROM sync_state WHERE sync = ?", [sync]
        ).fetchall()
        return {r[0]: Delivered(*r) for r in rows}

    def pending(self, sync: str) -> dict[str, int]:
        rows = self.con.execute("SELECT person_id, attempts FROM sync_pending WHERE sync = ?", [sync]).fetchall()
        return dict(rows)

    def intents(self, sync: str) -> dict[str, tuple[str, str | None]]:
        """person_id -> (action, field hash) of changes sent but never acknowledged."""
        rows = self.con.execute("SELECT person_id, action, field_hash FROM sync_intent WHERE sync = ?", [sync]).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def record_intent(self, sync: str, run_id: str, action: str, changes: list) -> None:
        """Written (and committed) before the request goes out, so a crash after the destination
        applied it is noticed by the next run."""
        if not changes:
            return
        with transaction(self.con):
            self.con.execute("DELETE FROM sync_intent WHERE sync = ? AND person_id IN (SELECT unnest(?::VARCHAR[]))",
                             [sync, [c.person_id for c in changes]])
            _insert(self.con, "sync_intent", {"sync": sync, "run_id": run_id, "action": action, "recorded_at": now()},
                    {"person_id": "VARCHAR", "field_hash": "VARCHAR"},
                    [(c.person_id, c.field_hash) for c in changes])

    def recover_stale_runs(self, sync: str) -> int:
        """Runs still 'running' while this process holds the state file died mid-run (kill -9,
        power loss): mark them interrupted so the history says so."""
        n = self.con.execute("SELECT count(*) FROM sync_runs WHERE sync = ? AND status = 'running'", [sync]).fetchall()[0][0]
        if n:
            self.con.execute("UPDATE sync_runs SET status = 'interrupted', finished_at = ? "
                             "WHERE sync = ? AND status = 'running'", [now(), sync])
        return n

    # writing: one transaction per acknowledged batch ----------------------------------
    def commit_batch(self, sync: str, run_id: str, upserts: list[tuple], deletes: list[tuple[str, str]],
                     log_rows: list[tuple], cleared_pending: list[str], failed: list[tuple]) -> None:
        """One acknowledged batch, atomically.

        upserts: (person_id, dest_key, dest_id, field_hash, in_audience, rejected_reason) replace the
        person's row; deletes: (person_id, dest_key) rows that go; log_rows: (person_id, action,
        result, attempt, reason); failed: (person_id, action, error) kept pending for the next run."""
        t = now()
        con = self.con
        with transaction(con):
            if deletes:
                con.executemany("DELETE FROM sync_state WHERE sync = ? AND person_id = ? AND dest_key = ?",
                                [(sync, p, k) for p, k in deletes])
            if upserts:
                con.execute("DELETE FROM sync_state WHERE sync = ? AND person_id IN (SELECT unnest(?::VARCHAR[]))",
                            [sync, [u[0] for u in upserts]])
                _insert(con, "sync_state", {"sync": sync, "updated_at": t}, STATE_COLS, upserts)
            if cleared_pending:
                for table in ("sync_pending", "sync_intent"):
                    con.execute(f"DELETE FROM {table} WHERE sync = ? AND person_id IN (SELECT unnest(?::VARCHAR[]))",
                                [sync, cleared_pending])
            if failed:
                con.executemany(
                    "INSERT INTO sync_pending VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (sync, person_id) DO UPDATE "
                    "SET attempts = sync_pending.attempts + 1, action = excluded.action, "
                    "last_error = excluded.last_error, updated_at = excluded.updated_at",
                    [(sync, p, a, e, t) for p, a, e in failed],
                )
            if log_rows:
                _insert(con, "sync_log", {"sync": sync, "run_id": run_id, "logged_at": t}, LOG_COLS, log_rows)

    def start_run(self, sync: str, run_id: str, snapshot: str | None, planned: int) -> None:
        self.con.execute(
            "INSERT INTO sync_runs VALUES (?, ?, ?, NULL, ?, ?, 0, 0, 0, 0, 'running')",
            [sync, run_id, now(), snapshot, planned],
        )

    def finish_run(self, sync: str, run_id: str, sent: int, rejected: int, failed: int, requests: int) -> None:
        self.con.execute(
            "UPDATE sync_runs SET finished_at = ?, sent = ?, rejected = ?, failed = ?, requests = ?, status = ? "
            "WHERE sync = ? AND run_id = ?",
            [now(), sent, rejected, failed, requests, "ok" if failed == 0 else "incomplete", sync, run_id],
        )

    def purge_persons(self, person_ids: list[str]) -> dict[str, int]:
        """Forget persons everywhere in the state file (erasure), then rewrite the file so no
        deleted row lingers in a free block."""
        counts = {}
        with transaction(self.con):
            for table in ("sync_state", "sync_pending", "sync_log", "sync_intent"):
                n = self.con.execute(f"SELECT count(*) FROM {table} WHERE list_contains(?, person_id)",
                                     [person_ids]).fetchall()[0][0]
                self.con.execute(f"DELETE FROM {table} WHERE list_contains(?, person_id)", [person_ids])
                counts[table] = n
        self._rewrite()
        return counts

    def _rewrite(self) -> None:
        if not self.path.exists():
            return
        self.con.close()
        tmp = self.path.with_name(f".{self.path.name}.rewrite")
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        con.execute(SCHEMA)
        con.execute(f"ATTACH '{self.path}' AS old (READ_ONLY)")
        for table in ("sync_state", "sync_pending", "sync_log", "sync_runs", "sync_intent"):
            con.execute(f"INSERT INTO main.{table} BY NAME SELECT * FROM old.main.{table}")
        con.execute("DETACH old")
        con.execute("CHECKPOINT")
        con.close()
        os.replace(tmp, self.path)
        Path(str(self.path) + ".wal").unlink(missing_ok=True)
        self.con = duckdb.connect(str(self.path))


def sync_overview(root: Path) -> list[dict]:
    """The latest run of every sync (counts only, no PII), for the per-publish report and status.
    Empty when no sync has run."""
    path = state_path(root)
    if not path.exists():
        return []
    with SyncState(path, read_only=True) as state:
        rows = state.con.execute("""
            SELECT sync, run_id, snapshot, status, planned, sent, rejected, failed, requests,
                   (SELECT count(*) FROM sync_pending p WHERE p.sync = r.sync) AS pending,
                   (SELECT count(*) FROM sync_state s WHERE s.sync = r.sync AND s.in_audience) AS in_audience,
                   started_at, finished_at
            FROM sync_runs r
            QUALIFY row_number() OVER (PARTITION BY sync ORDER BY started_at DESC) = 1
            ORDER BY sync""").fetchall()
        names = [d[0] for d in state.con.description]
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(names, row)} for row in rows]
