"""Every marketing nudge a person got, live (``cdp serve``'s triggers) or from a batch sync, in
one table, so a frequency cap holds across both: a person nudged live is left out of the next
batch sync within the cap, and one a sync just reached gets no live nudge.

SQLite in WAL mode (``<project>/activation/nudges.sqlite``): the server and a sync are separate
processes and both write; DuckDB allows one writing process per file.

    nudges (origin, key) unique: origin = 'cart_abandonment' or 'sync:<name>', key = the cart,
           or the person and field hash a sync delivered (a re-delivery is not a second nudge)
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def nudges_path(root: Path) -> Path:
    return Path(root) / "activation" / "nudges.sqlite"


class NudgeLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS nudges (origin TEXT NOT NULL, key TEXT NOT NULL, "
                        "person_id TEXT NOT NULL, channel TEXT NOT NULL, sent_at REAL NOT NULL, "
                        "PRIMARY KEY (origin, key))")
        self.db.execute("CREATE INDEX IF NOT EXISTS nudges_person ON nudges (person_id, sent_at)")
        self.lock = threading.Lock()

    def record(self, rows: list[tuple[str, str, str, str, float]]) -> None:
        """(origin, key, person_id, channel, sent_at) rows; a known (origin, key) is kept as it was."""
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO nudges VALUES (?, ?, ?, ?, ?)", rows)

    def sent(self, origin: str, key: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM nudges WHERE origin = ? AND key = ?", [origin, key]).fetchone() is not None

    def count_since(self, person_id: str, since: float, channel: str | None = None) -> int:
        sql, params = "SELECT count(*) FROM nudges WHERE person_id = ? AND sent_at >= ?", [person_id, since]
        if channel:
            sql, params = sql + " AND channel = ?", params + [channel]
        with self.lock:
            return self.db.execute(sql, params).fetchone()[0]

    def at_cap(self, person_ids: list[str], since: float, channel: str, limit: int) -> set[str]:
        """Of ``person_ids``, those with ``limit`` or more nudges on ``channel`` since ``since``."""
        with self.lock:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS asked (person_id TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM asked")
            self.db.executemany("INSERT OR IGNORE INTO asked VALUES (?)", [(p,) for p in person_ids])
            rows = self.db.execute("SELECT n.person_id FROM nudges n JOIN asked USING (person_id) "
                                   "WHERE n.sent_at >= ? AND n.channel = ? GROUP BY n.person_id HAVING count(*) >= ?",
                                   [since, channel, limit]).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        self.db.close()
