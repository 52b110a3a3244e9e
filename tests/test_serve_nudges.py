"""Cart-abandonment nudges delivered as Klaviyo events: Create Event at the configured revision,
every request checked by the local Klaviyo against Klaviyo's published OpenAPI definition, sent
only for a person who consents on the flow's channel, one event per cart; and one frequency cap
across live nudges and batch syncs (the shared nudge log)."""

from __future__ import annotations

import base64
import os
import time

import pytest
import requests
import yaml

from activation.contract import spec
from activation.destinations.klaviyo_events import KlaviyoEvents
from activation.local_servers import LocalKlaviyo
from activation.sync import run_sync
from core.config import ConfigError, load_config
from core.settings.activation import KLAVIYO_REVISION
from tests.serve_world import WRITE_KEY, ServerThread, WebhookReceiver, publish_world, write_project

W = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
os.environ["TESSERA_KLAVIYO_KEY"] = "pk_test"
HEADERS = {"revision": KLAVIYO_REVISION, "content-type": "application/vnd.api+json"}


def test_create_event_body_matches_klaviyos_definition():
    good = KlaviyoEvents.body("Cart Abandoned", {"external_id": "P1"}, "c-1", {"cart_id": "c-1"}, 80.0, time.time())
    assert spec("klaviyo").check("POST", "/api/events", HEADERS, good) is None
    no_metric = {"data": {"type": "event", "attributes": {k: v for k, v in good["data"]["attributes"].items()
                                                           if k != "metric"}}}
    assert "metric" in spec("klaviyo").check("POST", "/api/events", HEADERS, no_metric)
    typo = {"data": {"type": "event", "attributes": {**good["data"]["attributes"], "uniqueId": "c-1"}}}
    assert spec("klaviyo").check("POST", "/api/events", HEADERS, typo) is not None
    assert "retired" in spec("klaviyo").check("POST", "/api/events", {**HEADERS, "revision": "2023-01-24"}, good)


def test_a_klaviyo_destination_needs_an_email_or_sms_consent_channel(tmp_path):
    with pytest.raises(ConfigError, match="consent_channel"):
        load_config(write_project(tmp_path, cart_abandonment={
            "consent_channel": "web_personalisation",
            "destination": {"type": "klaviyo", "api_key_env": "TESSERA_KLAVIYO_KEY"}}))


def _add_to_cart(url: str, anon: str, cart: str) -> None:
    r = requests.post(url + "/v1/track", headers=W, json={
        "type": "track", "event": "Product Added", "anonymousId": anon,
        "properties": {"sku": "SKU-1", "price": 40, "quantity": 2, "cart_id": cart}})
    assert r.status_code == 200


def _until(cond, timeout: float = 6.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.05)


def test_klaviyo_nudges_with_consent_and_one_frequency_cap_across_live_and_batch(tmp_path):
    """Live first: P1 gets a Klaviyo event, so the batch sync (cap 1 a day on email) leaves P1
    out and reaches P5; then P5's live abandonment is capped by that batch send."""
    on_the_fence = lambda cart: (cart, 80.0, 0.12, "on_the_fence")  # noqa: E731
    with LocalKlaviyo(api_key="pk_test") as k, WebhookReceiver() as hook:
        path = write_project(tmp_path / "p", cart_abandonment={
            "window_seconds": 1.0,
            "destination": {"type": "klaviyo", "base_url": k.url, "api_key_env": "TESSERA_KLAVIYO_KEY"}})
        raw = yaml.safe_load(path.read_text())
        raw["syncs"] = [{"name": "cart_nudge", "source": {"segment": "vip"}, "identifier": "person_id",
                         "destination": {"type": "webhook", "url": hook.url, "secret_env": "TESSERA_HOOK_SECRET"},
                         "consent": {"channel": "email_marketing"}, "frequency_cap": {"max": 1, "days": 1}}]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = load_config(path)
        publish_world(config.published_dir, persons={
            "P1": {"anon": "anon-1", "consent": {"email_marketing": "granted"}, "cart": on_the_fence("c-1")},
            "P3": {"anon": "anon-3", "consent": {"email_marketing": "denied"}, "cart": on_the_fence("c-3")},
            "P5": {"anon": "anon-5", "consent": {"email_marketing": "granted"}, "cart": on_the_fence("c-5")}})
        with ServerThread(config) as srv:
            trigger = srv.server.trigger
            _add_to_cart(srv.url, "anon-1", "c-1")
            _add_to_cart(srv.url, "anon-3", "c-3")
            _until(lambda: k.events and trigger.skipped.get("no_consent"))
            assert list(k.events) == [("Cart Abandoned", "P1", "c-1")] and k.refused == []
            event = k.events[("Cart Abandoned", "P1", "c-1")]
            assert event["value"] == 80.0 and event["properties"]["intent_group"] == "on_the_fence"
            assert "subscriptions" not in event["profile"]["data"]["attributes"]  # an event never consents for anyone
            assert trigger.skipped.get("no_consent") == 1

            report = run_sync(config, "cart_nudge")  # P1 was nudged live today: left out
            assert sorted(e["person_id"] for e in hook.events) == ["P5"] and report.skipped["frequency_capped"] == 1

            _add_to_cart(srv.url, "anon-5", "c-5")  # P5 was reached by the batch sync today
            _until(lambda: trigger.skipped.get("frequency_capped"))
            assert trigger.skipped.get("frequency_capped") == 1 and len(k.events) == 1
        again = run_sync(config, "cart_nudge")  # still capped: P1 stays pending, nothing re-sent
        assert again.sent == 0 and again.skipped["frequency_capped"] == 1
