"""Cart abandonment: an add-to-cart with no checkout within the window -> a nudge, through
activation's webhook destination (signed, retried, idempotent by event id) or as a Klaviyo
event (activation/destinations/klaviyo_events.py: Create Event, idempotent by the cart id) for
a Klaviyo flow to send.

When the window of a cart ends, the person gets one if their cart intent is in one of the
configured groups and they consent on the configured channel (live consent wins over the
published one); a checkout or a purchase inside the window cancels it. Sends are recorded in
the nudge log batch syncs share (activation/nudges.py): one per cart ever, and at most
``max_per_person_per_day`` per person on the channel counting a batch sync's nudges, across restarts (the log replay at start re-arms
pending carts; the store keeps what was already sent from going twice).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from activation.destinations.klaviyo_events import KlaviyoEvents
from activation.destinations.webhook import WebhookDestination
from activation.nudges import NudgeLog
from activation.plan import Change
from core.settings.serve import CartAbandonment, KlaviyoEvent
from serve.live import LiveState, Person

log = logging.getLogger("tessera.serve")


class SendStore:
    """What was sent, in the nudge log a batch sync shares (activation/nudges.py): the frequency
    caps count both."""

    ORIGIN = "cart_abandonment"

    def __init__(self, path: Path):
        self.log = NudgeLog(path)

    def sent_cart(self, cart_id: str) -> bool:
        return self.log.sent(self.ORIGIN, cart_id)

    def count_since(self, person_id: str, since: float, channel: str | None = None) -> int:
        return self.log.count_since(person_id, since, channel)

    def record(self, cart_id: str, person_id: str, channel: str, at: float) -> None:
        self.log.record([(self.ORIGIN, cart_id, person_id, channel, at)])

    def close(self) -> None:
        self.log.close()


class CartAbandonmentTrigger:
    def __init__(self, cfg: CartAbandonment, state: LiveState, store: SendStore,
                 intent_of: Callable[[str, Person], dict | None]):
        self.cfg = cfg
        self.state = state
        self.store = store
        self.intent_of = intent_of
        d = cfg.destination
        self.destination = (KlaviyoEvents("serve.cart_abandonment", d.base_url, d.api_key_env, d.revision, cfg.retry)
                            if isinstance(d, KlaviyoEvent) else WebhookDestination("cart_abandonment", d, cfg.retry))
        self._due: list[tuple[float, str, str]] = []  # (due, person key, cart_id)
        self._cond = threading.Condition()
        self._stop = False
        self.fired: list[dict] = []
        self.skipped: dict[str, int] = {}
        state.listeners.append(self.on_event)
        self._thread = threading.Thread(target=self._run, name="cart-abandonment", daemon=True)
        self._thread.start()

    def on_event(self, kind: str, person: Person, event: dict) -> None:
        if kind == "cart_added" and person.cart_id and person.cart_added_at is not None:
            # the window runs from the cart's first add, measured in server time from now
            # for a live event (a replayed old one is due at once)
            due = time.time() + max(0.0, self.cfg.window_seconds - max(0.0, time.time() - person.cart_added_at))
            with self._cond:
                heapq.heappush(self._due, (due, person.key, person.cart_id))
                self._cond.notify()

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def _check(self, person_key: str, cart_id: str) -> None:
        with self.state.lock:
            person = self.state.people.get(person_key)
            if person is None:  # merged into a published person since
                person = self.state.get(person_key.removeprefix("provisional:"))
            if person is None or person.cart_id != cart_id or not person.cart:
                return self._skip("bought_or_emptied")
            if person.checkout_started:
                return self._skip("checkout_started")
            key = person.key
            intent = self.intent_of(key, person)
            consent, _src = self.state.consent_of(person, key, self.cfg.consent_channel)
            fields = {"cart_id": cart_id, "cart_value": person.cart_value,
                      "items": [{"sku": s, **i} for s, i in person.cart.items()],
                      "intent_group": intent.get("intent_group") if intent else None,
                      "purchase_probability": intent.get("purchase_probability") if intent else None}
        if not intent or intent.get("intent_group") not in self.cfg.intent_groups:
            return self._skip("intent_group")
        if not consent:
            return self._skip("no_consent")
        if self.store.sent_cart(cart_id):
            return self._skip("already_sent")
        if self.store.count_since(key, time.time() - 86400, self.cfg.consent_channel) >= self.cfg.max_per_person_per_day:
            return self._skip("frequency_capped")
        try:
            if isinstance(self.destination, KlaviyoEvents):
                profile = self._klaviyo_profile(key)
                if profile is None:
                    return self._skip("no_klaviyo_identifier")
                self.destination.send(self.cfg.destination.metric, profile, cart_id, fields, fields["cart_value"],
                                      time.time())
                ok = True
            else:
                change = Change(action="upsert", person_id=key, key=cart_id,
                                fields={"trigger": "cart_abandonment", **fields}, field_hash=cart_id, dest_id=None,
                                reason="cart_abandoned")
                outcomes = [o for batch in self.destination.deliver("cart_abandoned", [change]) for o in batch]
                ok = bool(outcomes) and outcomes[0].ok
        except Exception as e:
            log.error("cart abandonment %s failed: %s", self.destination.name, type(e).__name__)
            return self._skip("delivery_failed")
        if ok:
            self.store.record(cart_id, key, self.cfg.consent_channel, time.time())
            self.fired.append({"person_id": key, "cart_id": cart_id, "at": time.time()})
            log.info("cart abandonment nudge sent for cart %s", cart_id)

    def _klaviyo_profile(self, person_id: str) -> dict | None:
        """The Klaviyo profile's identifier: external_id = person_id, or the published email.
        A provisional person has neither (no Klaviyo profile can be theirs yet)."""
        if person_id.startswith("provisional:"):
            return None
        if self.cfg.destination.identifier == "person_id":
            return {"external_id": person_id}
        pub = self.state.published
        rows = pub.query("SELECT email FROM customers WHERE person_id = ?", [person_id]) if pub else []
        email = rows[0].get("email") if rows else None
        return {"email": email} if email else None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._due or self._due[0][0] > time.time()):
                    self._cond.wait(timeout=(self._due[0][0] - time.time()) if self._due else 1.0)
                if self._stop:
                    return
                _, person_key, cart_id = heapq.heappop(self._due)
            try:
                self._check(person_key, cart_id)
            except Exception as e:  # one bad cart must not stop the trigger
                log.error("cart abandonment check failed: %s", type(e).__name__)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)
        self.destination.close()
