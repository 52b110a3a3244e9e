"""Malformed rows for the loader's quarantine, appended as text to landing files.

Each kind is a rate per written row; counts actually injected are recorded per file and
kind in ground_truth/mess.json. Bad rows never carry a real person's identifiers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.config import Ingestion

from .textops import STR, S, hex_strings, padded, scramble

# Which kinds apply to which file sets (the folder/prefix of a monthly file).
JSONL_KINDS = ("truncated_json", "missing_key", "impossible_timestamp", "non_date_timestamp")
CSV_KINDS = {
    "pos/transactions": ("non_numeric", "missing_key", "impossible_timestamp"),
    "pos/line_items": ("non_numeric", "missing_key"),
    "email/events": ("missing_key", "impossible_timestamp"),
}


# At most this share of a file's rows is bad: half the loader's default bound
# (ingestion.max_bad_row_rate), so that generated data shows rows quarantined, never a file
# rejected whole. The rates below are far under it in a big file; a small one (a young or small
# shop's month of support tickets: 4 rows) would pass it with a single bad row, and its
# rejection stopped `cdp run` on the date that drew it.
MAX_BAD_SHARE = Ingestion.model_fields["max_bad_row_rate"].default / 2


@dataclass(frozen=True)
class BadRowRates:
    truncated_json: float = 0.0008  # JSONL line cut off mid-object
    missing_key: float = 0.0005  # messageId / ticket_id absent (JSONL), empty key column (CSV)
    impossible_timestamp: float = 0.0005  # 2025-02-32T25:61:00Z
    non_date_timestamp: float = 0.0004  # "timestamp": "yesterday" (JSONL)
    non_numeric: float = 0.0005  # quantity / total written as "three" (CSV)

    def as_dict(self) -> dict:
        return asdict(self)


def _impossible_timestamp(month_label: str) -> str:
    return f"{month_label}-32T25:61:00Z"


def _join(*parts) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = S.add(out, p)
    return out


def web_lines(kind: str, n: int, rng, month_label: str, serial: int) -> np.ndarray:
    ids = S.add("bad_", hex_strings(scramble(np.arange(serial, serial + n), 77), 16))
    anon = S.add("bad-device-", hex_strings(scramble(np.arange(serial, serial + n), 78), 12))
    good_ts = f"{month_label}-15T12:00:00.000Z"
    body = _join('"type":"track","event":"product_viewed","anonymousId":"', anon,
                 '","properties":{"product_id":"SKU-000000","price":9.99},"context":{},"timestamp":"')
    if kind == "truncated_json":
        line = _join('{"messageId":"', ids, '",', body, good_ts, '"}')
        return S.slice(line, 0, rng.integers(20, 90, n))
    if kind == "missing_key":
        return _join("{", body, good_ts, '"}')
    ts = _impossible_timestamp(month_label) if kind == "impossible_timestamp" else "yesterday"
    return _join('{"messageId":"', ids, '",', body, ts, '"}')


def support_lines(kind: str, n: int, rng, month_label: str, serial: int) -> np.ndarray:
    ids = padded(np.arange(serial, serial + n), 6, "TCK-BAD-")
    good_ts = f"{month_label}-15T12:00:00Z"
    body = '"requester_name":null,"requester_email":null,"channel":"email","category":"other","status":"open","created_at":"'
    if kind == "truncated_json":
        line = _join('{"ticket_id":"', ids, '",', body, good_ts, '"}')
        return S.slice(line, 0, rng.integers(15, 80, n))
    if kind == "missing_key":
        return np.full(n, "{" + body + good_ts + '"}', dtype=STR)
    ts = _impossible_timestamp(month_label) if kind == "impossible_timestamp" else "yesterday"
    return _join('{"ticket_id":"', ids, '",', body, ts, '"}')


def csv_lines(file_set: str, kind: str, n: int, month_label: str, serial: int) -> np.ndarray:
    good_ts = f"{month_label}-15T12:00:00Z"
    bad_ts = _impossible_timestamp(month_label)
    tx = padded(np.arange(serial, serial + n), 6, "T-BAD-")
    if file_set == "pos/transactions":
        # transaction_id,store_id,occurred_at,loyalty_id,email,phone,channel,order_ref,subtotal,discount,total,payment_method,card_token
        key = np.full(n, "", dtype=STR) if kind == "missing_key" else tx
        ts = bad_ts if kind == "impossible_timestamp" else good_ts
        total = "three" if kind == "non_numeric" else "10.00"
        return _join(key, f",ST001,{ts},,,,store,,10.00,0.00,{total},card,")
    if file_set == "pos/line_items":
        key = np.full(n, "", dtype=STR) if kind == "missing_key" else tx
        quantity = "three" if kind == "non_numeric" else "1"
        return _join(key, f",1,SKU-000000,{quantity},10.00,0.00")
    # email/events: event_id,subscriber_id,email,campaign_id,event_type,occurred_at,link_tracking_id,url
    key = np.full(n, "", dtype=STR) if kind == "missing_key" else padded(np.arange(serial, serial + n), 6, "ev_bad_")
    ts = bad_ts if kind == "impossible_timestamp" else good_ts
    return _join(key, f",sub_bad,,CMP-BAD,open,{ts},,")


class BadRowInjector:
    """Appends bad lines to written files and keeps count per file and kind."""

    def __init__(self, rates: BadRowRates, rng: np.random.Generator, enabled: bool):
        self.rates = rates
        self.rng = rng
        self.enabled = enabled
        self.counts: dict[str, dict[str, int]] = {}
        self.serial = 1

    def append(self, path: Path, relative: str, file_set: str, good_rows: int, month_label: str) -> int:
        if not self.enabled or good_rows == 0:
            return 0
        if file_set in ("web/events", "support/tickets"):
            kinds, make = JSONL_KINDS, (web_lines if file_set == "web/events" else support_lines)
        else:
            kinds, make = CSV_KINDS[file_set], None
        lines, counts = [], {}
        budget = int(good_rows * MAX_BAD_SHARE / (1 - MAX_BAD_SHARE))  # bad / (good + bad) <= the share
        for kind in kinds:  # a loop over a handful of kinds
            drawn = int(self.rng.binomial(good_rows, getattr(self.rates, kind)))
            n = min(drawn, budget)
            budget -= n
            if n == 0:
                continue
            if make is None:
                lines.append(csv_lines(file_set, kind, n, month_label, self.serial))
            else:
                lines.append(make(kind, n, self.rng, month_label, self.serial))
            self.serial += n
            counts[kind] = n
        if not lines:
            return 0
        text = "\n".join(np.concatenate(lines).tolist()) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        self.counts[relative] = counts
        return sum(counts.values())
