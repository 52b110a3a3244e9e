"""`cdp serve` live: profiles from the published snapshot joined with live sessions, decisions
with consent and holdout at request time, the snapshot hot-swapped, and cart-abandonment
nudges through the webhook destination within seconds."""

from __future__ import annotations

import base64
import time

import requests

from core.config import load_config
from tests.serve_world import (
    READ_KEY,
    WRITE_KEY,
    ServerThread,
    WebhookReceiver,
    publish_world,
    write_project,
)

W = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
R = {"Authorization": f"Bearer {READ_KEY}"}

PERSONS = {
    # published: a cart the batch scored on the fence, consent, an offer
    "P1": {"anon": "anon-1", "user": "user-1", "consent": {"email_marketing": "granted"},
           "cart": ("c-1", 80.0, 0.12, "on_the_fence"), "offer": ("cart_reminder", "email", False)},
    # in the holdout
    "P2": {"anon": "anon-2", "consent": {"email_marketing": "granted"},
           "cart": ("c-2", 40.0, 0.2, "on_the_fence"), "offer": ("cart_reminder", "email", True)},
    # no consent
    "P3": {"anon": "anon-3", "consent": {"email_marketing": "denied"},
           "cart": ("c-3", 50.0, 0.15, "on_the_fence"), "offer": ("cart_reminder", "email", False)},
    # a likely buyer
    "P4": {"anon": "anon-4", "consent": {"email_marketing": "granted"},
           "cart": ("c-4", 300.0, 0.8, "likely"), "offer": ("none", "none", False)},
}


def _track(url, anon, event, props, user=None, mid=None):
    ev = {"type": "track", "event": event, "anonymousId": anon, "properties": props}
    if user:
        ev["userId"] = user
    if mid:
        ev["messageId"] = mid
    r = requests.post(url + "/v1/track", json=ev, headers=W)
    assert r.status_code == 200


def _until(cond, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_profiles_and_decisions_join_the_snapshot_with_live_events(tmp_path):
    config = load_config(write_project(tmp_path / "p"))
    publish_world(config.published_dir, persons=PERSONS)
    with ServerThread(config) as srv:
        url = srv.url
        assert requests.get(url + "/v1/profiles/P1", headers=W).status_code == 401  # a write key cannot read
        p = requests.get(url + "/v1/profiles/anon-1", headers=R).json()
        assert p["person_id"] == "P1" and p["segments"] == ["vip"] and p["traits"]["order_count"] == 3
        assert p["consent"]["email_marketing"] == {"granted": True, "source": "published"}
        assert p["recommendations"][0]["sku"] == "SKU-1" and p["live"] is None
        d = requests.post(url + "/v1/decide", json={"userId": "user-1"}, headers=R).json()
        assert d["cart_intent"]["intent_group"] == "on_the_fence" and d["cart_intent"]["reason"] == "cart_intent_batch_score"
        assert d["next_best_offer"]["offer"] == "cart_reminder"
        hold = requests.post(url + "/v1/decide", json={"anonymousId": "anon-2"}, headers=R).json()
        assert hold["next_best_offer"]["offer"] == "holdout"
        no = requests.post(url + "/v1/decide", json={"anonymousId": "anon-3"}, headers=R).json()
        assert no["next_best_offer"]["offer"] == "none"
        assert "no_consent_email_marketing" in no["next_best_offer"]["reason_codes"]

        # live: a consent withdrawal and a purchase change the next decision at once
        _track(url, "anon-1", "Consent Updated", {"channel": "email_marketing", "granted": False})
        _track(url, "anon-1", "Product Viewed", {"sku": "SKU-9"})
        assert _until(lambda: requests.get(url + "/v1/profiles/P1", headers=R).json()["live"] is not None
                      and requests.get(url + "/v1/profiles/P1", headers=R).json()["live"]["last_views"])
        p = requests.get(url + "/v1/profiles/P1", headers=R).json()
        assert p["consent"]["email_marketing"] == {"granted": False, "source": "live"}
        assert p["live"]["last_views"][0]["sku"] == "SKU-9"
        d = requests.post(url + "/v1/decide", json={"person_id": "P1"}, headers=R).json()
        assert d["next_best_offer"]["offer"] == "none"

        # an unknown device gets a provisional profile; identify links it to a known user live
        _track(url, "anon-new", "Product Added", {"sku": "SKU-5", "price": 20, "quantity": 2, "cart_id": "c-new"})
        assert _until(lambda: requests.get(url + "/v1/profiles/anon-new", headers=R).status_code == 200)
        prov = requests.get(url + "/v1/profiles/anon-new", headers=R).json()
        assert prov["provisional"] and prov["live"]["cart"]["value"] == 40.0
        d = requests.post(url + "/v1/decide", json={"anonymousId": "anon-new"}, headers=R).json()
        assert d["provisional"] and d["cart_intent"]["reason"] == "cart_intent_value_cohort"
        r = requests.post(url + "/v1/identify", json={"anonymousId": "anon-new", "userId": "user-1"}, headers=W)
        assert r.status_code == 200
        assert _until(lambda: requests.get(url + "/v1/profiles/anon-new", headers=R).json()["person_id"] == "P1")
        assert requests.get(url + "/v1/profiles/P1", headers=R).json()["live"]["cart"]["value"] == 40.0

        # hot swap: a new publish is picked up without a restart
        publish_world(config.published_dir, persons={**PERSONS, "P5": {"anon": "anon-5"}}, run_id="run0002")
        assert _until(lambda: requests.get(url + "/health").json()["snapshot"] == "run0002", timeout=6)
        assert requests.get(url + "/v1/profiles/anon-5", headers=R).json()["person_id"] == "P5"
        assert requests.get(url + "/v1/profiles/nobody", headers=R).status_code == 404


def test_cart_abandonment_nudges_on_the_fence_with_consent_and_is_cancelled_by_a_purchase(tmp_path):
    with WebhookReceiver() as hook:
        config = load_config(write_project(tmp_path / "p", cart_abandonment={
            "window_seconds": 1.0, "destination": {"type": "webhook", "url": hook.url,
                                                   "secret_env": "TESSERA_HOOK_SECRET"}}))
        publish_world(config.published_dir, persons={**PERSONS, "P6": {**PERSONS["P1"], "anon": "anon-6", "user": None,
                                                                        "cart": ("c-6", 80.0, 0.12, "on_the_fence")}})
        with ServerThread(config) as srv:
            url = srv.url
            started = time.time()
            add = {"sku": "SKU-1", "price": 40, "quantity": 2}
            _track(url, "anon-1", "Product Added", {**add, "cart_id": "c-1"})   # on the fence, consent: nudged
            _track(url, "anon-3", "Product Added", {**add, "cart_id": "c-3"})   # no consent: nothing
            _track(url, "anon-4", "Product Added", {**add, "cart_id": "c-4"})   # likely: nothing
            _track(url, "anon-6", "Product Added", {**add, "cart_id": "c-6"})   # buys within the window
            _track(url, "anon-6", "Order Completed", {"order_id": "o-6", "revenue": 80})
            assert _until(lambda: len(hook.events) >= 1, timeout=5)
            time.sleep(1.0)  # every window has ended; nothing else may arrive
            assert [(e["person_id"], e["key"]) for e in hook.events] == [("P1", "c-1")]
            assert hook.events[0]["fields"]["intent_group"] == "on_the_fence"
            assert hook.events[0]["received"] - started < 3.0
            skipped = srv.server.trigger.skipped
            assert skipped.get("no_consent") == 1 and skipped.get("intent_group") == 1
            assert skipped.get("bought_or_emptied") == 1
            # the same cart again later: one nudge per cart (and the per-day cap)
            _track(url, "anon-1", "Product Added", {**add, "cart_id": "c-1"})
            time.sleep(1.5)
            assert len(hook.events) == 1 and hook.refused == 0
