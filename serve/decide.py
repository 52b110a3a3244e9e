"""Decisions at request time: cart intent for the live cart, and the next-best-offer with
consent, holdout and frequency caps applied now rather than at the last batch run.

Cart intent, live: the published cart-intent model run on the live session's features
(serve/cart_model.py; reason ``cart_intent_live_model``). Until that model is loaded (no saved
model in the snapshot, a model that is not the published one) the published
score of the person's cart stands in, else the mean published probability of the scored carts
nearest in value (reasons ``cart_intent_batch_score`` / ``cart_intent_value_cohort``). One
place: :func:`cart_intent`. Groups use the batch's cut points (``cart_intent.likely_at`` /
``unlikely_below``).
"""

from __future__ import annotations

import time

from core.settings.scoring import CartIntentSettings, OffersSettings
from serve.live import LiveState, Person

CHANNEL_CONSENT = {"email": "email_marketing", "sms": "sms_marketing", "web": "web_personalisation"}
CART_OFFERS = ("cart_reminder", "cart_reminder_discount")


def group_of(p: float, settings: CartIntentSettings) -> str:
    # the batch's rule (scoring.cart.intent_group), for one value
    return "likely" if p >= settings.likely_at else ("unlikely" if p < settings.unlikely_below else "on_the_fence")


def cart_intent(state: LiveState, person_id: str, person: Person | None, cart_value: float | None,
                settings: CartIntentSettings) -> dict | None:
    """Cart intent of the person's open cart (live or given), or None without a cart."""
    model = state.cart_model
    got = model.features(person_id, person, time.time()) if model is not None else None
    if got is not None:
        feats, source = got
        if cart_value is not None:  # the caller's cart (context.cart.value) over the session's
            feats["cart_value"], source = cart_value, source + "_given_value"
        p = model.probability(feats)
        return {"cart_id": person.cart_id if person is not None and person.cart_id else model.batch[person_id].cart_id,
                "cart_value": feats["cart_value"], "purchase_probability": round(p, 6),
                "intent_group": group_of(p, settings),
                "expected_return_hours": model.expected_return_hours(feats["hours_since_added"]),
                "model_version": model.model_version, "features": source, "reason": "cart_intent_live_model"}
    if model is not None and cart_value is None:
        return None  # the model knows the person has no open cart
    live_value = person.cart_value if person is not None and person.cart else None
    value = cart_value if cart_value is not None else live_value
    pub = state.published
    scored = pub.cart_intent.get(person_id) if pub else None
    if value is None and scored is None:
        return None
    if scored is not None and (value is None or person is None or not person.cart_id or person.cart_id == scored[0]):
        p, source, version, ret = float(scored[2]), "batch_score", scored[5], scored[4]
        value = value if value is not None else float(scored[1] or 0)
    else:
        est = pub.cohort_probability(value) if pub else None
        if est is None:
            return {"cart_value": value, "purchase_probability": None, "intent_group": None,
                    "reason": "no_published_model"}
        p, source, version, ret = est, "value_cohort", None, None
    return {"cart_id": person.cart_id if person is not None and person.cart_id else (scored[0] if scored else None),
            "cart_value": value, "purchase_probability": round(p, 6), "intent_group": group_of(p, settings),
            "expected_return_hours": ret, "model_version": version, "reason": f"cart_intent_{source}"}


def next_best_offer(state: LiveState, person_id: str, person: Person | None, intent: dict | None,
                    offers: OffersSettings, sent_7d: int) -> dict:
    """The published offer, re-checked now: holdout, live consent, the frequency cap, a cart
    bought since the batch, and a live cart the batch did not see."""
    pub = state.published
    row = pub.offers.get(person_id) if pub else None
    reasons: list[str] = []
    if row is not None and row[4]:  # holdout
        return {"offer": "holdout", "channel": "none", "reason_codes": ["holdout"], "experiment": row[5], "arm": row[6]}
    offer, channel = (row[0], row[1]) if row is not None else ("none", "none")
    if row is not None:
        reasons += [r for r in (row[3] or "").split(",") if r]
    if person is not None and offer in CART_OFFERS and not person.cart:
        offer, channel = "none", "none"
        reasons.append("cart_bought_since_batch" if person.last_order_at else "cart_emptied_since_batch")
    if offer == "none" and intent is not None and intent.get("intent_group") in ("on_the_fence", "unlikely"):
        offer, channel = ("cart_reminder_discount" if intent["intent_group"] == "unlikely" else "cart_reminder"), "email"
        reasons.append(f"live_cart_intent_{intent['intent_group']}")
    if intent is not None and intent.get("intent_group") == "likely" and offer == "cart_reminder_discount":
        offer = "cart_reminder"
        reasons.append("no_discount_likely_buyer")
    if channel in CHANNEL_CONSENT:
        ok, _src = state.consent_of(person, person_id, CHANNEL_CONSENT[channel])
        if not ok:
            reasons.append(f"no_consent_{CHANNEL_CONSENT[channel]}")
            offer, channel = "none", "none"
    if channel == "email" and sent_7d >= offers.max_emails_per_7_days:
        reasons.append("frequency_capped")
        offer, channel = "none", "none"
    return {"offer": offer, "channel": channel, "reason_codes": reasons,
            "experiment": row[5] if row is not None else None, "arm": row[6] if row is not None else None}


def decide(state: LiveState, web_id: str, context: dict, cart_settings: CartIntentSettings,
           offers: OffersSettings, sent_7d) -> dict:
    started = time.perf_counter()
    person_id = state.person_key(web_id)
    person = state.get(person_id)
    cart = context.get("cart") if isinstance(context.get("cart"), dict) else {}
    value = cart.get("value")
    value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    with state.lock:
        intent = cart_intent(state, person_id, person, value, cart_settings)
        nbo = next_best_offer(state, person_id, person, intent, offers, sent_7d(person_id))
    return {
        "person_id": None if person_id.startswith("provisional:") else person_id,
        "provisional": person_id.startswith("provisional:"),
        "cart_intent": intent,
        "next_best_offer": nbo,
        "snapshot": state.published.run_id if state.published else None,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }
