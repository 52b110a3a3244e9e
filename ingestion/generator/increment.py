"""One more day of landing data, for daily-run benchmarks: `write_day(landing, template_day, day)`.

The rows of `template_day` (normally the generated data's as_of day, its last) in every event-like
file set — web events, email events, POS receipts and their lines, support tickets — are written
again as `day`'s: times moved by whole days, record ids made new (`<id>-d<YYYYMMDD>`, the same
suffix in every file, so a web order and the receipt that fulfils it still meet), everything else
as it was, in the same formats and columns. The people are the generated ones, active again; the
snapshot files (members, subscribers, catalog) are not rewritten. Files are named for the day
(`web/events_2025-07-01.jsonl`...), so the generated project's globs pick them up.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

# file set -> (monthly file prefix, suffix, id fields, time fields); JSON fields may be nested "a.b".
EVENT_FILES = {
    "web": ("web/events_", ".jsonl", ("messageId", "properties.order_id", "properties.cart_id"),
            ("timestamp", "originalTimestamp", "sentAt", "receivedAt")),
    "email": ("email/events_", ".csv", ("event_id",), ("occurred_at",)),
    "pos": ("pos/transactions_", ".csv", ("transaction_id", "order_ref"), ("occurred_at",)),
    "pos_lines": ("pos/line_items_", ".csv", ("transaction_id",), ()),
    "support": ("support/tickets_", ".jsonl", ("ticket_id",), ("created_at", "resolved_at")),
}


def _shift(value: str | None, days: int) -> str | None:
    """An ISO time `days` later, written as it was (a 'Z' or an offset kept)."""
    if not value:
        return value
    text = value.replace("Z", "+00:00")
    try:
        moved = dt.datetime.fromisoformat(text) + dt.timedelta(days=days)
    except ValueError:
        return value  # a malformed time stays malformed: the loader's to judge
    out = moved.isoformat(timespec="milliseconds" if "." in value else "seconds")
    return out.replace("+00:00", "Z") if value.endswith("Z") else out


def _get(row: dict, path: str):
    for part in path.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(part)
    return row


def _set(row: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        row = row.get(part)
        if not isinstance(row, dict):
            return
    if last in row:
        row[last] = value


def _template_file(landing: Path, prefix: str, suffix: str, day: dt.date) -> Path | None:
    path = landing / f"{prefix}{day:%Y-%m}{suffix}"
    return path if path.is_file() else None


def _on_day(value: str | None, day: dt.date) -> bool:
    return bool(value) and value[:10] == day.isoformat()


def write_day(landing: Path, template_day: dt.date, day: dt.date) -> dict[str, int]:
    """Write `day`'s files (rows of `template_day`, moved; none for a file set with no row that
    day); returns rows written per file."""
    landing = Path(landing)
    days = (day - template_day).days
    tag = f"-d{day:%Y%m%d}"

    def new_id(value):
        return f"{value}{tag}" if value not in (None, "") else value

    written: dict[str, int] = {}
    # the receipts' ids of the template day, for their lines (which carry no time)
    receipts: set[str] = set()
    for name in ("pos", "pos_lines", "web", "email", "support"):
        prefix, suffix, ids, times = EVENT_FILES[name]
        source = _template_file(landing, prefix, suffix, template_day)
        if source is None:
            continue
        target = landing / f"{prefix}{day.isoformat()}{suffix}"
        n = 0
        if suffix == ".jsonl":
            with source.open() as src, target.open("w") as dst:
                for line in src:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a malformed line of the template: not repeated
                    if not isinstance(row, dict) or not _on_day(_get(row, times[0]), template_day):
                        continue
                    for field in times:
                        if isinstance(_get(row, field), str):
                            _set(row, field, _shift(_get(row, field), days))
                    for field in ids:
                        if _get(row, field) is not None:
                            _set(row, field, new_id(_get(row, field)))
                    dst.write(json.dumps(row, separators=(",", ":")) + "\n")
                    n += 1
        else:
            with source.open(newline="") as src, target.open("w", newline="") as dst:
                reader = csv.DictReader(src)
                writer = csv.DictWriter(dst, fieldnames=reader.fieldnames, lineterminator="\n")
                writer.writeheader()
                for row in reader:
                    if name == "pos_lines":
                        if row.get("transaction_id") not in receipts:
                            continue
                    elif not _on_day(row.get(times[0]), template_day):
                        continue
                    elif name == "pos":
                        receipts.add(row["transaction_id"])
                    for field in times:
                        row[field] = _shift(row.get(field), days)
                    for field in ids:
                        row[field] = new_id(row.get(field))
                    writer.writerow(row)
                    n += 1
        if n:
            written[str(target.relative_to(landing))] = n
        else:
            target.unlink()  # a file with no rows is rejected by the loader: none is landed
    return written
