"""Web events as Segment's and RudderStack's SDKs send them: the verbatim corpus under
tests/fixtures/segment_spec (sources in its README) loads, and means what the spec says."""

import json
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError
from core.segment_spec import canonical_event_name, normalise_events
from core.warehouse import connect, fetch_all
from ingestion.loader import LOADED, ingest
from tests.helpers import make_config, write

CORPUS = Path(__file__).parent / "fixtures" / "segment_spec"
FILES = sorted(CORPUS.glob("*.jsonl"))


def _source(name: str, path: str, **files) -> dict:
    return {"name": name, "kind": "web", "entities": {"events": {"path": path, **files}}}


def _corpus(name: str) -> list[dict]:
    return [json.loads(line) for line in (CORPUS / name).read_text().splitlines()]


@pytest.fixture
def corpus_project(tmp_path):
    # One source per corpus file: Segment's docs reuse one messageId across their examples of
    # different calls, which within one source would be re-deliveries of one event.
    config = make_config(tmp_path, [_source(f.stem, f"corpus/{f.name}") for f in FILES])
    for f in FILES:
        write(config.landing_dir / "corpus" / f.name, f.read_text())
    con = connect(config.warehouse_path)
    yield config, con
    con.close()


def test_the_verbatim_corpus_loads_with_nothing_quarantined(corpus_project):
    config, con = corpus_project
    report = ingest(config, con)
    assert [(f.file, f.status, f.rows_quarantined) for f in report.files] == [
        (f"corpus/{f.name}", LOADED, 0) for f in FILES
    ]
    lines = sum(len(f.read_text().splitlines()) for f in FILES)
    assert fetch_all(con, "SELECT count(*) FROM raw.web_events") == [(lines,)]
    types = {r[0] for r in fetch_all(con, "SELECT DISTINCT type FROM raw.web_events")}
    assert types == {"identify", "track", "page", "screen", "group", "alias"}
    # the spec's e-commerce names, in Title Case from both vendors, are the canonical ones
    events = fetch_all(con, "SELECT event, count(*) FROM raw.web_events WHERE type = 'track' GROUP BY 1 ORDER BY 1")
    assert events == [("Course Clicked", 1), ("checkout_started", 1), ("order_completed", 3),
                      ("product_added", 2), ("product_viewed", 2)]


def test_event_time_is_corrected_as_segment_does(corpus_project):
    config, con = corpus_project
    ingest(config, con)
    # RudderStack's identify: originalTimestamp and sentAt, no timestamp, no receivedAt -> as sent
    got = fetch_all(con, """SELECT CAST(timestamp AS VARCHAR) FROM raw.web_events
                            WHERE "messageId" = '2116ef8c-efc3-4ca4-851b-02ee60dad6ff'""")
    assert got == [("2021-01-03 17:02:53.193+00",)]
    # the device clock 1 s behind the server (receivedAt - sentAt): shifted by it
    [e] = normalise_events([{"type": "track", "event": "x", "messageId": "m", "anonymousId": "a",
                             "originalTimestamp": "2024-05-01T10:00:00.000Z", "sentAt": "2024-05-01T10:00:05.000Z",
                             "receivedAt": "2024-05-01T12:00:05.000Z"}])
    assert e["timestamp"] == "2024-05-01 12:00:00+00"
    [e] = normalise_events([{"type": "track", "receivedAt": "2024-05-01T12:00:05Z"}])
    assert e["timestamp"] == "2024-05-01 12:00:05+00"
    # an explicit timestamp is never corrected
    [e] = normalise_events([{"type": "track", "timestamp": "2024-05-01T09:00:00Z", "sentAt": "2024-05-01T10:00:00Z",
                             "receivedAt": "2024-05-01T12:00:00Z"}])
    assert e["timestamp"] == "2024-05-01 09:00:00+00"


def test_an_unreadable_original_timestamp_is_quarantined_naming_its_field(tmp_path):
    config = make_config(tmp_path, [_source("web", "web/*.jsonl")], ingestion={"max_bad_row_rate": 1.0})
    rows = [{"messageId": "m1", "type": "identify", "userId": "u1", "originalTimestamp": "soon"},
            {"messageId": "m2", "type": "identify", "userId": "u1", "sentAt": "2024-05-01T10:00:00Z"}]
    write(config.landing_dir / "web" / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with connect(config.warehouse_path) as con:
        [res] = ingest(config, con).files
        got = fetch_all(con, "SELECT _row, reason, field FROM raw.quarantine ORDER BY _row")
    assert (res.status, res.rows_loaded) == (LOADED, 0)
    assert got == [(1, "invalid_timestamp", "originalTimestamp"), (2, "missing_required", "timestamp")]


def test_person_traits_in_camel_and_snake_case_top_level_and_in_context(corpus_project):
    config, con = corpus_project
    ingest(config, con)
    got = fetch_all(con, """
        SELECT _source, type, traits->>'$.first_name', traits->>'$.last_name', traits->>'$.email',
               traits->>'$.city', traits->>'$.postcode'
        FROM raw.web_events WHERE traits->>'$.first_name' IS NOT NULL ORDER BY 1, 2, 3""")
    assert got == [
        ("rudderstack", "alias", "Shehan", "Study", "test@rudderstack.com", None, None),  # context.traits name
        ("rudderstack", "group", "Test", "Rudderlabs", "abc@gmail.com", "Kolkata", "700114"),  # context.traits
        ("rudderstack", "identify", "Gordon", "Pittman", None, None, None),  # first_name + lastName
        ("rudderstack", "track", "River", "John", "riverjohn@gmail.com", None, None),  # firstname + lastName
        ("rudderstack", "track", "Rudder", "Stack", "userSampleX120@gmail.com", None, None),
        ("segment_identify", "identify", "Peter", "Gibbons", "peter@example.com", "San Francisco", "94103"),
    ]
    # a group call's own traits describe the account, not the person
    assert fetch_all(con, "SELECT traits, \"groupId\" FROM raw.web_events WHERE _source = 'segment_group'") == [
        (None, "0e8c78ea9d97a7b8185e8632")]


def test_event_names_title_case_snake_case_and_a_shops_own(tmp_path):
    assert [canonical_event_name(n) for n in ("Order Completed", "order_completed", "order-completed",
                                              "Product Added", "Products Searched", "Wishlist Shared")] == [
        "order_completed", "order_completed", "order_completed", "product_added", "products_searched",
        "Wishlist Shared"]
    assert canonical_event_name("Bestellung", {"Bestellung": "order_completed"}) == "order_completed"
    config = make_config(tmp_path, [_source("web", "web/*.jsonl", event_names={"Bestellung": "order_completed"})])
    write(config.landing_dir / "web" / "a.jsonl", json.dumps(
        {"messageId": "m1", "type": "track", "event": "Bestellung", "userId": "u1",
         "timestamp": "2024-05-01T10:00:00Z"}) + "\n")
    with connect(config.warehouse_path) as con:
        ingest(config, con)
        assert fetch_all(con, "SELECT event FROM raw.web_events") == [("order_completed",)]


def test_the_event_name_map_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="not a canonical event name"):
        make_config(tmp_path, [_source("web", "w/*.jsonl", event_names={"Bought": "purchase"})])
    with pytest.raises(ConfigError, match="only web events have event names"):
        make_config(tmp_path, [{"name": "pos", "kind": "pos", "entities": {
            "transactions": {"path": "p/*.csv", "event_names": {"Bought": "order_completed"}}}}])


def _event(**fields) -> str:
    return json.dumps(fields) + "\n"


def test_identify_alias_and_a_title_case_order_from_two_devices_make_one_person_with_name_and_order(tmp_path):
    """The issue's scenario, through the real stages (ingestion, identity, the dbt marts)."""
    from cdp.runner import run_pipeline
    from core.warehouse import open_warehouse

    root = tmp_path / "shop"
    config = {"as_of": "2026-05-31", "sources": [_source("web", "web/*.jsonl")],
              # three records, all of one person: everything merged is right here
              "expectations": {"identity": {"max_merged_share": 1.0}}}
    write(root / "cdp.yaml", yaml.safe_dump(config))
    (root / "warehouse").mkdir()  # (a dbt model reading no raw table may start before ingestion makes it)
    landing = root / "landing" / "web"
    # the phone: an anonymous visitor tells us their name (analytics.js-style identify, camelCase traits)
    write(landing / "phone.jsonl", _event(
        type="identify", messageId="p-1", anonymousId="phone-anon",
        traits={"firstName": "Ada", "lastName": "Lovelace", "email": "ada@lovelace.example"},
        originalTimestamp="2026-05-01T09:00:00.000Z", sentAt="2026-05-01T09:00:00.500Z",
        receivedAt="2026-05-01T09:00:01.000Z"))
    # the server: signs the phone's visitor up (a server SDK's alias: previousId -> userId, no device id)
    write(landing / "server.jsonl", _event(
        type="alias", messageId="s-1", previousId="phone-anon", userId="u-42", timestamp="2026-05-01T09:05:00Z"))
    # the laptop, logged in: orders, Title Case as the e-commerce spec names it, with products[]
    order = _event(
        type="track", event="Order Completed", messageId="l-1", anonymousId="laptop-anon", userId="u-42",
        properties={"order_id": "o-1", "total": 27.5, "revenue": 22.5, "currency": "GBP",
                    "products": [{"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "price": 19,
                                  "quantity": 1},
                                 {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "price": 3,
                                  "quantity": 2}]},
        originalTimestamp="2026-05-02T18:00:00.000Z", sentAt="2026-05-02T18:00:00.000Z")
    write(landing / "laptop.jsonl", order)
    write(landing / "laptop_retry.jsonl", order)  # the SDK's retry: the same messageId again

    summary = run_pipeline(root / "cdp.yaml", only=["ingestion", "identity", "marts"])
    # One day of history: scoring skips its models with a message, and the rest builds.
    assert summary.failures == [], summary.failures
    built = {m.asset for m in summary.materialized}
    assert {"marts/customers", "marts/customer_traits"} <= built, built

    with open_warehouse(root / "warehouse" / "tessera.duckdb", read_only=True) as con:
        people = fetch_all(con, "SELECT DISTINCT person_id FROM identity.graph WHERE source = 'web'")
        assert len(people) == 1
        [(person,)] = people
        assert fetch_all(con, "SELECT first_name, last_name FROM marts.customers WHERE person_id = ?",
                         [person]) == [("Ada", "Lovelace")]
        assert fetch_all(con, "SELECT order_count, revenue FROM marts.customer_traits WHERE person_id = ?",
                         [person]) == [(1, 22.5)]
