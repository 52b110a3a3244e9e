"""The published customer_ids mart, built by dbt for real on a small identity output: the shop's
own keys in clear, emails and phones as SHA-256 only, no card tokens or receipt numbers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from core.dbt_project import dbt_project_dir
from core.published import published_tables

DBT = str(Path(sys.executable).parent / "dbt")

# (record_key, source, entity, source_record_id, person_id, email, phone, loyalty_id, card_token)
RECORDS = [
    ("pos|loyalty_members|l-100", "pos", "loyalty_members", "l-100", "P1", "ann@x.org", "+447700900001", "l-100", None),
    ("pos|transactions|T9", "pos", "transactions", "T9", "P1", "ann.work@y.org", None, "l-100", "ct_secret000001"),
    ("esp|subscribers|S7", "esp", "subscribers", "S7", "P1", "ann@x.org", None, None, None),
    ("web|user_id|u-42", "web", "user_id", "u-42", "P1", None, None, None, None),
    ("web|anonymous_id|a-1", "web", "anonymous_id", "a-1", "P1", None, None, None, None),
    ("support|tickets|K1", "support", "tickets", "K1", "P2", "bob@z.org", "+447700900002", None, None),
]


def sha(v: str) -> str:
    return hashlib.sha256(v.encode()).hexdigest()


def test_customer_ids_publishes_each_persons_ids_with_contact_details_hashed(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    con = duckdb.connect(str(warehouse))
    con.execute("CREATE SCHEMA identity")
    con.execute("CREATE TABLE identity.graph (record_key VARCHAR, source VARCHAR, entity VARCHAR, "
                "source_record_id VARCHAR, person_id VARCHAR, match_method VARCHAR, match_probability DOUBLE)")
    con.executemany("INSERT INTO identity.graph VALUES (?, ?, ?, ?, ?, 'rule', 1.0)", [r[:5] for r in RECORDS])
    con.execute("CREATE TABLE identity.records (record_key VARCHAR, source VARCHAR, entity VARCHAR, email VARCHAR, "
                "phone VARCHAR, loyalty_id VARCHAR, card_token VARCHAR)")
    con.executemany("INSERT INTO identity.records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], *r[5:]) for r in RECORDS])
    con.close()
    target = tmp_path / "target"
    done = subprocess.run(
        [DBT, "build", "--select", "+customer_ids", "--indirect-selection", "cautious",
         "--project-dir", str(dbt_project_dir()), "--profiles-dir", str(dbt_project_dir()),
         "--target-path", str(target), "--log-path", str(target), "--vars", '{"as_of": "2026-06-30"}'],
        env={**os.environ, "TESSERA_WAREHOUSE": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]

    con = duckdb.connect(str(warehouse), read_only=True)
    rows = con.execute("SELECT person_id, source, kind, id_value, record_count FROM marts.customer_ids").fetchall()
    got = {(p, s, k, v): n for p, s, k, v, n in rows}
    assert got == {
        ("P1", "pos", "loyalty_id", "L-100"): 2,          # the member and the receipt carrying it
        ("P1", "esp", "subscriber_id", "S7"): 1,
        ("P1", "web", "user_id", "u-42"): 1,
        ("P1", "web", "anonymous_id", "a-1"): 1,
        ("P1", "pos", "email_sha256", sha("ann@x.org")): 1,
        ("P1", "pos", "email_sha256", sha("ann.work@y.org")): 1,
        ("P1", "esp", "email_sha256", sha("ann@x.org")): 1,
        ("P1", "pos", "phone_sha256", sha("+447700900001")): 1,
        ("P2", "support", "email_sha256", sha("bob@z.org")): 1,
        ("P2", "support", "phone_sha256", sha("+447700900002")): 1,
    }
    # nothing in clear that is a contact detail or payment data; no receipt or ticket numbers
    text = " ".join(str(c) for r in rows for c in r)
    for secret in ("ann@x.org", "+447700900001", "ct_secret000001", "T9", "K1"):
        assert secret not in text
    assert con.execute("SELECT count(DISTINCT as_of) FROM marts.customer_ids").fetchall()[0][0] == 1

    # published from the manifest this build parsed: key, contract columns, the PII column
    table = next(t for t in published_tables(target / "manifest.json") if t.name == "customer_ids")
    assert table.keys == ("person_id", "source", "kind", "id_value")
    assert table.pii_columns == ("id_value",) and table.person_column == "person_id"
