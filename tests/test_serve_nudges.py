"""Cart-abandonment nudges delivered as Klaviyo events: Create Event at the configured revision,
every request checked by the local Klaviyo against Klaviyo's published OpenAPI definition, sent
only for a person who consents on the flow's channel, one event per cart."""

from __future__ import annotations

import base64
import os
import time

import pytest
import requests

from activation.contract import spec
from activation.destinations.klaviyo_events import KlaviyoEvents
from activation.local_servers import LocalKlaviyo
from core.config import ConfigError, load_config
from core.settings.activation import KLAVIYO_REVISION
from tests.serve_world import WRITE_KEY, ServerThread, publish_world, write_project

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


def test_cart_abandonment_as_a_klaviyo_event_for_consenting_people_once_per_cart(tmp_path):
    with LocalKlaviyo(api_key="pk_test") as k:
        config = load_config(write_project(tmp_path / "p", cart_abandonment={
            "window_seconds": 1.0,
            "destination": {"type": "klaviyo", "base_url": k.url, "api_key_env": "TESSERA_KLAVIYO_KEY"}}))
        publish_world(config.published_dir, persons={
            "P1": {"anon": "anon-1", "consent": {"email_marketing": "granted"}, "cart": ("c-1", 80.0, 0.12, "on_the_fence")},
            "P3": {"anon": "anon-3", "consent": {"email_marketing": "denied"}, "cart": ("c-3", 80.0, 0.12, "on_the_fence")}})
        with ServerThread(config) as srv:
            add = {"sku": "SKU-1", "price": 40, "quantity": 2}
            for anon, cart in (("anon-1", "c-1"), ("anon-3", "c-3")):
                r = requests.post(srv.url + "/v1/track", headers=W, json={
                    "type": "track", "event": "Product Added", "anonymousId": anon, "properties": {**add, "cart_id": cart}})
                assert r.status_code == 200
            deadline = time.time() + 6
            while time.time() < deadline and (not k.events or sum(srv.server.trigger.skipped.values()) < 1):
                time.sleep(0.05)
            assert list(k.events) == [("Cart Abandoned", "P1", "c-1")] and k.refused == []
            event = k.events[("Cart Abandoned", "P1", "c-1")]
            assert event["value"] == 80.0 and event["properties"]["intent_group"] == "on_the_fence"
            assert "subscriptions" not in event["profile"]["data"]["attributes"]  # an event never consents for anyone
            assert srv.server.trigger.skipped.get("no_consent") == 1
            assert srv.server.sends.sent_cart("c-1")
