"""`cdp serve`: the Segment-compatible collector, with the official SDKs, its limits, and the
batch ingestion loading what it acknowledged exactly once."""

from __future__ import annotations

import base64
import gzip
import json
import logging

import pytest
import requests
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from core.config import load_config
from tests.serve_world import READ_KEY, WRITE_KEY, ServerThread, ingest_web, write_project


def _auth(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _send_every_call(client, who: str) -> None:
    client.identify(f"{who}-user", {"firstName": "Ada", "email": f"{who}@example.com"}, anonymous_id=f"{who}-anon")
    client.track(f"{who}-user", "Order Completed", {"order_id": f"{who}-o1", "revenue": 12.5})
    client.page(f"{who}-user", "Shop", "Home", {"path": "/"})
    client.screen(f"{who}-user", "App", "Basket", {})
    client.group(f"{who}-user", f"{who}-account", {"name": "Acme"})
    client.alias(f"{who}-anon", f"{who}-user")
    client.flush()


@pytest.fixture
def config(tmp_path):
    return load_config(write_project(tmp_path / "proj", rotate_seconds=3600))


def test_official_sdks_deliver_every_call_type_and_ingestion_loads_them_once(config):
    with ServerThread(config) as srv:
        segment = SegmentClient(WRITE_KEY, host=srv.url, sync_mode=True, gzip=True)
        _send_every_call(segment, "seg")
        rudder = RudderClient(WRITE_KEY, host=srv.url, sync_mode=True)  # gzip by default
        _send_every_call(rudder, "rud")
        # a re-delivered batch (an SDK retry after a lost answer): accepted, stored once
        rudder_again = RudderClient(WRITE_KEY, host=srv.url, sync_mode=True)
        rudder_again.track("rud-user", "Product Viewed", {"sku": "S1"}, message_id="fixed-id-1")
        rudder_again.track("rud-user", "Product Viewed", {"sku": "S1"}, message_id="fixed-id-1")
        assert srv.server.stats["events_accepted"] == 13 and srv.server.stats["events_duplicate"] == 1
    # graceful shutdown landed the open log segment
    rows = ingest_web(config)
    landed = sorted(p.name for p in (config.landing_dir / "web").iterdir())
    assert len(landed) == 1 and landed[0].startswith("events_serve-")
    assert len(rows) == 13 and len({r[0] for r in rows}) == 13
    for who in ("seg", "rud"):
        types = sorted(r[1] for r in rows if (r[3] or r[4] or "").startswith(who))
        assert types == sorted(["identify", "track", "page", "screen", "group", "alias"] + (["track"] if who == "rud" else []))
    # the loader's normalisation (core.segment_spec): canonical names
    assert {r[2] for r in rows if r[1] == "track"} == {"order_completed", "product_viewed"}
    # loading again adds nothing: the manifest knows the file
    assert len(ingest_web(config)) == 13


def test_limits_auth_gzip_and_dedup(config, caplog):
    caplog.set_level(logging.INFO, logger="tessera.serve")
    ev = {"type": "track", "event": "Product Added", "anonymousId": "anon-secret-7", "messageId": "m-1",
          "properties": {"sku": "A", "price": 5, "email": "pii@example.com"}}
    with ServerThread(config) as srv:
        url = srv.url
        assert requests.post(url + "/v1/track", json=ev).status_code == 401
        assert requests.post(url + "/v1/track", json=ev, headers=_auth(READ_KEY)).status_code == 401
        ok = requests.post(url + "/v1/track", json=ev, headers=_auth(WRITE_KEY))
        assert ok.status_code == 200 and ok.json() == {"success": True}
        # the same messageId again: 200, not stored twice
        assert requests.post(url + "/v1/track", json=ev, headers=_auth(WRITE_KEY)).status_code == 200
        # gzip body, the writeKey in the body instead of the header (analytics.js does this)
        body = gzip.compress(json.dumps({"batch": [{**ev, "messageId": "m-2"}], "writeKey": WRITE_KEY}).encode())
        r = requests.post(url + "/v1/batch", data=body, headers={"Content-Encoding": "gzip",
                                                                 "Content-Type": "application/json"})
        assert r.status_code == 200
        # Segment's limits: 32 KB an event, 500 KB a request, with the reason
        big = {**ev, "messageId": "m-big", "properties": {"blob": "x" * 33_000}}
        r = requests.post(url + "/v1/track", json=big, headers=_auth(WRITE_KEY))
        assert r.status_code == 400 and "32768 bytes" in r.json()["message"]
        batch = {"batch": [{**ev, "messageId": f"b{i}", "properties": {"blob": "x" * 20_000}} for i in range(30)]}
        r = requests.post(url + "/v1/batch", json=batch, headers=_auth(WRITE_KEY))
        assert r.status_code == 400 and "512000 bytes" in r.json()["message"]
        bomb = gzip.compress(b"[" + b"0," * 400_000 + b"0]")
        r = requests.post(url + "/v1/batch", data=bomb, headers={**_auth(WRITE_KEY), "Content-Encoding": "gzip"})
        assert r.status_code == 400 and "decompressed" in r.json()["message"]
        # a bad event rejects its batch, naming the event and the field, not the value
        bad = {"batch": [{**ev, "messageId": "m-3"}, {"type": "track", "messageId": "m-4", "anonymousId": "x"}]}
        r = requests.post(url + "/v1/batch", json=bad, headers=_auth(WRITE_KEY))
        assert r.status_code == 400 and r.json()["message"] == "batch[1]: a track call needs an event name"
        r = requests.post(url + "/v1/identify", json={"traits": {}}, headers=_auth(WRITE_KEY))
        assert r.status_code == 400 and "userId or anonymousId" in r.json()["message"]
        assert srv.server.stats["events_accepted"] == 2
    rows = ingest_web(config)
    assert sorted(r[0] for r in rows) == ["m-1", "m-2"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/track 200" in logged
    for secret in ("anon-secret-7", "pii@example.com", WRITE_KEY):
        assert secret not in logged


def test_rate_limit_per_key(tmp_path):
    config = load_config(write_project(tmp_path / "p", rate_limit_per_second=1, rate_limit_burst=3))
    ev = {"type": "page", "anonymousId": "a1", "name": "Home"}
    with ServerThread(config) as srv:
        codes = [requests.post(srv.url + "/v1/page", json=ev, headers=_auth(WRITE_KEY)).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = requests.post(srv.url + "/v1/page", json=ev, headers=_auth(WRITE_KEY))
        assert r.headers["Retry-After"] == "1"
        # the read key has its own bucket
        assert requests.post(srv.url + "/v1/decide", json={"anonymousId": "a1"}, headers=_auth(READ_KEY)).status_code == 200
