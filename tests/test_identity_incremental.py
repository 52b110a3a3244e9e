"""Identity in time: a backtest (as_of) sees no record dated after it (#26), and an
incremental identity run agrees with a full one (#21)."""

import json
from datetime import datetime, timezone

import duckdb
import pytest

from identity.pipeline import resolve
from ingestion.loader import ensure_raw_schema
from tests.helpers import make_config

BEFORE = "2025-01-01 10:00:00+00"
AFTER = "2025-03-01 10:00:00+00"
AS_OF = datetime(2025, 2, 1, tzinfo=timezone.utc)


def insert(con, table, source, **cols):
    cols = {**cols, "_source": source, "_file": "test", "_row": 1, "_load_id": "L", "_loaded_at": BEFORE}
    names = ", ".join(f'"{k}"' for k in cols)
    con.execute(f"INSERT INTO raw.{table} ({names}) VALUES ({', '.join('?' for _ in cols)})", list(cols.values()))


@pytest.fixture
def env(tmp_path):
    cfg = make_config(tmp_path, [], identity={"splink": {"enabled": False}})
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_raw_schema(con)
    yield cfg, con
    con.close()


def persons(con):
    """record_key -> person_id"""
    return dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())


def test_a_backtest_does_not_see_records_after_as_of(env):
    cfg, con = env
    insert(con, "pos_loyalty_members", "pos", loyalty_id="L1", first_name="Ann", last_name="Lee",
           email="ann@x.co.uk", enrolled_at=BEFORE)
    # after as_of: a subscriber with the member's email (would merge), a new member, a web
    # login whose identify carries the member's email, and a ticket from a new person
    insert(con, "email_subscribers", "email", subscriber_id="S1", email="ann@x.co.uk", first_name="Ann",
           last_name="Lee", status="subscribed", created_at=AFTER)
    insert(con, "pos_loyalty_members", "pos", loyalty_id="L2", first_name="Bo", last_name="Day",
           email="bo@x.co.uk", enrolled_at=AFTER)
    insert(con, "web_events", "web", messageId="m1", type="identify", anonymousId="a1", userId="U1",
           traits=json.dumps({"email": "ann@x.co.uk"}), timestamp=AFTER)
    insert(con, "support_tickets", "support", ticket_id="T1", requester_name="Cy Ray",
           requester_email="cy@x.co.uk", created_at=AFTER)
    # a web device seen before and after as_of: its record exists, dated by what it did before
    insert(con, "web_events", "web", messageId="m2", type="page", anonymousId="a2", timestamp=BEFORE)
    insert(con, "web_events", "web", messageId="m3", type="identify", anonymousId="a2", userId="U1",
           traits=json.dumps({"email": "ann@x.co.uk"}), timestamp=AFTER)

    backtest = resolve(cfg, con, as_of=AS_OF)
    seen = persons(con)
    assert set(seen) == {"pos|loyalty_members|L1", "web|anonymous_id|a2"}
    assert seen["pos|loyalty_members|L1"] != seen["web|anonymous_id|a2"]  # the identify came later
    assert backtest.records == 2 and backtest.persons == 2
    last_seen = con.sql("SELECT last_seen_at FROM identity.records WHERE record_key = 'web|anonymous_id|a2'").fetchall()
    assert last_seen[0][0] == datetime(2025, 1, 1, 10, tzinfo=timezone.utc)

    today = resolve(cfg, con)  # the same data, no as_of: everything, merged
    seen = persons(con)
    assert {"email|subscribers|S1", "pos|loyalty_members|L2", "web|user_id|U1", "support|tickets|T1"} <= set(seen)
    ann = seen["pos|loyalty_members|L1"]
    assert seen["email|subscribers|S1"] == seen["web|user_id|U1"] == seen["web|anonymous_id|a2"] == ann
    assert today.records > backtest.records and today.persons > backtest.persons
