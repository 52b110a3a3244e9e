"""What the server knows about people: the published snapshot, and live state since it.

:class:`Published` holds what decisions need from the current snapshot in memory (web ids ->
person, consent, cart intent, next-best-offer) and opens the snapshot sealed and read-only
(core.snapshots) for the rest of a profile. :class:`LiveState` is the embedded store of what
happened since: per person, the session, the cart, the last views and consent changes; ids
linked live by identify/alias; a provisional profile for an id the snapshot does not know.
Live state is rebuilt at start by replaying the log segments the collector landed (the log is
its durable record), so a restart keeps carts and consent changes.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core.published import CONSENT_CHANNELS
from core.segment_spec import normalise_events
from core.snapshots import open_snapshot, read_manifest, snapshot_file

log = logging.getLogger("tessera.serve")

WEB_ID_ENTITIES = ("anonymous_id", "user_id")
APPLY_SLICE = 200


def _rows(con, sql: str, params=()) -> list[tuple]:
    try:
        return con.execute(sql, params).fetchall()
    except Exception as e:  # a snapshot without this table (an older publish): nothing known of it
        log.warning("published snapshot: %s", type(e).__name__)
        return []


class Published:
    """One published snapshot, loaded for decisions. Immutable once built."""

    def __init__(self, published_dir: Path, web_source: str):
        manifest = read_manifest(published_dir)
        self.run_id = manifest.get("current")
        self.person_of: dict[str, str] = {}
        self.persons: set[str] = set()
        self.consent: dict[str, dict[str, str]] = {}
        self.cart_intent: dict[str, tuple] = {}
        self.offers: dict[str, tuple] = {}
        self._value_p: list[tuple[float, float]] = []
        self.con = None
        if self.run_id is None:
            return
        self.path = snapshot_file(published_dir, self.run_id)
        self.con = open_snapshot(self.path)
        self.persons = {r[0] for r in _rows(self.con, "SELECT person_id FROM customers")}
        for sid, pid in _rows(self.con, "SELECT source_record_id, person_id FROM identity_graph "
                                        "WHERE source = ? AND entity IN ('anonymous_id', 'user_id')", [web_source]):
            self.person_of[sid] = pid
        for pid, channel, status in _rows(self.con, "SELECT person_id, channel, status FROM consent"):
            self.consent.setdefault(pid, {})[channel] = status
        for row in _rows(self.con, "SELECT person_id, cart_id, CAST(cart_value AS DOUBLE), "
                                   "CAST(purchase_probability AS DOUBLE), intent_group, "
                                   "CAST(expected_return_hours AS DOUBLE), model_version FROM cart_intent"):
            self.cart_intent[row[0]] = row[1:]
        self._value_p = sorted((float(r[1] or 0), float(r[2])) for r in self.cart_intent.values())
        for row in _rows(self.con, "SELECT person_id, offer, channel, expected_value, reason_codes, holdout, "
                                   "experiment, arm FROM next_best_offer"):
            self.offers[row[0]] = row[1:]

    @staticmethod
    def current_run(published_dir: Path) -> str | None:
        return read_manifest(published_dir).get("current")

    def cohort_probability(self, cart_value: float) -> float | None:
        """The published model's mean probability over the scored carts nearest in value (the
        50 either side): the estimate for a cart the batch has not scored."""
        if not self._value_p:
            return None
        i = bisect.bisect_left(self._value_p, (cart_value, -1.0))
        near = self._value_p[max(0, i - 50):i + 50]
        return sum(p for _, p in near) / len(near)

    def query(self, sql: str, params) -> list[dict]:
        if self.con is None:
            return []
        cur = self.con.cursor()
        try:
            res = cur.execute(sql, params)
            names = [d[0] for d in res.description]
            return [dict(zip(names, r)) for r in res.fetchall()]
        except Exception as e:
            log.warning("published snapshot query: %s", type(e).__name__)
            return []
        finally:
            cur.close()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


@dataclass
class Person:
    key: str                                 # published person_id, or provisional:<id>
    ids: set = field(default_factory=set)
    last_seen: float = 0.0
    session_started: float = 0.0
    sessions: int = 0
    events: int = 0
    views: deque = field(default_factory=lambda: deque(maxlen=10))
    cart: dict = field(default_factory=dict)  # sku -> {quantity, price}
    cart_id: str | None = None
    cart_added_at: float | None = None
    items_added: int = 0
    checkout_started: bool = False
    consent: dict = field(default_factory=dict)  # channel -> (granted, event time)
    last_order_at: float | None = None
    # what the live cart-intent features need (serve/cart_model.py)
    cart_adds: list = field(default_factory=list)  # (time, line value) of each add to the current cart
    cart_checkout_at: float | None = None  # checkout started on the current cart (not reset by a later add)
    cart_emptied_at: float | None = None  # the last cart closed (ordered)
    session_starts: deque = field(default_factory=lambda: deque(maxlen=64))
    order_times: deque = field(default_factory=lambda: deque(maxlen=64))

    @property
    def cart_value(self) -> float:
        return round(sum(i["quantity"] * i["price"] for i in self.cart.values()), 2)


def _epoch(ts: str | None, default: float) -> float:
    if not ts:
        return default
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _num(v, default=0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


class LiveState:
    """The live store. Every method takes the lock: events arrive on one thread, reads on others."""

    def __init__(self, session_minutes: int, event_names: dict[str, str] | None = None):
        self.session_s = session_minutes * 60
        self.event_names = event_names or {}
        self.published: Published | None = None
        self.cart_model = None                # serve.cart_model.CartModel of the published snapshot, or None
        self.link: dict[str, str] = {}        # web id -> the id it was linked to (identify / alias)
        self.members: dict[str, set] = {}     # root id -> every web id linked to it
        self.people: dict[str, Person] = {}
        self.lock = threading.RLock()
        self.listeners: list = []             # callables(kind, person, event) (triggers)
        self.applied = 0
        self.last_applied_at = 0.0

    # ------------------------------------------------------------------ identity
    def _root(self, web_id: str) -> str:
        seen = 0
        while web_id in self.link and seen < 50:
            web_id, seen = self.link[web_id], seen + 1
        return web_id

    def person_key(self, web_id: str) -> str:
        """Published person of the id or of any id linked to it; else provisional."""
        with self.lock:
            pub = self.published.person_of if self.published else {}
            if web_id in pub:
                return pub[web_id]
            if self.published and web_id in self.published.persons:
                return web_id
            root = self._root(web_id)
            for candidate in self.members.get(root, (root,)):
                if candidate in pub:
                    return pub[candidate]
            return "provisional:" + root

    def _person(self, key: str) -> Person:
        p = self.people.get(key)
        if p is None:
            p = self.people[key] = Person(key)
        return p

    def _merge(self, into: Person, other: Person) -> None:
        into.ids |= other.ids
        into.events += other.events
        into.views.extend(other.views)
        for sku, item in other.cart.items():
            into.cart.setdefault(sku, item)
        into.cart_id = into.cart_id or other.cart_id
        into.cart_added_at = into.cart_added_at or other.cart_added_at
        into.items_added += other.items_added
        if into.cart_id == other.cart_id:
            into.cart_adds = sorted(into.cart_adds + other.cart_adds)
        into.cart_checkout_at = into.cart_checkout_at or other.cart_checkout_at
        into.session_starts = deque(sorted([*into.session_starts, *other.session_starts]), maxlen=64)
        into.order_times = deque(sorted([*into.order_times, *other.order_times]), maxlen=64)
        into.consent = {**other.consent, **into.consent}
        into.last_seen = max(into.last_seen, other.last_seen)

    def _link(self, a: str, b: str) -> None:
        """Link two web ids; a provisional profile of either joins the other's."""
        before = {self.person_key(a), self.person_key(b)}
        ra, rb = self._root(a), self._root(b)
        if ra != rb:
            moved = self.members.pop(ra, {ra})
            for m in moved:  # every id points at its root directly: lookups stay one hop
                self.link[m] = rb
            self.members[rb] = self.members.get(rb, {rb}) | moved
        after = self.person_key(b)
        for key in before - {after}:
            if key in self.people:
                self._merge(self._person(after), self.people.pop(key))

    def set_published(self, published: Published) -> None:
        """Hot swap: provisional profiles the new snapshot knows join their published person."""
        with self.lock:
            old, self.published = self.published, published
            for key in [k for k in self.people if k.startswith("provisional:")]:
                person = self.people[key]
                resolved = next((published.person_of[i] for i in person.ids if i in published.person_of), None)
                if resolved:
                    self._merge(self._person(resolved), self.people.pop(key))
        if old is not None:
            # requests running on the old snapshot finish first; its connection closes with it
            threading.Timer(30.0, old.close).start()

    # ------------------------------------------------------------------ events
    def apply(self, records: list[dict]) -> None:
        """Apply landed records (the collector's dicts) in order, normalised by core.segment_spec."""
        if not records:
            return
        # traits are not part of live state (profiles read them from the snapshot)
        events = normalise_events(records, self.event_names, fields=("timestamp", "event"))
        now = time.time()
        # the lock in slices: a decision waits for at most APPLY_SLICE events, not a whole batch
        for i in range(0, len(events), APPLY_SLICE):
            with self.lock:
                for e in events[i:i + APPLY_SLICE]:
                    self._apply_one(e, now)
                self.applied += len(events[i:i + APPLY_SLICE])
                self.last_applied_at = time.time()

    def _apply_one(self, e: dict, now: float) -> None:
        anon, user = e.get("anonymousId"), e.get("userId")
        if e["type"] == "alias" and e.get("previousId") and user:
            self._link(str(e["previousId"]), str(user))
        if anon and user:
            self._link(str(anon), str(user))
        web_id = str(user or anon)
        person = self._person(self.person_key(web_id))
        person.ids.update(str(i) for i in (anon, user) if i)
        at = _epoch(e.get("timestamp"), now)
        if at - person.last_seen > self.session_s:
            person.sessions += 1
            person.session_started = at
            person.session_starts.append(at)
        person.last_seen = max(person.last_seen, at)
        person.events += 1
        props = e.get("properties") or {}
        name = e.get("event")
        kind = None
        if e["type"] == "track" and name == "product_viewed":
            person.views.append({"sku": props.get("sku") or props.get("product_id"), "at": at})
        elif e["type"] == "track" and name == "product_added":
            sku = str(props.get("sku") or props.get("product_id") or "")
            item = person.cart.setdefault(sku, {"quantity": 0, "price": _num(props.get("price"))})
            item["quantity"] += int(_num(props.get("quantity"), 1) or 1)
            person.items_added += 1
            if person.cart_added_at is None or props.get("cart_id") not in (None, person.cart_id):
                person.cart_added_at = at
                person.cart_adds, person.cart_checkout_at = [], None
            person.cart_adds.append((at, _num(props.get("price")) * (_num(props.get("quantity"), 1) or 1)))
            person.cart_id = str(props.get("cart_id") or person.cart_id or f"live-{person.key}-{int(at)}")
            person.checkout_started = False
            kind = "cart_added"
        elif e["type"] == "track" and name == "checkout_started":
            person.checkout_started = True
            if person.cart_id and person.cart_checkout_at is None:
                person.cart_checkout_at = at
            kind = "checkout_started"
        elif e["type"] == "track" and name == "order_completed":
            person.cart, person.cart_id, person.cart_added_at = {}, None, None
            person.items_added, person.checkout_started = 0, False
            person.cart_adds, person.cart_checkout_at, person.cart_emptied_at = [], None, at
            person.last_order_at = at
            person.order_times.append(at)
            kind = "order_completed"
        elif e["type"] == "track" and name == "consent_updated":
            channel = props.get("channel")
            if channel in CONSENT_CHANNELS:
                granted = props.get("granted") in (True, "true", "True", 1, "1")
                person.consent[channel] = (granted, at)
                kind = "consent_updated"
        for listener in self.listeners:
            if kind:
                listener(kind, person, e)

    # ------------------------------------------------------------------ reads
    def get(self, web_or_person_id: str) -> Person | None:
        with self.lock:
            if web_or_person_id in self.people:
                return self.people[web_or_person_id]
            return self.people.get(self.person_key(web_or_person_id))

    def consent_of(self, person: Person | None, person_id: str, channel: str) -> tuple[bool, str]:
        """Consent on a channel: a live change since the snapshot wins, else the published
        status; no signal at all is no consent."""
        if person is not None and channel in person.consent:
            return person.consent[channel][0], "live"
        status = (self.published.consent.get(person_id, {}) if self.published else {}).get(channel)
        return status == "granted", "published" if status else "none"

    def replay(self, paths: list[Path], since: float) -> int:
        """Apply the landed serve files modified since ``since`` (rebuild after a restart)."""
        n = 0
        for path in sorted(paths, key=lambda p: p.stat().st_mtime):
            if path.stat().st_mtime < since:
                continue
            records = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            for i in range(0, len(records), 5000):
                self.apply(records[i:i + 5000])
            n += len(records)
        return n
