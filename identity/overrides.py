"""Manual overrides: a user forces two records together or apart.

The file (``identity.overrides_file``, default ``identity_overrides.csv`` beside ``cdp.yaml``)
holds one pair a line::

    action,record_a,record_b,note,added_at
    merge,pos|loyalty_members|1001,web|user_id|u-77,same customer (phone call 2026-03-02),2026-03-02T10:00:00Z
    split,crm|subscribers|s-5,pos|loyalty_members|1002,twins,2026-03-02T10:05:00Z

Records are named by their record key (``source|entity|source_record_id``, as in the published
``identity_graph``). ``cdp identity merge|split|unpair`` edit the file; every run applies it
before clustering:

- ``merge``: an edge of rule ``manual_merge`` processed before every other edge; it passes
  every check (merge protection, limits, the size cap, name conflicts) but a split.
- ``split``: the two records never end in one cluster: any merge that would join them is
  refused (``manual_split``), whatever the edge; a split beats a merge.

The pair is unordered and the last line for a pair wins (``unpair`` removes it), so the file
can be edited by hand or appended to. Stable person ids follow as for any change: on a split
the larger part keeps the id. A record key the run does not have (not loaded yet, erased, or a
receipt that takes no part in clustering) is reported by row number, never by value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

FIELDS = ("action", "record_a", "record_b", "note", "added_at")
ACTIONS = ("merge", "split")


class OverridesError(ValueError):
    """A line of the overrides file is not valid; the message names the file, row and field."""


@dataclass(frozen=True)
class Override:
    action: str
    record_a: str
    record_b: str
    note: str = ""
    added_at: str = ""
    row: int = 0  # line in the file (1 = the header)

    @property
    def pair(self) -> tuple[str, str]:
        return tuple(sorted((self.record_a, self.record_b)))  # type: ignore[return-value]


def path_of(config, settings) -> Path:
    p = Path(settings.overrides_file)
    return config.resolve(p) if hasattr(config, "resolve") else p


def _valid_key(key: str) -> bool:
    parts = key.split("|", 2)
    return len(parts) == 3 and all(p.strip() for p in parts)


def read(path: Path) -> list[Override]:
    """Every line, validated (empty list when there is no file)."""
    if not path.is_file():
        return []
    out: list[Override] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("action", "record_a", "record_b") if c not in (reader.fieldnames or [])]
        if missing:
            raise OverridesError(f"{path}: the header lacks {', '.join(missing)} (expected {','.join(FIELDS)})")
        for row_no, row in enumerate(reader, start=2):
            action = (row.get("action") or "").strip().lower()
            if action not in ACTIONS:
                raise OverridesError(f"{path}, row {row_no}, field action: must be one of {', '.join(ACTIONS)}")
            keys = []
            for field in ("record_a", "record_b"):
                key = (row.get(field) or "").strip()
                if not _valid_key(key):
                    raise OverridesError(f"{path}, row {row_no}, field {field}: not a record key "
                                         "(source|entity|source_record_id, as in identity_graph.record_key)")
                keys.append(key)
            if keys[0] == keys[1]:
                raise OverridesError(f"{path}, row {row_no}, field record_b: the same record as record_a")
            out.append(Override(action, keys[0], keys[1], (row.get("note") or "").strip(),
                                (row.get("added_at") or "").strip(), row_no))
    return out


def effective(overrides: list[Override]) -> list[Override]:
    """The last line for each pair (a later merge replaces an earlier split of the same pair)."""
    last: dict[tuple[str, str], Override] = {}
    for o in overrides:
        last.pop(o.pair, None)
        last[o.pair] = o
    return list(last.values())


def write(path: Path, overrides: list[Override]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for o in overrides:
            w.writerow([o.action, o.record_a, o.record_b, o.note, o.added_at])
    tmp.replace(path)


def add(path: Path, action: str, record_a: str, record_b: str, note: str = "") -> Override:
    """Record ``action`` for the pair (replacing what the file said about it)."""
    if action not in ACTIONS:
        raise OverridesError(f"action must be one of {', '.join(ACTIONS)}")
    for field, key in (("record_a", record_a), ("record_b", record_b)):
        if not _valid_key(key):
            raise OverridesError(f"{field}: not a record key (source|entity|source_record_id)")
    if record_a == record_b:
        raise OverridesError("record_b: the same record as record_a")
    new = Override(action, record_a, record_b, note, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    kept = [o for o in effective(read(path)) if o.pair != new.pair]
    write(path, kept + [new])
    return new


def remove(path: Path, record_a: str, record_b: str) -> bool:
    """Forget what the file says about the pair; False when it said nothing."""
    pair = tuple(sorted((record_a, record_b)))
    before = effective(read(path))
    kept = [o for o in before if o.pair != pair]
    if len(kept) == len(before):
        return False
    write(path, kept)
    return True


def stage(con: duckdb.DuckDBPyConnection, overrides: list[Override], schema: str) -> list[str]:
    """``<schema>.manual_merges`` and ``<schema>.manual_splits`` (rid_a, rid_b) from the
    overrides whose two records are profile records of this run; returns warnings for the rest
    (by row number: a record key can carry personal data)."""
    live = effective(overrides)
    con.register("_overrides", pa.table({
        "row": [o.row for o in live], "action": [o.action for o in live],
        "record_a": [o.record_a for o in live], "record_b": [o.record_b for o in live]},
        schema=pa.schema([("row", pa.int64()), ("action", pa.string()), ("record_a", pa.string()),
                          ("record_b", pa.string())])))
    try:
        con.execute(f"""
            CREATE OR REPLACE TABLE {schema}.manual_overrides AS
            SELECT o.row, o.action, a.rid AS rid_a, b.rid AS rid_b
            FROM _overrides o
            LEFT JOIN {schema}.records a ON a.record_key = o.record_a AND NOT a.is_satellite
            LEFT JOIN {schema}.records b ON b.record_key = o.record_b AND NOT b.is_satellite""")
    finally:
        con.unregister("_overrides")
    for action, table in (("merge", "manual_merges"), ("split", "manual_splits")):
        con.execute(f"""CREATE OR REPLACE TABLE {schema}.{table} AS
                        SELECT least(rid_a, rid_b) AS rid_a, greatest(rid_a, rid_b) AS rid_b FROM {schema}.manual_overrides
                        WHERE action = '{action}' AND rid_a IS NOT NULL AND rid_b IS NOT NULL ORDER BY ALL""")
    missing = [r[0] for r in con.execute(f"""SELECT row FROM {schema}.manual_overrides
                                             WHERE rid_a IS NULL OR rid_b IS NULL ORDER BY row""").fetchall()]
    if not missing:
        return []
    shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
    return [f"{len(missing)} manual override(s) name a record this run does not have as a profile "
            f"record (not loaded, erased, or a receipt) and were not applied: row(s) {shown} of the overrides file"]
