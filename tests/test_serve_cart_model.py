"""Cart intent scored live with the batch's model: the compiled model computes what scikit-learn
computes, in well under a millisecond; live features of the same cart state are the batch's, so
the live and batch scores agree; `cdp serve` loads the published model and decides with it."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import requests
from jsonschema import Draft202012Validator
from threadpoolctl import threadpool_limits

from activation.contract import _openapi_to_jsonschema
from core.config import load_config
from core.published import (
    CART_FEATURE_COLUMNS,
    SERVE_CART_FEATURES,
    SERVE_CART_MODEL,
    SERVE_CART_RETURN_GAPS,
    SERVE_PERSON_HISTORY,
)
from core.settings.scoring import CartIntentSettings
from core.snapshots import open_snapshot, read_manifest
from core.warehouse import connect
from publish.snapshot import publish, serve_tables
from scoring.cart import FEATURES, LABEL, train_and_score
from scoring.compiled import CompiledModel, compile_model
from scoring.model_store import save
from scoring.models import calibrator, make_model
from serve import cart_model
from serve.live import Person
from serve.openapi import OPENAPI
from tests.serve_world import READ_KEY, WRITE_KEY, ServerThread, hold_warehouse, publish_world, write_project

CUTOFF = pd.Timestamp("2026-11-22 06:00:00")
LOYAL = "P-loyal"  # past orders, no open cart at the cutoff
# published purchase_probability is rounded to 6 decimals; hours_since_added is whole seconds in
# dbt: live and batch agree to this
TOLERANCE = 2e-6


@pytest.mark.parametrize("algorithm", ["gradient_boosting", "logistic_regression"])
def test_compiled_model_matches_scikit_learn_in_microseconds(algorithm):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1800, len(FEATURES))) * np.linspace(1, 200, len(FEATURES))
    y = (x[:, 0] / 1 + x[:, 3] / 40 + rng.normal(size=len(x)) > 0).astype(int)
    with threadpool_limits(limits=1):  # as the batch fits (scoring.cart.train_and_score)
        raw = make_model(algorithm, 7).fit(x[:1200], y[:1200])
        deployed_models = (raw, calibrator(raw, x[1200:1600], y[1200:1600], "isotonic"),
                           calibrator(raw, x[1200:1600], y[1200:1600], "sigmoid"))
    for deployed in deployed_models:
        compiled = compile_model(deployed)
        assert compiled.compiled
        # what a snapshot carries: the parameters as JSON, scored without the fitted model
        stored = CompiledModel(spec=json.loads(json.dumps(compiled.spec)))
        rows = x[1600:]
        with threadpool_limits(limits=1):
            expected = deployed.predict_proba(rows)[:, 1]
        for scorer in (compiled, stored):
            got = np.array([scorer.probability(r) for r in rows])
            assert np.abs(got - expected).max() < 1e-9
        started = time.process_time()  # CPU time: the shared machine's load does not count
        for r in rows:
            compiled.probability(r)
        assert (time.process_time() - started) / len(rows) < 0.001


def _features(rng, n: int, cutoff: pd.Timestamp, snapshot: str, first_id: int) -> pd.DataFrame:
    ids = np.arange(first_id, first_id + n)
    frame = pd.DataFrame({
        "snapshot": snapshot, "cutoff_at": cutoff, "cart_id": [f"c{i}" for i in ids],
        "person_id": [f"P{i % 997}" if snapshot == "history" else f"P{i}" for i in ids],
        "cart_value": rng.gamma(2, 40, n).round(2), "items_added": rng.integers(1, 6, n).astype(float),
        "hours_since_added": rng.uniform(0.5, 600, n), "checkout_started": rng.integers(0, 2, n).astype(float),
        "orders_total": rng.integers(0, 8, n).astype(float), "orders_365d": rng.integers(0, 4, n).astype(float),
        "discounted_order_share": rng.uniform(0, 1, n), "days_since_last_order": rng.uniform(1, 700, n),
        "web_sessions_30d": rng.integers(0, 10, n).astype(float), "days_since_previous_visit": rng.uniform(0, 90, n),
        "email_opens_90d": rng.integers(0, 12, n).astype(float), "past_abandoned_carts": rng.integers(0, 4, n).astype(float),
        "past_carts_returned": rng.integers(0, 2, n).astype(float)})
    frame["last_added_at"] = cutoff - pd.to_timedelta(frame["hours_since_added"].round(0), unit="h")
    frame["hours_since_added"] = (cutoff - frame["last_added_at"]).dt.total_seconds() / 3600
    logit = -2 + 1.5 * frame["checkout_started"] - frame["hours_since_added"] / 200 + frame["orders_365d"] / 3
    frame[LABEL] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int) if snapshot == "history" else None
    return frame


def _batch_world(warehouse, algorithm_seed: int = 11):
    """A scored batch: train_and_score on int_cart_features-shaped rows, its model saved and
    its features in the warehouse as the dbt models leave them."""
    rng = np.random.default_rng(algorithm_seed)
    frames = [_features(rng, 250, CUTOFF - pd.Timedelta(days=7 * w), "history", 10_000 * w) for w in range(1, 7)]
    score = _features(rng, 120, CUTOFF, "score", 0)
    features = pd.concat([*frames, score], ignore_index=True)
    gaps = rng.uniform(1, 150, 200)
    result = train_and_score(features, gaps, CartIntentSettings())
    con = connect(warehouse)
    con.execute("CREATE SCHEMA intermediate")
    con.register("f", features)
    con.execute("CREATE TABLE intermediate.int_cart_features AS SELECT * FROM f")
    con.register("g", pd.DataFrame({"return_gap_hours": gaps}))
    con.execute("CREATE TABLE intermediate.int_carts AS SELECT return_gap_hours FROM g")
    # int_person_history: a loyal customer with no open cart at the cutoff, and a scored person
    day = pd.Timedelta(days=1)
    history = pd.DataFrame({
        "person_id": [LOYAL, "P0"], "cutoff_at": CUTOFF, "orders_total": [20, 1], "orders_365d": [6, 1],
        "discounted_orders": [5, 0], "last_ordered_at": [CUTOFF - 12 * day, CUTOFF - 100 * day],
        "web_sessions_30d": [4, 1], "last_session_at": [CUTOFF - 2 * day, CUTOFF - 3 * day],
        "previous_session_at": [CUTOFF - 9 * day, pd.NaT], "email_opens_90d": [9, 0],
        "past_abandoned_carts": [3, 0], "past_carts_returned": [1, 0]})
    con.register("h", history)
    con.execute("CREATE TABLE intermediate.int_person_history AS SELECT * FROM h")
    save(con, result.model)
    con.close()
    return result, score


def _epoch(ts: pd.Timestamp) -> float:
    return ts.tz_localize("UTC").timestamp() if ts.tzinfo is None else ts.timestamp()


@pytest.fixture(scope="module")
def batch_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "w.duckdb"
    result, score = _batch_world(path)
    return path, result, score


def _published_model(warehouse, published_dir, version):
    """Publish the warehouse's serve_* tables as the publish step does; the model `cdp serve`
    loads from that snapshot."""
    con = connect(warehouse)  # publishing writes through the warehouse's connection (ATTACH)
    tables = serve_tables(con)
    snap = publish(con, {}, published_dir, "run1", gate={"passed": True}, serve=tables)
    con.close()
    assert set(tables) == {SERVE_CART_MODEL, SERVE_CART_FEATURES, SERVE_CART_RETURN_GAPS, SERVE_PERSON_HISTORY}
    # listed apart from the gate-checked tables in the manifest
    (entry,) = read_manifest(published_dir)["history"]
    assert entry["tables"] == {} and entry["serve_tables"][SERVE_CART_FEATURES] == 120
    ro = open_snapshot(snap.path)
    try:
        columns = {r[0] for r in ro.execute(f"DESCRIBE main.{SERVE_CART_FEATURES}").fetchall()}
        # the model as JSON numbers: no pickled payload in a published file
        model_columns = {r[0]: r[1] for r in ro.execute(f"DESCRIBE main.{SERVE_CART_MODEL}").fetchall()}
        assert "payload" not in model_columns and model_columns["compiled"] == "VARCHAR"
        return cart_model.load(ro, version), cart_model.load(ro, "another-version"), columns
    finally:
        ro.close()


def test_live_and_batch_cart_intent_agree_on_the_same_cart_state(batch_world, tmp_path):
    warehouse, result, score = batch_world
    model, other, columns = _published_model(warehouse, tmp_path / "published", result.model_version)
    assert model is not None and model.compiled.compiled
    assert other is None  # not the published model
    # only what the live features need is published: no label, no snapshot tag, nothing else
    assert columns == set(CART_FEATURE_COLUMNS)
    assert set(FEATURES) - {"hours_since_added"} <= columns
    batch = result.predictions.set_index("person_id")
    now = _epoch(CUTOFF)
    for pid, row in batch.iterrows():
        feats, source = model.features(pid, None, now)  # no live event: the batch's cart at the cutoff
        assert source == "batch_cart"
        assert abs(model.probability(feats) - row["purchase_probability"]) <= TOLERANCE
        expected_return = model.expected_return_hours(feats["hours_since_added"])
        assert (np.nan if expected_return is None else expected_return) == pytest.approx(row["expected_return_hours"],
                                                                                          nan_ok=True)

    # live: one more add to the batch's cart after the cutoff -> the same model on the moved features
    pid = batch.index[0]
    base = score.set_index("person_id").loc[pid]
    person = Person(pid, cart_id=base["cart_id"])
    person.cart_adds = [(now + 60, 25.0)]
    person.cart = {"x": {"quantity": 1, "price": 25.0}}
    later = now + 3600
    feats, source = model.features(pid, person, later)
    assert source == "batch_cart_live"
    assert feats["items_added"] == base["items_added"] + 1 and feats["cart_value"] == round(base["cart_value"] + 25, 2)
    assert feats["hours_since_added"] == pytest.approx((later - now - 60) / 3600)
    if base["days_since_last_order"] < 730:
        assert feats["days_since_last_order"] == pytest.approx(base["days_since_last_order"] + 1 / 24)
    expected = result.model.predict(pd.DataFrame([feats]))[0]  # scikit-learn, the batch's call
    assert abs(model.probability(feats) - expected) < 1e-9

    # a purchase since the cutoff closes the batch's cart; a new cart of an unknown person has
    # the batch's no-history defaults
    bought = Person(pid)
    bought.order_times.append(now + 10)
    assert model.features(pid, bought, later) is None
    newcomer = Person("provisional:x", cart_id="live-1")
    newcomer.cart_adds = [(now + 5, 30.0), (now + 50, 12.5)]
    feats, source = model.features("provisional:x", newcomer, later)
    assert source == "live_cart_no_batch_history" and feats["items_added"] == 2 and feats["cart_value"] == 42.5
    assert {f: feats[f] for f in cart_model.NO_HISTORY} == cart_model.NO_HISTORY


def test_a_person_without_a_batch_cart_is_scored_live_on_their_history(batch_world, tmp_path):
    """A loyal customer with no open cart at the cutoff adds to a cart live: the features are
    their history at the cutoff (serve_person_history) moved on to now, not the no-history
    defaults, and the live score is the batch model's on those features; the reason says so."""
    warehouse, result, score = batch_world
    model, _, _ = _published_model(warehouse, tmp_path / "published", result.model_version)
    assert model.history is not None and len(model.history) == 2 and LOYAL not in model.batch
    now = _epoch(CUTOFF)
    day = 86400.0
    shopper = Person(LOYAL, cart_id="live-7")
    shopper.cart_adds = [(now + 3 * 3600, 60.0), (now + 3 * 3600 + 120, 15.5)]
    later = now + 5 * 3600
    feats, source = model.features(LOYAL, shopper, later)
    assert source == "live_cart_history"
    assert feats == pytest.approx({
        "cart_value": 75.5, "items_added": 2.0, "hours_since_added": (later - now - 3 * 3600 - 120) / 3600,
        "checkout_started": 0.0, "orders_total": 20.0, "orders_365d": 6.0, "discounted_order_share": 0.25,
        "days_since_last_order": 12 + 5 / 24, "web_sessions_30d": 4.0,
        "days_since_previous_visit": 2 + 3 / 24, "email_opens_90d": 9.0, "past_abandoned_carts": 3.0,
        "past_carts_returned": 1.0})
    expected = result.model.predict(pd.DataFrame([feats]))[0]  # scikit-learn, the batch's call
    assert abs(model.probability(feats) - expected) < 1e-9
    # a live visit after the cutoff is the previous visit; a live order moves the history on
    shopper.session_starts.append(now + 3600)
    shopper.order_times.append(now + 1800)
    feats, _ = model.features(LOYAL, shopper, later)
    assert feats["days_since_previous_visit"] == pytest.approx(2 / 24)
    assert feats["orders_total"] == 21 and feats["discounted_order_share"] == pytest.approx(5 / 21)
    assert feats["days_since_last_order"] == pytest.approx((later - now - 1800) / day)
    assert feats["web_sessions_30d"] == 5
    # a scored person keeps the batch's cart features (the history table is not read for them)
    p0 = score.set_index("person_id").loc["P0"]
    feats, source = model.features("P0", None, now)
    assert source == "batch_cart" and feats["orders_total"] == p0["orders_total"]
    # nobody known: the defaults
    stranger = Person("provisional:y", cart_id="live-8")
    stranger.cart_adds = [(now + 5, 30.0)]
    feats, source = model.features("provisional:y", stranger, later)
    assert source == "live_cart_no_batch_history"
    assert {f: feats[f] for f in cart_model.NO_HISTORY} == cart_model.NO_HISTORY

    # through /v1/decide: the reason names the history, not "no batch history"
    config = load_config(write_project(tmp_path / "p"))
    publish_world(config.published_dir, model_version=result.model_version, serve_from=warehouse,
                  persons={LOYAL: {"anon": "anon-l", "consent": {"email_marketing": "granted"}}})
    read = {"Authorization": f"Bearer {READ_KEY}"}
    write = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with ServerThread(config) as srv:
        r = requests.post(srv.url + "/v1/track", headers=write, json={
            "type": "track", "event": "Product Added", "anonymousId": "anon-l",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "properties": {"sku": "S1", "price": 20.0, "quantity": 1, "cart_id": "live-9"}})
        assert r.status_code == 200
        deadline, intent = time.time() + 5, {}
        while time.time() < deadline:
            intent = requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-l"},
                                   headers=read).json()["cart_intent"] or {}  # null until the add lands
            if intent.get("features") == "live_cart_history":
                break
            time.sleep(0.05)
        assert intent["reason"] == "cart_intent_live_model" and intent["features"] == "live_cart_history"
        assert intent["cart_id"] == "live-9"


def test_serve_decides_with_the_published_model_on_the_live_session(tmp_path, batch_world):
    warehouse, result, score = batch_world
    config = load_config(write_project(tmp_path / "p"))
    pid = result.predictions["person_id"].iloc[0]
    cart_id = result.predictions["cart_id"].iloc[0]
    publish_world(config.published_dir, model_version=result.model_version, serve_from=warehouse,
                  persons={pid: {"anon": "anon-a", "consent": {"email_marketing": "granted"},
                                 "cart": (cart_id, 10.0, 0.2, "on_the_fence")}})
    assert not config.warehouse_path.exists()  # the model comes from the snapshot alone
    read = {"Authorization": f"Bearer {READ_KEY}"}
    write = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with ServerThread(config) as srv:
        d = requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-a"}, headers=read).json()
        intent = d["cart_intent"]
        assert intent["reason"] == "cart_intent_live_model" and intent["model_version"] == result.model_version
        assert intent["features"] == "batch_cart" and intent["cart_id"] == cart_id
        at = datetime.now(timezone.utc).isoformat()
        r = requests.post(srv.url + "/v1/track", headers=write, json={
            "type": "track", "event": "Product Added", "anonymousId": "anon-a", "timestamp": at,
            "properties": {"sku": "S1", "price": 15.0, "quantity": 2, "cart_id": cart_id}})
        assert r.status_code == 200
        deadline = time.time() + 5
        while time.time() < deadline:
            intent = requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-a"}, headers=read).json()["cart_intent"]
            if intent["features"] == "batch_cart_live":
                break
            time.sleep(0.05)
        base = score.set_index("person_id").loc[pid]
        assert intent["features"] == "batch_cart_live"
        assert intent["cart_value"] == round(base["cart_value"] + 30.0, 2)
        # as /openapi.json declares it
        schema = _openapi_to_jsonschema(copy.deepcopy(OPENAPI["paths"]["/v1/decide"]["post"]["responses"]["200"]
                                                      ["content"]["application/json"]["schema"]))
        Draft202012Validator(schema).validate(
            requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-a"}, headers=read).json())
        assert intent["intent_group"] in ("likely", "on_the_fence", "unlikely")


def test_serve_loads_the_model_from_the_snapshot_while_a_run_writes_the_warehouse(tmp_path, batch_world):
    """A writer (another process, as `cdp run` is) holds the warehouse the whole time: the server
    still starts with the live model and switches to the next snapshot's, both read from the snapshots."""
    warehouse, result, _ = batch_world
    config = load_config(write_project(tmp_path / "p"))
    config.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(warehouse, config.warehouse_path)
    pid = result.predictions["person_id"].iloc[0]
    person = {pid: {"anon": "anon-a", "consent": {"email_marketing": "granted"},
                    "cart": (result.predictions["cart_id"].iloc[0], 10.0, 0.2, "on_the_fence")}}
    publish_world(config.published_dir, model_version=result.model_version, serve_from=warehouse, persons=person)
    read = {"Authorization": f"Bearer {READ_KEY}"}
    with hold_warehouse(config.warehouse_path), ServerThread(config) as srv:
        intent = requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-a"}, headers=read).json()["cart_intent"]
        assert intent["reason"] == "cart_intent_live_model" and intent["model_version"] == result.model_version
        publish_world(config.published_dir, model_version=result.model_version, serve_from=warehouse,
                      persons=person, run_id="run0002")
        deadline = time.time() + 10
        while requests.get(srv.url + "/health").json()["snapshot"] != "run0002" and time.time() < deadline:
            time.sleep(0.1)
        assert requests.get(srv.url + "/health").json()["snapshot"] == "run0002"
        intent = requests.post(srv.url + "/v1/decide", json={"anonymousId": "anon-a"}, headers=read).json()["cart_intent"]
        assert intent["reason"] == "cart_intent_live_model" and intent["features"] == "batch_cart"


def test_live_windowed_counts_age_out():
    """Live sessions and orders count in web_sessions_30d / orders_365d only inside the window
    ending now; the batch's count at the cutoff is kept as published."""
    cutoff = 1_700_000_000.0
    day = 86400.0
    history = dict(cart_model.NO_HISTORY, web_sessions_30d=3.0, orders_365d=2.0, orders_total=2.0,
                   days_since_last_order=10.0)
    batch = {"P1": cart_model.BatchCart("c1", cutoff - 3600, 50.0, 2.0, 0.0, history)}
    model = cart_model.CartModel("v", list(FEATURES), CompiledModel(spec={"spec_version": 1, "kind": "constant",
                                                                          "probability": 0.5}),
                                 cutoff, batch, np.array([24.0]))
    person = Person("P1")
    person.session_starts.extend([cutoff + 1 * day, cutoff + 35 * day])  # the first is 39 days old by now
    now = cutoff + 40 * day
    feats, source = model.features("P1", person, now)
    assert source == "batch_cart"
    assert feats["web_sessions_30d"] == 3.0 + 1  # the batch's 3, and one live session in the last 30 days
    assert feats["days_since_last_order"] == 10.0 + 40
    person.order_times.append(cutoff + 2 * day)  # the batch's cart bought; a new one, much later
    person.cart_id, person.cart_adds = "c2", [(cutoff + 390 * day, 20.0)]
    feats, source = model.features("P1", person, cutoff + 400 * day)  # that order is now over a year old
    assert source == "live_cart"
    assert feats["orders_total"] == 3.0 and feats["orders_365d"] == 2.0
