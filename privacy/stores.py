"""Erasure beyond the tables: the texts the project writes that may quote a person.

Given the erased persons' identifiers as a ``core.pii.KnownValues`` (emails, phones in any
writing, source ids, card tokens, person ids, full names), each store has the values masked in
place:

- ``raw.loads.message`` (a load message may quote a line: a file without a header);
- every file the project wrote under its folder: Dagster's run storage (SQLite: event log
  rows, asset and check records, every text column), compute logs, ``last_run.json``, the
  quality reports, the per-publish ``report.html`` of every kept snapshot (person ids in the
  identity charts), files drops, dbt's logs and artifacts.

Left alone: the landing folder (the source systems' exports: the README's retention note),
DuckDB files (the warehouse, snapshots and sync state are erased row by row by their owners),
the salt, and the user's YAML configuration. Nothing is parsed: the values are masked as text,
the same masking logs and reports use, so JSON stays JSON (the replacement holds no quote).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from core.pii import KnownValues

SQLITE_MAGIC = b"SQLite format 3\x00"
DUCKDB_MAGIC = b"DUCK"  # at offset 8 of a DuckDB database file
REDACTED = "<erased>"
CONFIG_SUFFIXES = (".yaml", ".yml")


def redact_load_messages(con, known: KnownValues) -> int:
    """Mask the values in ``raw.loads.message``; returns the rows changed."""
    if not known or not con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'raw' AND table_name = 'loads' "
            "AND table_catalog = current_database()").fetchall():
        return 0
    changed = [(masked, load_id) for load_id, m in con.execute(
        "SELECT load_id, message FROM raw.loads WHERE message IS NOT NULL").fetchall()
        if (masked := known.mask(m, REDACTED)) != m]
    if changed:
        con.executemany("UPDATE raw.loads SET message = ? WHERE load_id = ?", changed)
    return len(changed)


def redact_project_files(root: Path, known: KnownValues, skip: list[Path]) -> dict[str, int]:
    """Mask the values in every file under ``root`` the project wrote (see the module's notes);
    ``skip``: folders and files left alone. Returns {"files": n, "sqlite_rows": n} changed."""
    out = {"files": 0, "sqlite_rows": 0}
    if not known:
        return out
    skipped = [p.resolve() for p in skip]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).resolve()
        dirnames[:] = [d for d in dirnames if (here / d) not in skipped and d != ".git"]
        for name in filenames:
            path = here / name
            if path in skipped or path.is_symlink() or name.endswith(CONFIG_SUFFIXES):
                continue
            if name.endswith(("-wal", "-shm", "-journal", ".wal")):  # a database's own journal
                continue
            with open(path, "rb") as f:
                head = f.read(16)
            if head == SQLITE_MAGIC:
                out["sqlite_rows"] += _redact_sqlite(path, known)
            elif head[8:12] != DUCKDB_MAGIC and _redact_file(path, known):
                out["files"] += 1
    return out


def _redact_file(path: Path, known: KnownValues) -> bool:
    # surrogateescape: any byte survives the round trip, so a binary file is rewritten only
    # where a value matched
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    masked = known.mask(text, REDACTED)
    if masked == text:
        return False
    tmp = path.with_name(f".{path.name}.redacting")
    tmp.write_bytes(masked.encode("utf-8", "surrogateescape"))
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    return True


def _redact_sqlite(path: Path, known: KnownValues) -> int:
    """Every text column of every table; the freed cells are zeroed (secure_delete) and the
    write-ahead log truncated, so the old text does not linger in the file."""
    con = sqlite3.connect(str(path), timeout=60)
    changed = 0
    try:
        con.execute("PRAGMA secure_delete = ON")
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%'").fetchall()]
        for table in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")').fetchall()]
            for col in cols:
                try:
                    rows = con.execute(f'SELECT rowid, "{col}" FROM "{table}" WHERE typeof("{col}") = \'text\'').fetchall()
                except sqlite3.OperationalError:  # a table WITHOUT ROWID: none in Dagster's storage
                    break
                updates = [(m, rowid) for rowid, v in rows if (m := known.mask(v, REDACTED)) != v]
                if updates:
                    con.executemany(f'UPDATE "{table}" SET "{col}" = ? WHERE rowid = ?', updates)
                    changed += len(updates)
        con.commit()
        if changed:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return changed
