"""Cart intent scored live: the batch's saved model (scoring.model_store) run on the live
session's features (scoring.cart.FEATURES), compiled once per snapshot (scoring.compiled) so a
score costs microseconds.

What is read, and when: when a snapshot is swapped in, :func:`load` reads from that published
snapshot (never the warehouse, which a running ``cdp run`` writes) the tables the publish step
copies for it (publish/snapshot.py ``serve_tables``): the saved ``cart_intent`` model's compiled
parameters, JSON numbers and no pickle (``serve_cart_model``, scoring.compiled's spec), the batch's features of each person's open cart at the scoring cutoff
(``serve_cart_features``, from int_cart_features' ``score`` rows), each person's history at that
cutoff (``serve_person_history``, from int_person_history) and the past return gaps
(``serve_cart_return_gaps``, from int_carts). The model is used only when it is the one that
scored the snapshot's ``cart_intent`` table (same ``model_version``), so live and batch scores
come from the same model.

Live features (:meth:`CartModel.features`), at time ``now``: the cart's own features from the
live session (its adds, value, last add, checkout), added to the batch's when it is the same
cart; the person's history features from the batch at the cutoff, moved on by what happened
live since (orders, sessions) and by the time elapsed (days since the last order, the cart's
age). With the same cart state at the cutoff they are the batch's features exactly (a test).
A person the batch had no open cart for (most who add to a cart live) gets their history
from int_person_history, which computes int_cart_features' history features per person with
the same macros and windows (on every score cart the two agree: tests/test_dbt_marts.py): the
counts at the cutoff, the last order's time (days since it, to now) and the two latest
visits (with the live ones, the previous visit before the live cart's first add). Only a
person with nothing before the cutoff (no order, visit in the year, email open in 90 days or
cart) gets the batch's "no history" defaults (``live_cart_no_batch_history``). The history
is held as arrays beside one sorted bytes array of person ids (:class:`PersonHistory`): 65
bytes a person with 13-byte ids, no Python object each (docs/benchmarks.md). Windowed counts (``web_sessions_30d``,
``orders_365d``) count live sessions and orders inside the window ending now; the batch's part
is its count at the cutoff, not aged (the snapshot has no dates to age it by; a run a day keeps
that within a day of the window).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import numpy as np

from core.published import (
    PERSON_HISTORY_COLUMNS,
    SERVE_CART_FEATURES,
    SERVE_CART_MODEL,
    SERVE_CART_RETURN_GAPS,
    SERVE_PERSON_HISTORY,
)
from scoring.cart import FEATURES, expected_return_hours
from scoring.compiled import CompiledModel

# int_cart_features' values for a person with no history (its coalesce defaults)
NO_HISTORY = {"orders_total": 0.0, "orders_365d": 0.0, "discounted_order_share": 0.0, "days_since_last_order": 730.0,
              "web_sessions_30d": 0.0, "days_since_previous_visit": 90.0, "email_opens_90d": 0.0,
              "past_abandoned_carts": 0.0, "past_carts_returned": 0.0}
CART_COLUMNS = ("cart_id", "last_added_at", "cart_value", "items_added", "checkout_started")
PREVIOUS_VISIT_GAP_S = 30 * 60  # int_cart_features: a visit 30 minutes before the cart's first add


def _epoch(ts) -> float:
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()
    return float(ts)


@dataclass
class BatchCart:
    """One person's row of int_cart_features at the scoring cutoff."""
    cart_id: str
    last_added_at: float
    cart_value: float
    items_added: float
    checkout_started: float
    history: dict[str, float]


HISTORY_COUNTS = ("orders_total", "orders_365d", "discounted_orders", "web_sessions_30d", "email_opens_90d",
                  "past_abandoned_carts", "past_carts_returned")
HISTORY_TIMES = ("last_ordered_at", "last_session_at", "previous_session_at")


def previous_visit_days(first_added_at: float, visits) -> float | None:
    """int_cart_features' days_since_previous_visit of a cart first added at ``first_added_at``:
    days from the latest visit starting more than a session timeout before it; None when none."""
    before = [v for v in visits if v == v and v < first_added_at - PREVIOUS_VISIT_GAP_S]
    return _days_between(max(before), first_added_at) if before else None


def _days_between(start: float, end: float) -> float:
    """dbt's days_between (datediff in seconds: whole-second boundaries crossed) / 86400."""
    return (math.floor(end) - math.floor(start)) / 86400


class PersonHistory:
    """int_person_history at the cutoff (``serve_person_history``), stored compactly: the person
    ids as one sorted bytes array (binary search), counts as int32 and times as float64 epoch
    seconds (NaN: none) in arrays aligned with it; no Python object per person."""

    def __init__(self, cutoff: float, person_ids: np.ndarray, counts: dict[str, np.ndarray],
                 times: dict[str, np.ndarray]):
        order = np.argsort(person_ids, kind="stable")
        self.cutoff = cutoff
        self.ids = person_ids[order]
        self.counts = {c: np.asarray(counts[c], dtype=np.int32)[order] for c in HISTORY_COUNTS}
        self.times = {c: np.asarray(times[c], dtype=np.float64)[order] for c in HISTORY_TIMES}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + sum(a.nbytes for a in (*self.counts.values(), *self.times.values()))

    def index(self, person_id: str) -> int | None:
        key = person_id.encode()
        if len(key) > self.ids.dtype.itemsize:
            return None
        i = int(np.searchsorted(self.ids, key))
        return i if i < len(self.ids) and self.ids[i] == key else None

    def visits(self, i: int) -> tuple[float, float]:
        return float(self.times["last_session_at"][i]), float(self.times["previous_session_at"][i])

    def features(self, i: int, first_added_at: float) -> dict[str, float]:
        """The history features at the cutoff of a cart first added at ``first_added_at``, as
        int_cart_features computes them for a cart that is not one of the person's own past carts
        (its days_since_previous_visit is exact for a cart first added at or after the
        cutoff, from the two latest visits before it; 90 when there is none)."""
        c = {k: float(v[i]) for k, v in self.counts.items()}
        last_order = float(self.times["last_ordered_at"][i])
        last, previous = self.visits(i)
        visit = previous_visit_days(first_added_at, (last, previous))
        return {"orders_total": c["orders_total"], "orders_365d": c["orders_365d"],
                "discounted_order_share": c["discounted_orders"] / c["orders_total"] if c["orders_total"] else 0.0,
                "days_since_last_order": (_days_between(last_order, self.cutoff) if last_order == last_order
                                          else NO_HISTORY["days_since_last_order"]),
                "web_sessions_30d": c["web_sessions_30d"],
                "days_since_previous_visit": NO_HISTORY["days_since_previous_visit"] if visit is None else visit,
                "email_opens_90d": c["email_opens_90d"], "past_abandoned_carts": c["past_abandoned_carts"],
                "past_carts_returned": c["past_carts_returned"]}


class CartModel:
    def __init__(self, model_version: str, features: list[str], compiled: CompiledModel, cutoff: float,
                 batch: dict[str, BatchCart], past_gaps_hours: np.ndarray, history: PersonHistory | None = None):
        self.model_version = model_version
        self.feature_names = list(features)
        self.compiled = compiled
        self.cutoff = cutoff
        self.batch = batch
        self.gaps = np.sort(np.asarray(past_gaps_hours, dtype=float))
        self.history = history

    def features(self, person_id: str, person, now: float) -> tuple[dict[str, float], str] | None:
        """(features, source) of the person's open cart now, or None when they have none.
        source: 'batch_cart' (the batch's cart, no live change), 'batch_cart_live' (the batch's
        cart with live adds), 'live_cart' (a cart the batch did not see), 'live_cart_history' (and
        a person the batch had no open cart for: history features from int_person_history),
        'live_cart_no_batch_history' (and a person with no history before the cutoff either:
        the batch's defaults)."""
        b = self.batch.get(person_id)
        hi = self.history.index(person_id) if b is None and self.history is not None else None
        adds = person.cart_adds if person is not None and person.cart_id else []
        live_orders = [t for t in (person.order_times if person is not None else ()) if t >= self.cutoff]
        if adds:
            after = [(at, v) for at, v in adds if at >= self.cutoff] if b and b.cart_id == person.cart_id else adds
            if b is not None and b.cart_id == person.cart_id:
                source = "batch_cart_live" if after else "batch_cart"
                items, value = b.items_added + len(after), b.cart_value + sum(v for _, v in after)
                last = max([b.last_added_at, *(at for at, _ in after)])
                checkout = max(b.checkout_started, 1.0 if person.cart_checkout_at is not None else 0.0)
                previous_visit = b.history["days_since_previous_visit"]
            else:
                source = ("live_cart" if b is not None else
                          "live_cart_history" if hi is not None else "live_cart_no_batch_history")
                items, value = float(len(adds)), sum(v for _, v in adds)
                last = max(at for at, _ in adds)
                checkout = 1.0 if person.cart_checkout_at is not None else 0.0
                first = min(at for at, _ in adds)
                if hi is not None:  # the visits before the cutoff and the live ones
                    previous_visit = previous_visit_days(first, (*person.session_starts, *self.history.visits(hi)))
                    previous_visit = NO_HISTORY["days_since_previous_visit"] if previous_visit is None else previous_visit
                else:
                    visits = [s for s in person.session_starts if s < first - PREVIOUS_VISIT_GAP_S]
                    previous_visit = ((first - max(visits)) / 86400 if visits
                                      else (b.history["days_since_previous_visit"] if b else NO_HISTORY["days_since_previous_visit"]))
        elif b is not None and not live_orders and not (person is not None and person.cart_emptied_at
                                                        and person.cart_emptied_at >= self.cutoff):
            source = "batch_cart"
            items, value, last, checkout = b.items_added, b.cart_value, b.last_added_at, b.checkout_started
            previous_visit = b.history["days_since_previous_visit"]
        else:
            return None
        if b is not None:
            h = dict(b.history)
        elif hi is not None:
            h = self.history.features(hi, first)
        else:
            h = dict(NO_HISTORY)
        if live_orders:
            total = h["orders_total"] + len(live_orders)
            h["discounted_order_share"] = h["discounted_order_share"] * h["orders_total"] / total
            h["orders_total"] = total
            h["orders_365d"] += sum(1 for t in live_orders if t >= now - 365 * 86400)
            h["days_since_last_order"] = (now - max(live_orders)) / 86400
        elif hi is not None:
            # from the last order's time: exact however long ago (the batch's row has days only)
            if h["orders_total"] > 0:
                h["days_since_last_order"] += (now - self.history.cutoff) / 86400
        elif h["days_since_last_order"] < NO_HISTORY["days_since_last_order"]:
            h["days_since_last_order"] += (now - self.cutoff) / 86400
        if person is not None:
            # live sessions in the window ending now (the batch's own count is as of its cutoff:
            # the snapshot holds counts, not the dates that would age them)
            h["web_sessions_30d"] += sum(1 for s in person.session_starts if s >= max(self.cutoff, now - 30 * 86400))
        h["days_since_previous_visit"] = previous_visit
        feats = {"cart_value": round(value, 2), "items_added": items, "hours_since_added": (now - last) / 3600,
                 "checkout_started": checkout, **h}
        return feats, source

    def probability(self, feats: dict[str, float]) -> float:
        return self.compiled.probability([feats[f] for f in self.feature_names])

    def expected_return_hours(self, hours_since_added: float) -> float | None:
        r = float(expected_return_hours(np.array([hours_since_added]), self.gaps)[0])
        return None if np.isnan(r) else round(r, 1)


def load(snapshot: duckdb.DuckDBPyConnection, published_version: str | None) -> CartModel | None:
    """The live cart model from the published snapshot (``snapshot``: a read-only connection to
    it), or None when the snapshot has no saved model (published before models were, or by a
    project that has not scored carts) or it is not the published scores' (``published_version``;
    None: nothing published to disagree with). Never opens the warehouse."""
    names = {r[0] for r in snapshot.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    if SERVE_CART_MODEL not in names:
        return None
    columns = {r[0] for r in snapshot.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
        [SERVE_CART_MODEL]).fetchall()}
    if "compiled" not in columns:  # an older snapshot that carried a pickle: never unpickled here
        return None
    row = snapshot.execute(f"SELECT model_version, fitted_as_of, compiled FROM main.{SERVE_CART_MODEL} "
                           "WHERE model = 'cart_intent'").fetchone()
    if row is None or row[2] is None:
        return None
    model_version, fitted_as_of, doc = row[0], row[1], json.loads(row[2])
    if list(doc.get("features") or []) != list(FEATURES):
        return None
    if published_version is not None and model_version != published_version:
        return None
    try:
        compiled = CompiledModel(spec=doc["model"])
    except (KeyError, TypeError, ValueError):  # a spec this version cannot read: the published scores answer
        return None
    history_cols = [f for f in FEATURES if f in NO_HISTORY]
    rows, gaps = None, np.zeros(0)
    if SERVE_CART_FEATURES in names:
        rows = snapshot.execute(
            f"SELECT person_id, epoch(cutoff_at) AS cutoff_at, cart_id, epoch(last_added_at) AS last_added_at, "
            f"{', '.join(CART_COLUMNS[2:])}, {', '.join(history_cols)} "
            f"FROM main.{SERVE_CART_FEATURES} ORDER BY person_id, last_added_at, cart_id").fetchnumpy()
    if SERVE_CART_RETURN_GAPS in names:
        gaps = snapshot.execute(f"SELECT return_gap_hours FROM main.{SERVE_CART_RETURN_GAPS}").fetchnumpy()[
            "return_gap_hours"]
    batch: dict[str, BatchCart] = {}
    cutoff = _epoch(fitted_as_of)
    if rows is not None and len(rows["person_id"]):
        cutoff = float(rows["cutoff_at"][-1])
        num = {c: np.nan_to_num(np.asarray(rows[c], dtype=float)).tolist()
               for c in (*CART_COLUMNS[1:], *history_cols)}
        for i, (pid, cart) in enumerate(zip(rows["person_id"].tolist(), rows["cart_id"].tolist())):
            # ordered: a person's latest cart comes last and stays (the cart the batch scores)
            batch[pid] = BatchCart(str(cart), num["last_added_at"][i], num["cart_value"][i], num["items_added"][i],
                                   num["checkout_started"][i], {c: num[c][i] for c in history_cols})
    history = _load_history(snapshot) if SERVE_PERSON_HISTORY in names else None
    if history is not None and not len(batch):
        cutoff = history.cutoff
    return CartModel(model_version, doc["features"], compiled, cutoff, batch, np.asarray(gaps, dtype=float), history)


def _floats(column) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan)


def _load_history(snapshot: duckdb.DuckDBPyConnection, relation: str = f"main.{SERVE_PERSON_HISTORY}"
                  ) -> PersonHistory | None:
    """``serve_person_history`` (or ``relation``, int_person_history's columns) as a
    :class:`PersonHistory`, or None when it is empty."""
    times = set(HISTORY_TIMES) | {"cutoff_at"}
    cols = ", ".join(f"epoch({c}) AS {c}" if c in times else c for c in PERSON_HISTORY_COLUMNS)
    rows = snapshot.execute(f"SELECT {cols} FROM {relation}").fetchnumpy()
    if not len(rows["person_id"]):
        return None
    ids = np.array([p.encode() for p in rows["person_id"].tolist()], dtype=bytes)
    del rows["person_id"]
    return PersonHistory(float(_floats(rows["cutoff_at"]).max()), ids,
                         {c: np.ma.filled(np.ma.asarray(rows[c]), 0) for c in HISTORY_COUNTS},
                         {c: _floats(rows[c]) for c in HISTORY_TIMES})
