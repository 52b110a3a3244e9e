"""Each load of a source against the earlier loads of the same source: a gate that notices a
broken export.

A corrupted export rarely breaks a contract: a loyalty file with one email on every member,
an identifier column left empty, half the rows missing all load as valid rows, and identity
then splits or merges persons. So the gate compares every load since the last publish with
the source's earlier loads (up to ``expectations.sources.baseline_loads``): a load must stay
near the range they span, so ordinary ups and downs pass:

- ``drift_source_rows``: the load's rows fell by more than ``max_row_count_drop`` below the
  smallest earlier load (a load whose timestamps span less time than usual, a month so far, is expected to
  hold proportionally fewer: that is not half the rows missing);
- ``drift_source_fill_rate``: a field's share of rows with a value fell by more than
  ``max_fill_rate_drop``;
- ``drift_source_top_value``: the share of a field's values taken by its most common value
  rose by more than ``max_top_value_share_rise``.

The numbers come from ``raw.load_profiles`` and ``raw.loads.days_covered``, which the loader
writes in the transaction of each load (ingestion and this stage meet in the warehouse, not in
code). They hold counts only, never a value: a failure names the file and the field.

Loads since the last publish are checked on every gate run until a publish takes them in, so a
held load stays held on the next run; ``cdp publish --accept-drift`` accepts a real change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from core.warehouse import fetch_all, table_exists

SETTING = "expectations.sources"


@dataclass
class LoadProfile:
    load_id: str
    source: str
    table: str
    file: str
    rows: int
    days: float | None
    filled: dict[str, int] = field(default_factory=dict)  # field -> rows with a value
    top: dict[str, int | None] = field(default_factory=dict)  # field -> rows holding its most common value


@dataclass
class Finding:
    """One field (or the row count) of one load out of bounds."""

    table: str
    check: str
    file: str
    source: str
    field: str | None
    value: float  # the drop or rise
    now: float
    usual: float
    baseline: int  # earlier loads compared with

    def text(self, bound: float, setting: str) -> str:
        what = {
            "drift_source_rows": f"{self.now:.0f} rows, {self.value:.0%} fewer than the {self.usual:.0f} expected "
                                 f"from the smallest of the {self.baseline} earlier load(s) (for the time its rows span)",
            "drift_source_fill_rate": f"field '{self.field}' has a value in {self.now:.1%} of rows, against at least "
                                      f"{self.usual:.1%} in each of the {self.baseline} earlier load(s)",
            "drift_source_top_value": f"field '{self.field}' has one value in {self.now:.1%} of its filled rows, "
                                      f"against at most {self.usual:.1%} in each of the {self.baseline} earlier load(s)",
        }[self.check]
        return f"{self.file} (source {self.source}): {what}; the bound is {setting} = {bound}"


def load_profiles(con, tables: set[str] | None = None) -> list[LoadProfile]:
    """Every loaded file's profile, oldest first (loads made before profiles existed have none)."""
    if not table_exists(con, "raw", "load_profiles"):
        return []
    rows = fetch_all(con, """
        SELECT l.load_id, l.source, l.table_name, l.file, l.rows_loaded, l.days_covered, l.started_at,
               list(p.field), list(p.filled), list(p.top_value_rows)
        FROM raw.loads l JOIN raw.load_profiles p USING (load_id)
        WHERE l.status = 'loaded'
        GROUP BY ALL ORDER BY l.started_at, l.file""")
    out = []
    for load_id, source, table, file, n, days, _, fields, filled, tops in rows:
        if tables is not None and table not in tables:
            continue
        out.append(LoadProfile(load_id, source, table, file, n, days, dict(zip(fields, filled)), dict(zip(fields, tops))))
    return out


def new_load_ids(con, since: str | None) -> set[str]:
    """Loads finished after ``since`` (the last publish; None: every load)."""
    if not table_exists(con, "raw", "loads"):
        return set()
    if since is None:
        return {r[0] for r in fetch_all(con, "SELECT load_id FROM raw.loads WHERE status = 'loaded'")}
    return {r[0] for r in fetch_all(
        con, "SELECT load_id FROM raw.loads WHERE status = 'loaded' AND finished_at > ?::TIMESTAMPTZ", [since])}


def findings(profiles: list[LoadProfile], new: set[str], bounds) -> list[Finding]:
    """Every new load compared with the earlier loads of its source (same source and table)."""
    history: dict[tuple[str, str], list[LoadProfile]] = {}
    out: list[Finding] = []
    for p in profiles:
        earlier = history.setdefault((p.source, p.table), [])
        if p.load_id in new and earlier:
            out += _compare(p, earlier[-bounds.baseline_loads:], bounds)
        earlier.append(p)
    return out


def _compare(p: LoadProfile, earlier: list[LoadProfile], bounds) -> list[Finding]:
    found: list[Finding] = []
    big = [b for b in earlier if b.rows >= bounds.min_rows]

    def add(check, fld, value, now, usual, n):
        found.append(Finding(p.table, check, p.file, p.source, fld, value, now, usual, n))

    # Each load is held to the range the earlier loads span (the fewest rows, the lowest fill
    # rate, the highest top-value share among them), so ordinary ups and downs pass.
    # Rows: judged whenever the earlier loads are big enough to say what usual is (the load
    # itself may be small: that is the failure). A load whose timestamps span less time than
    # usual (this month so far) is expected to hold proportionally fewer rows; a load with half
    # its rows gone spans the usual time.
    # A table whose rows carry no timestamp (POS line items) has no span: a month so far cannot
    # be told from lost rows, so its row count is not judged (its parent file's is).
    if big and p.days is not None:
        spans = [b.days for b in earlier if b.days]
        share = min(1.0, p.days / median(spans)) if p.days and spans else 1.0
        expected = min(b.rows for b in big) * share
        add("drift_source_rows", None, 1 - p.rows / expected, p.rows, expected, len(big))
    if p.rows < bounds.min_rows or not big:
        return found
    for name, filled in p.filled.items():
        rates = [b.filled[name] / b.rows for b in big if name in b.filled]
        if rates:
            lowest = min(rates)
            add("drift_source_fill_rate", name, lowest - filled / p.rows, filled / p.rows, lowest, len(rates))
        top = p.top.get(name)
        if top is None or filled < bounds.min_rows:  # (no top value counted: JSON, timestamps)
            continue
        shares = [b.top[name] / b.filled[name] for b in big
                  if b.top.get(name) is not None and b.filled.get(name, 0) >= bounds.min_rows]
        if shares:
            highest = max(shares)
            add("drift_source_top_value", name, top / filled - highest, top / filled, highest, len(shares))
    return found


def worst(found: list[Finding]) -> dict[tuple[str, str], Finding]:
    """(table, check) -> its largest drop or rise."""
    out: dict[tuple[str, str], Finding] = {}
    for f in found:
        key = (f.table, f.check)
        if key not in out or f.value > out[key].value:
            out[key] = f
    return out
