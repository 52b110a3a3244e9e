"""Privacy end to end on generated data: erasure that reaches everywhere, subject access, PII
kept out of analytical marts and out of logs.

One module-scoped project (300 generated customers, Splink off: identity by rules is enough
here), driven through the real `cdp` command in subprocesses:

1. `cdp run` in a subprocess (the full asset graph; its stdout/stderr and Dagster's storage
   are scanned for PII), then two published snapshots written with ``publish.snapshot.publish``;
   then two syncs of the consented customers (`cdp sync --all`) to a local Klaviyo and a local
   Mailchimp server on 127.0.0.1;
2. a person present in all four sources, whose records identity links completely and whom the
   syncs delivered to both destinations, is chosen from the generator's ground truth;
   `cdp export-subject --email` for them;
3. `cdp forget --email`, then the erasure asset alone (`cdp run --only privacy`) twice: first
   with Mailchimp stopped (the run fails, the request stays pending, nothing is deleted from
   the warehouse), then with it back;
4. their old files landed again - identical copies under new names, and new files holding
   only their rows (one line malformed) - and `cdp run --only ingestion`: the loader drops
   their rows. (identity and dbt rebuild only from raw, which then holds nothing of them; the
   erasure itself cleans incremental tables such as segment_membership_history. One full run
   here instead of three keeps the module within the test-time budget.)

The warehouse (every table and view of every schema, every column as text) and every kept
snapshot are searched for the person's identifiers after steps 1, 3 and 4; the sync state file
(tables and bytes) and both destinations' stored data after steps 1 and 3.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from activation.local_servers import LocalKlaviyo, LocalMailchimp
from activation.state import state_path
from cdp.scaffold import init_project
from core.config import load_config
from core.dbt_project import dbt_project_dir
from core.normalise import phone_e164
from core.snapshots import SNAPSHOTS, current_path, read_manifest
from core.warehouse import open_warehouse
from privacy.requests import requests_dir
from publish.snapshot import publish

# One shared build of three runs; on a loaded 2-core machine it can take several minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
CUSTOMERS, SEED, AS_OF = 300, 23, dt.date(2026, 6, 30)
# ground-truth entity -> (raw table, id column)
RECORD_TABLE = {
    "loyalty_members": ("pos_loyalty_members", "loyalty_id"), "subscribers": ("email_subscribers", "subscriber_id"),
    "tickets": ("support_tickets", "ticket_id"), "transactions": ("pos_transactions", "transaction_id"),
    "anonymous_id": ("web_events", "anonymousId"), "user_id": ("web_events", "userId"),
}
KIND_OF_SOURCE = {"web": "web", "email": "email", "pos": "pos", "pos_outlet": "pos", "support": "support"}
EMAIL_RE = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.[A-Za-z0-9.\-]+"


def cdp_inprocess(config_path: Path, *args: str, check: bool = True):
    """The `cdp` command in this process (click's runner): no interpreter start-up per call."""
    from click.testing import CliRunner

    from cdp.cli import main

    saved = os.environ.pop("CDP_PRIVACY_SALT", None)
    try:
        result = CliRunner().invoke(main, [*args, "--config", str(config_path)], catch_exceptions=False)
    finally:
        if saved is not None:
            os.environ["CDP_PRIVACY_SALT"] = saved
    if check:
        assert result.exit_code == 0, f"cdp {' '.join(args)} failed:\n{result.output[-4000:]}"
    return result


def cdp(config_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "DAGSTER_DISABLE_TELEMETRY": "1", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("CDP_PRIVACY_SALT", None)  # the project's salt file, written by `cdp init`
    done = subprocess.run([sys.executable, "-m", "cdp.cli", *args, "--config", str(config_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    if check:
        assert done.returncode == 0, f"cdp {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


# --------------------------------------------------------------------------- ground truth
def person_values(con, truth: Path) -> dict[str, dict[str, set[str]]]:
    """true person -> {'ids': source record ids, 'emails', 'phones' (as written in raw)}."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE gt AS SELECT * FROM read_csv('{truth}', all_varchar = true)
                    WHERE identifiable = 'true'""")
    rows = con.execute("""
        WITH lm AS (SELECT gt.person_id, r.email, r.phone FROM gt JOIN raw.pos_loyalty_members r
                    ON gt.entity = 'loyalty_members' AND r._source = gt.source AND r.loyalty_id = gt.record_id),
        sb AS (SELECT gt.person_id, r.email, NULL AS phone FROM gt JOIN raw.email_subscribers r
               ON gt.entity = 'subscribers' AND r.subscriber_id = gt.record_id),
        ev AS (SELECT gt.person_id, r.email, NULL AS phone FROM gt JOIN raw.email_events r
               ON gt.entity = 'subscribers' AND r.subscriber_id = gt.record_id),
        tk AS (SELECT gt.person_id, r.requester_email, r.requester_phone FROM gt JOIN raw.support_tickets r
               ON gt.entity = 'tickets' AND r.ticket_id = gt.record_id),
        tx AS (SELECT gt.person_id, r.email, r.phone FROM gt JOIN raw.pos_transactions r
               ON gt.entity = 'transactions' AND r._source = gt.source AND r.transaction_id = gt.record_id),
        wb AS (SELECT gt.person_id, r.traits->>'$.email', r.traits->>'$.phone' FROM gt JOIN raw.web_events r
               ON (gt.entity = 'anonymous_id' AND r.anonymousId = gt.record_id)
               OR (gt.entity = 'user_id' AND r.userId = gt.record_id))
        SELECT * FROM lm UNION ALL SELECT * FROM sb UNION ALL SELECT * FROM ev UNION ALL SELECT * FROM tk
        UNION ALL SELECT * FROM tx UNION ALL SELECT * FROM wb""").fetchall()
    out: dict[str, dict[str, set[str]]] = {}
    for pid, email, phone in rows:
        d = out.setdefault(pid, {"ids": set(), "emails": set(), "phones": set()})
        if email and email.strip():
            d["emails"].add(email.strip().lower())
        if phone and phone.strip():
            d["phones"].add(phone.strip())
    for pid, rid in con.execute("SELECT person_id, record_id FROM gt").fetchall():
        out.setdefault(pid, {"ids": set(), "emails": set(), "phones": set()})["ids"].add(rid)
    return out


def exclusive_needles(values: dict[str, dict[str, set[str]]], pid: str) -> dict[str, set[str]]:
    """The person's identifiers no other true person has (junk values and shared landlines out);
    phones also in E.164, as the golden record holds them."""
    mine = values[pid]
    def owners(kind, v, norm=lambda x: x):
        return {p for p, d in values.items() if any(norm(x) == norm(v) for x in d[kind])}
    emails = {e for e in mine["emails"] if owners("emails", e) == {pid} and re.fullmatch(EMAIL_RE, e)}
    phones = set()
    for ph in mine["phones"]:
        if phone_e164(ph) and owners("phones", ph, phone_e164) == {pid} and sum(c.isdigit() for c in ph) >= 10:
            phones |= {ph, phone_e164(ph)}
    ids = {i for i in mine["ids"] if owners("ids", i) == {pid}}
    return {"emails": emails, "phones": phones, "ids": ids}


def person_extras(con) -> dict[str, dict[str, set[str]]]:
    """true person -> {'names': first and last name together, as written (lower case), 'cards':
    card tokens of their receipts}; only values no other true person has (namesakes out)."""
    rows = con.execute("""
        SELECT gt.person_id, r.first_name, r.last_name, NULL FROM gt JOIN raw.pos_loyalty_members r
            ON gt.entity = 'loyalty_members' AND r._source = gt.source AND r.loyalty_id = gt.record_id
        UNION ALL SELECT gt.person_id, r.first_name, r.last_name, NULL FROM gt JOIN raw.email_subscribers r
            ON gt.entity = 'subscribers' AND r.subscriber_id = gt.record_id
        UNION ALL SELECT gt.person_id, r.requester_name, NULL, NULL FROM gt JOIN raw.support_tickets r
            ON gt.entity = 'tickets' AND r.ticket_id = gt.record_id
        UNION ALL SELECT gt.person_id, r.traits->>'$.first_name', r.traits->>'$.last_name', NULL FROM gt
            JOIN raw.web_events r ON (gt.entity = 'anonymous_id' AND r.anonymousId = gt.record_id)
                                  OR (gt.entity = 'user_id' AND r.userId = gt.record_id)
        UNION ALL SELECT gt.person_id, NULL, NULL, r.card_token FROM gt JOIN raw.pos_transactions r
            ON gt.entity = 'transactions' AND r._source = gt.source AND r.transaction_id = gt.record_id""").fetchall()
    owners: dict[tuple[str, str], set[str]] = {}
    for pid, first, last, card in rows:
        name = " ".join(" ".join(x.split()) for x in (first, last) if x and x.strip()).lower()
        if first and last and first.strip() and last.strip():
            owners.setdefault(("names", name), set()).add(pid)
        elif first and not last and len(name.split()) >= 2:  # a ticket's requester_name
            owners.setdefault(("names", name), set()).add(pid)
        if card and card.strip():
            owners.setdefault(("cards", card.strip().lower()), set()).add(pid)
    out: dict[str, dict[str, set[str]]] = {}
    for (kind, value), pids in owners.items():
        if len(pids) == 1:
            out.setdefault(next(iter(pids)), {"names": set(), "cards": set()})[kind].add(value)
    return out


def choose_person(con, truth: Path, delivered: set[str]) -> tuple[str, str, dict]:
    """A true person in all four sources, with a receipt (the export must hold its line items),
    whose records identity put in exactly one person, alone, and whom the syncs delivered to
    both destinations (``delivered``: person ids), who paid by card and whose name no one else has."""
    values = person_values(con, truth)
    extras = person_extras(con)
    linked = con.execute("""
        WITH m AS (SELECT gt.person_id AS true_id, gt.source, gt.entity, g.person_id AS pid FROM gt
                   LEFT JOIN identity.graph g ON g.source = gt.source AND g.entity = gt.entity
                        AND g.source_record_id = gt.record_id),
        pure AS (SELECT g.person_id AS pid FROM identity.graph g JOIN gt ON g.source = gt.source
                     AND g.entity = gt.entity AND g.source_record_id = gt.record_id
                 GROUP BY 1 HAVING count(DISTINCT gt.person_id) = 1)
        SELECT true_id, any_value(pid), list(DISTINCT source), list(DISTINCT entity) FROM m GROUP BY true_id
        HAVING count(DISTINCT pid) = 1 AND count(*) FILTER (WHERE pid IS NULL) = 0
           AND any_value(pid) IN (SELECT pid FROM pure)
        ORDER BY true_id""").fetchall()
    for true_id, pid, sources, entities in linked:
        if pid not in delivered or {KIND_OF_SOURCE[s] for s in sources} != {"web", "email", "pos", "support"}:
            continue
        if "transactions" not in entities:
            continue
        needles = {**exclusive_needles(values, true_id), **extras.get(true_id, {"names": set(), "cards": set()})}
        if needles["emails"] and needles["phones"] and len(needles["ids"]) >= 4 and needles["cards"] and needles["names"]:
            return true_id, pid, needles
    raise AssertionError("no person in all four sources, delivered to both destinations, with exclusive "
                         "identifiers; change SEED")


# --------------------------------------------------------------------------- searching
def _pattern(needles: set[str]) -> str:
    alternatives = "|".join(re.escape(n.lower()) for n in sorted(needles, key=len, reverse=True))
    return f"(^|[^a-z0-9_])({alternatives})($|[^a-z0-9_])"


def search_db(con, needles: set[str]) -> dict[str, int]:
    """Rows holding any needle, per table or view, over every column cast to text."""
    hits = {}
    relations = con.execute("""
        SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database()
        UNION ALL SELECT schema_name, view_name FROM duckdb_views()
        WHERE database_name = current_database() AND NOT internal""").fetchall()
    for schema, table in relations:
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
            "AND table_schema = ? AND table_name = ?", [schema, table]).fetchall()]
        text = "lower(concat_ws(chr(31), " + ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols) + "))"
        n = con.execute(f'SELECT count(*) FROM "{schema}"."{table}" WHERE regexp_matches({text}, ?)',
                        [_pattern(needles)]).fetchall()[0][0]
        if n:
            hits[f"{schema}.{table}"] = n
    return hits


def search_snapshots(published: Path, needles: set[str]) -> dict[str, dict[str, int]]:
    out = {}
    files = sorted((published / SNAPSHOTS).glob("*.duckdb")) + [current_path(published)]
    for path in files:
        con = duckdb.connect(str(path), read_only=True)
        try:
            hits = search_db(con, needles)
        finally:
            con.close()
        raw = path.read_bytes().lower()
        hits.update({f"bytes:{n}": 1 for n in needles if "@" in n and n.lower().encode() in raw})
        if hits:
            out[path.name] = hits
    return out


def search_everywhere(config, needles: set[str]) -> dict:
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        warehouse = search_db(con, needles)
    return {"warehouse": warehouse, "snapshots": search_snapshots(config.published_dir, needles)}


def search_project_files(config, needles: set[str]) -> dict[str, object]:
    """Every file under the project folder: DuckDB databases (warehouse, snapshots, sync state)
    through SQL, every other file (Dagster's SQLite storage and compute logs, last_run.json,
    reports, report.html, dbt's files...) as bytes. The landing folder is left out: it holds the
    source systems' exports, which erasure does not rewrite (the README's retention note)."""
    pattern = re.compile(_pattern(needles).encode())
    landing = config.landing_dir.resolve()
    hits: dict[str, object] = {}
    for path in sorted(config.root.resolve().rglob("*")):
        if not path.is_file() or landing in path.parents:
            continue
        data = path.read_bytes()
        if data[8:12] == b"DUCK":
            con = duckdb.connect(str(path), read_only=True)
            try:
                found = search_db(con, needles)
            finally:
                con.close()
        else:
            found = sorted({m.group(2).decode() for m in pattern.finditer(data.lower())})
        if found:
            hits[str(path.relative_to(config.root.resolve()))] = found
    return hits


def search_sync_state(config, needles: set[str]) -> dict[str, int]:
    """The sync state file: its tables (every column as text) and its bytes."""
    path = state_path(config.root)
    con = duckdb.connect(str(path), read_only=True)
    try:
        hits = search_db(con, needles)
    finally:
        con.close()
    raw = b"".join(f.read_bytes().lower() for f in (path, Path(f"{path}.wal")) if f.exists())
    hits.update({f"bytes:{n}": 1 for n in needles if len(n) >= 6 and n.lower().encode() in raw})
    return hits


def search_destinations(klaviyo, mailchimp, needles: set[str]) -> dict[str, list[str]]:
    """What the two local destinations hold (Klaviyo's profiles, lists and import jobs;
    Mailchimp's audiences), searched as JSON text. Their counters of calls (deliveries,
    deleted, archived) are the tests' instruments, not data a real destination keeps."""
    with klaviyo.lock:
        k = json.dumps({"profiles": klaviyo.profiles, "lists": {i: sorted(m) for i, m in klaviyo.lists.items()},
                        "jobs": klaviyo.jobs}, default=str)
    with mailchimp.lock:
        m = json.dumps(mailchimp.lists, default=str)
    pattern = re.compile(_pattern(needles))
    found = {name: sorted({hit.group(2) for hit in pattern.finditer(text.lower())})
             for name, text in (("klaviyo", k), ("mailchimp", m))}
    return {name: hits for name, hits in found.items() if hits}


def row_counts(config) -> dict[str, int]:
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                             "WHERE database_name = current_database()").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchall()[0][0] for s, t in tables}


# --------------------------------------------------------------------------- sync destinations
KLAVIYO_KEY, MAILCHIMP_KEY = ("PRIVACY_TEST_KLAVIYO_KEY", "pk_privacy"), ("PRIVACY_TEST_MAILCHIMP_KEY", "mc_privacy-us1")
QUICK_RETRY = {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.05, "timeout_s": 5.0}


def add_syncs(cfg_path: Path, klaviyo_url: str, mailchimp_url: str) -> None:
    """Two syncs of the consented customers, one to each local destination; they also carry the
    person's phone and person_id, so that those must be erased there too."""
    data = yaml.safe_load(cfg_path.read_text())
    # fresh dicts per sync: shared ones would be written as YAML aliases, which cdp.yaml refuses
    source, consent = lambda: {"table": "customers"}, lambda: {"channel": "email_marketing"}
    data["syncs"] = [
        {"name": "customers_to_klaviyo", "source": source(), "consent": consent(), "retry": dict(QUICK_RETRY),
         "destination": {"type": "klaviyo", "base_url": klaviyo_url, "api_key_env": KLAVIYO_KEY[0],
                         "list_id": "LIST1", "job_poll_interval_s": 0.0},
         "fields": {"first_name": "first_name", "last_name": "last_name", "phone": "phone",
                    "external_id": "person_id"}},
        {"name": "customers_to_mailchimp", "source": source(), "consent": consent(), "retry": dict(QUICK_RETRY),
         "destination": {"type": "mailchimp", "base_url": mailchimp_url, "api_key_env": MAILCHIMP_KEY[0],
                         "list_id": "AUD1"},
         "fields": {"FNAME": "first_name", "LNAME": "last_name", "PHONE": "phone", "TESSERA_ID": "person_id"}},
    ]
    cfg_path.write_text(yaml.safe_dump(data))


def delivered_to_both(config) -> set[str]:
    con = duckdb.connect(str(state_path(config.root)), read_only=True)
    try:
        return {r[0] for r in con.execute("""
            SELECT person_id FROM sync_state WHERE in_audience AND rejected_reason IS NULL
            GROUP BY 1 HAVING count(DISTINCT sync) = 2""").fetchall()}
    finally:
        con.close()


# --------------------------------------------------------------------------- landing again
def land_again(config, needles: set[str]) -> list[str]:
    """Copies (new names) of every landed file holding the person, and new files with only the
    person's lines, one of them with a malformed line that holds their email."""
    pattern = re.compile(_pattern(needles))
    written = []
    email = sorted(n for n in needles if "@" in n)[0]
    for path in sorted(config.landing_dir.rglob("*")):
        if not path.is_file() or "ground_truth" in path.parts or path.suffix not in (".csv", ".jsonl"):
            continue
        lines = path.read_text().splitlines(keepends=True)
        body = lines[1:] if path.suffix == ".csv" else lines
        mine = [ln for ln in body if pattern.search(ln.lower())]
        if not mine:
            continue
        copy = path.with_name(f"{path.stem}_again{path.suffix}")
        shutil.copy(path, copy)
        extract = path.with_name(f"{path.stem}_person{path.suffix}")
        head = lines[:1] if path.suffix == ".csv" else []
        if path.parent.name == "support":
            mine = mine + [f'{{"ticket_id": "TK-BROKEN", "requester_email": "{email}", "channel": \n']
        extract.write_text("".join(head + mine))
        written += [copy.name, extract.name]
    return written


def land_identifiers_elsewhere(config, needles: dict[str, set[str]], card_landed: tuple[str, str]) -> dict[str, int]:
    """New files whose rows carry one identifier of the person each, where no row of theirs had it
    before: a receipt with only their card token (a new receipt id, no loyalty id, email or
    phone), web events from new devices with their email only in properties.email or only in
    context.traits.email (their phone in context.traits.phone). ``card_landed``: (a receipt file
    of the store system they paid in, their card token as written there). Returns file -> rows."""
    email = sorted(needles["emails"])[0]
    phone = sorted(p for p in needles["phones"] if p.startswith("+"))[0]
    pos_file, card_as_landed = card_landed
    pos = config.landing_dir / pos_file
    header = pos.read_text().splitlines()[0]
    row = dict.fromkeys(header.split(","), "")
    row.update(transaction_id="TX-RELAND-1", store_id="S001", occurred_at="2026-06-29T10:00:00Z", channel="store",
               subtotal="12.5", discount="0", total="12.5", payment_method="card", card_token=card_as_landed)
    receipt = pos.with_name("transactions_2026-06_cardonly.csv")
    receipt.write_text(header + "\n" + ",".join(row[c] for c in header.split(",")) + "\n")
    base = {"type": "track", "event": "order_completed", "timestamp": "2026-06-29T10:00:00Z"}
    events = [
        {**base, "messageId": "m-reland-1", "anonymousId": "dev-reland-1", "properties": {"email": email, "revenue": 5}},
        {**base, "messageId": "m-reland-2", "anonymousId": "dev-reland-2", "properties": {"revenue": 5},
         "context": {"traits": {"email": email}}},
        {**base, "messageId": "m-reland-3", "anonymousId": "dev-reland-3", "context": {"traits": {"phone": phone}}},
    ]
    web = config.landing_dir / "web" / "events_2026-06-29_reland.jsonl"
    web.write_text("".join(json.dumps(e) + "\n" for e in events))
    return {receipt.name: 1, web.name: len(events)}


# --------------------------------------------------------------------------- the fixture
@pytest.fixture(scope="module")
def story(tmp_path_factory):
    from ingestion.generator import generate

    root = tmp_path_factory.mktemp("privacy")
    cfg_path = init_project(root / "proj")
    data = yaml.safe_load(cfg_path.read_text())
    data["as_of"] = AS_OF.isoformat()
    data["identity"] = {"splink": {"enabled": False}}
    data["ingestion"] = {"max_bad_row_rate": 0.5}  # small monthly files: a couple of bad rows is a big share
    cfg_path.write_text(yaml.safe_dump(data))
    config = load_config(cfg_path)
    generate(customers=CUSTOMERS, seed=SEED, out=config.landing_dir, as_of=AS_OF)
    truth = config.landing_dir / "ground_truth" / "record_person.csv"
    s: dict = {"config": config, "cfg_path": cfg_path, "truth": truth}

    s["run1"] = cdp(cfg_path, "run")
    marts = ("customers", "customer_traits", "segment_membership", "segment_membership_history",
             "identity_graph", "identity_changes", "consent")
    with open_warehouse(config.warehouse_path) as con:
        tables = {t: f"marts.{t}" for t in marts}
        publish(con, tables, config.published_dir, run_id="first", gate={"test": "privacy"})
        publish(con, tables, config.published_dir, run_id="second", gate={"test": "privacy"})

    # Two sync destinations, fed from the published snapshot by the real syncs.
    env = pytest.MonkeyPatch()
    klaviyo = LocalKlaviyo(api_key=KLAVIYO_KEY[1]).start()
    mailchimp = LocalMailchimp(api_key=MAILCHIMP_KEY[1]).start()
    s["klaviyo"], s["mailchimp"] = klaviyo, mailchimp
    try:
        env.setenv(*KLAVIYO_KEY)
        env.setenv(*MAILCHIMP_KEY)
        add_syncs(cfg_path, klaviyo.url, mailchimp.url)
        s["sync"] = cdp_inprocess(cfg_path, "sync", "--all")
        delivered = delivered_to_both(config)
        yield from _story_after_syncs(s, config, cfg_path, root, truth, delivered)
    finally:
        klaviyo.stop()
        mailchimp.stop()
        env.undo()


def _story_after_syncs(s, config, cfg_path, root, truth, delivered):
    with open_warehouse(config.warehouse_path) as con:
        s["true_id"], s["person_id"], s["needles"] = choose_person(con, truth, delivered)
        s["card_landed"] = con.execute(
            "SELECT any_value(_file), any_value(card_token) FROM raw.pos_transactions WHERE lower(card_token) = ?",
            [sorted(s["needles"]["cards"])[0]]).fetchall()[0]
        s["gt_records"] = con.execute("SELECT source, entity, record_id FROM gt WHERE person_id = ?",
                                      [s["true_id"]]).fetchall()
        s["data_emails"] = {r[0] for r in con.execute(f"""
            SELECT DISTINCT lower(trim(v)) FROM (
                SELECT email AS v FROM raw.pos_loyalty_members UNION ALL SELECT email FROM raw.email_subscribers
                UNION ALL SELECT requester_email FROM raw.support_tickets UNION ALL SELECT email FROM raw.pos_transactions
                UNION ALL SELECT traits->>'$.email' FROM raw.web_events)
            WHERE regexp_full_match(trim(v), '{EMAIL_RE}')""").fetchall()}
        s["data_phones"] = {r[0] for r in con.execute("""
            SELECT DISTINCT trim(v) FROM (
                SELECT phone AS v FROM raw.pos_loyalty_members UNION ALL SELECT requester_phone FROM raw.support_tickets
                UNION ALL SELECT phone FROM raw.pos_transactions UNION ALL SELECT traits->>'$.phone' FROM raw.web_events)
            WHERE length(regexp_replace(v, '[^0-9]', '', 'g')) >= 10""").fetchall()}
    s["needle_set"] = set().union(*s["needles"].values()) | {s["person_id"]}
    klaviyo, mailchimp = s["klaviyo"], s["mailchimp"]
    s["before"] = search_everywhere(config, s["needle_set"])
    s["before_destinations"] = search_destinations(klaviyo, mailchimp, s["needle_set"])
    s["before_state"] = search_sync_state(config, s["needle_set"])
    s["delivered_key"] = next((e for e in s["needles"]["emails"] if klaviyo.profile(e) and mailchimp.member(e)), None)
    s["delivered_counts"] = {"klaviyo": len(klaviyo.profiles), "mailchimp": len(mailchimp.lists["AUD1"])}

    email = sorted(s["needles"]["emails"])[0]
    s["export_path"] = root / "subject.json"
    s["export_cli"] = cdp_inprocess(cfg_path, "export-subject", "--email", email, "--out", str(s["export_path"]))
    s["export"] = json.loads(s["export_path"].read_text())

    s["forget"] = cdp_inprocess(cfg_path, "forget", "--email", email)
    # First with Mailchimp unreachable: the run fails, the request stays pending, nothing is
    # deleted from the warehouse or the snapshots; then with it back, the request is applied.
    counts = row_counts(config)
    mailchimp.stop()
    s["run_unreachable"] = cdp_inprocess(cfg_path, "run", "--only", "privacy", check=False)
    s["after_unreachable"] = {
        "pending": sorted(p.name for p in requests_dir(config).glob("*.json")),
        "done": sorted(p.name for p in (requests_dir(config) / "done").glob("*.json")),
        "reports": sorted(p.name for p in (config.resolve(config.privacy.folder) / "reports").glob("*.json")),
        "search": search_everywhere(config, s["needle_set"]),
        "row_counts_changed": {t: (n, m) for t, n in counts.items() if (m := row_counts(config).get(t)) != n},
        "state": search_sync_state(config, s["needle_set"]),
    }
    mailchimp.start()  # the same port and audience: the destination is back

    s["run2"] = cdp_inprocess(cfg_path, "run", "--only", "privacy")
    s["after_erasure"] = search_everywhere(config, s["needle_set"])
    s["after_erasure_destinations"] = search_destinations(klaviyo, mailchimp, s["needle_set"])
    s["after_erasure_state"] = search_sync_state(config, s["needle_set"])
    s["files_after_erasure"] = search_project_files(config, s["needle_set"])

    s["relanded"] = land_again(config, s["needles"]["emails"] | s["needles"]["phones"] | s["needles"]["ids"])
    s["relanded_elsewhere"] = land_identifiers_elsewhere(config, s["needles"], s["card_landed"])
    s["run3"] = cdp_inprocess(cfg_path, "run", "--only", "ingestion")
    s["after_reland"] = search_everywhere(config, s["needle_set"])
    s["files_after_reland"] = search_project_files(config, s["needle_set"])
    yield s


# --------------------------------------------------------------------------- erasure
def test_person_is_found_everywhere_before_erasure(story):
    """The search works: before erasure it finds the person in raw, identity, marts and snapshots."""
    hits = story["before"]["warehouse"]
    for table in ("raw.pos_loyalty_members", "raw.email_subscribers", "raw.support_tickets", "raw.web_events",
                  "identity.records", "identity.graph", "marts.customers", "marts.identity_graph"):
        assert hits.get(table), (table, hits)
    assert set(story["before"]["snapshots"]) >= {"first.duckdb", "second.duckdb", "tessera.duckdb"}
    # the syncs delivered them to both destinations, with their email, phone and person_id
    for name in ("klaviyo", "mailchimp"):
        found = set(story["before_destinations"].get(name, []))
        assert found & story["needles"]["emails"] and found & story["needles"]["phones"], (name, found)
        assert story["person_id"].lower() in found, (name, found)
    assert story["before_state"].get("main.sync_state") == 2 and story["before_state"].get("main.sync_log", 0) >= 2


def test_erasure_leaves_no_trace_in_warehouse_or_snapshots(story):
    assert story["after_erasure"] == {"warehouse": {}, "snapshots": {}}, story["after_erasure"]


def test_erasure_reaches_both_sync_destinations_and_the_sync_state(story):
    assert story["after_erasure_destinations"] == {}, story["after_erasure_destinations"]
    assert story["after_erasure_state"] == {}, story["after_erasure_state"]
    # deleted for good (a data-privacy deletion job / permanent delete), not only unsubscribed
    key = story["delivered_key"]
    assert key in story["klaviyo"].deleted and key in story["mailchimp"].deleted
    assert story["klaviyo"].profile(key) is None and story["mailchimp"].member(key) is None
    # the other persons stay where they were
    assert len(story["klaviyo"].profiles) == story["delivered_counts"]["klaviyo"] - 1
    assert len(story["mailchimp"].lists["AUD1"]) == story["delivered_counts"]["mailchimp"] - 1


def test_an_unreachable_destination_keeps_the_request_pending_and_the_warehouse_whole(story):
    failed, after = story["run_unreachable"], story["after_unreachable"]
    assert failed.exit_code == 1, failed.output[-3000:]
    out = " ".join(failed.output.split())
    assert "customers_to_mailchimp" in out and "stays pending" in out, out[-3000:]
    assert not [n for n in story["needle_set"] if n.lower() in out.lower()]
    assert len(after["pending"]) == 1 and after["done"] == [] and after["reports"] == []
    assert after["row_counts_changed"] == {}
    assert after["search"] == story["before"], after["search"]
    # the sync state keeps the person, so that the next run retries their deletion
    assert after["state"].get("main.sync_state") == 2, after["state"]
    # with the destination back, the next run applied it: see the report and the searches
    report = json.loads(next((story["config"].resolve(story["config"].privacy.folder) / "reports")
                             .glob("erasure-*.json")).read_text())
    assert report["request_id"] + ".json" == after["pending"][0]


def test_landing_the_old_files_again_does_not_bring_the_person_back(story):
    assert story["relanded"], "the person's files were found in the landing folder"
    assert story["after_reland"] == {"warehouse": {}, "snapshots": {}}, story["after_reland"]
    config = story["config"]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        loads = con.execute("""SELECT file, status, rows_loaded, rows_quarantined, rows_erased FROM raw.loads
                               WHERE file LIKE '%\\_again.%' ESCAPE '\\' OR file LIKE '%\\_person.%' ESCAPE '\\'""").fetchall()
    by_file = {Path(f).name: (st, ok, q, er) for f, st, ok, q, er in loads}
    for name in story["relanded"]:
        status, loaded, quarantined, erased = by_file[name]
        if name.endswith(("_again.csv", "_again.jsonl")):
            assert status == "duplicate", (name, by_file[name])
        else:  # only the person's rows: every one dropped as erased, none loaded or quarantined
            assert (status, loaded, quarantined) == ("loaded", 0, 0) and erased > 0, (name, by_file[name])
    tickets = [v for k, v in by_file.items() if k.startswith("tickets_") and k.endswith("_person.jsonl")]
    assert tickets and all(v[3] >= 2 for v in tickets)  # incl. the malformed line, never quarantined


def test_erasure_leaves_no_trace_in_any_file_of_the_project(story):
    """After `cdp forget` and a run, no file under the project folder holds an identifier of
    the person (salted hashes aside): not the warehouse (raw.loads' messages included), not
    Dagster's run storage or compute logs, last_run.json, the reports nor an old snapshot's
    report.html (person id); nor after their files are landed again."""
    assert story["files_after_erasure"] == {}, story["files_after_erasure"]
    assert story["files_after_reland"] == {}, story["files_after_reland"]


def test_a_receipt_with_only_their_card_token_or_an_event_with_their_email_elsewhere_stays_out(story):
    config = story["config"]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        loads = {Path(f).name: (st, ok, q, er) for f, st, ok, q, er in con.execute(
            "SELECT file, status, rows_loaded, rows_quarantined, rows_erased FROM raw.loads").fetchall()}
    for name, rows in story["relanded_elsewhere"].items():
        assert loads[name] == ("loaded", 0, 0, rows), (name, loads.get(name))


def test_erasure_report_holds_hashes_and_counts_only(story):
    config = story["config"]
    reports = list((config.resolve(config.privacy.folder) / "reports").glob("erasure-*.json"))
    assert len(reports) == 1
    text = reports[0].read_text()
    report = json.loads(text)
    assert report["status"] == "erased" and len(report["persons"]) == 1
    for table in ("raw.web_events", "raw.email_subscribers", "raw.support_tickets", "identity.graph"):
        assert report["rows_removed"].get(table, 0) > 0, report["rows_removed"]
    assert any(t.startswith("raw.pos_") for t in report["rows_removed"])
    # every kept snapshot held them: the two written here and the one `cdp run` published
    kept = {h["run_id"] for h in read_manifest(config.published_dir)["history"]}
    assert {"first", "second"} <= set(report["snapshots_rewritten"]) == kept, (report["snapshots_rewritten"], kept)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in report["erased_hashes"])
    assert not [n for n in story["needle_set"] if n.lower() in text.lower()]
    sync = report["sync_destinations"]
    assert sorted((d["sync"], d["deleted"]) for d in sync["destinations"]) == [
        ("customers_to_klaviyo", 1), ("customers_to_mailchimp", 1)], sync
    assert sync["sync_state_rows_removed"]["sync_state"] == 2, sync
    # the manifest's row counts follow the rewritten snapshots
    manifest = read_manifest(config.published_dir)
    with duckdb.connect(str(current_path(config.published_dir)), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
    assert manifest["history"][0]["tables"]["customers"] == n
    # the request moved to done/ and the next run had nothing to apply
    requests = config.resolve(config.privacy.folder) / "requests"
    assert not list(requests.glob("*.json")) and len(list((requests / "done").glob("*.json"))) == 1


def test_forget_stores_no_plain_identifier_and_the_salt_is_private(story):
    config = story["config"]
    done = next((config.resolve(config.privacy.folder) / "requests" / "done").glob("*.json"))
    assert "@" not in done.read_text()
    salt = config.resolve(config.privacy.salt_file)
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600 and len(salt.read_text().strip()) == 64
    assert "@" not in story["forget"].output


def test_forget_without_a_salt_is_a_clear_error(story, tmp_path):
    cfg = tmp_path / "cdp.yaml"
    cfg.write_text(yaml.safe_dump({"privacy": {"salt_file": "missing/salt"}}))
    done = cdp_inprocess(cfg, "forget", "--email", "someone@example.com", check=False)
    assert done.exit_code == 2
    assert "CDP_PRIVACY_SALT" in done.output and "privacy.salt_file" in done.output
    assert "someone@example.com" not in done.output


# --------------------------------------------------------------------------- subject access
def test_subject_export_holds_every_source_record_of_the_person(story):
    export = story["export"]
    assert export["found"] and export["person_ids"] == [story["person_id"]]
    exported = set()
    for entity, (table, column) in RECORD_TABLE.items():
        for row in export["source_records"].get(table, []):
            if row.get(column):
                exported.add((row["_source"], entity, row[column]))
    truth = {(s, e, r) for s, e, r in story["gt_records"]}
    assert truth <= exported, sorted(truth - exported)[:10]
    # and only the person's: every exported record is theirs in the ground truth
    record_entities = {e for _, e, _ in truth}
    assert {x for x in exported if x[1] in record_entities and x[1] != "transactions"} <= truth
    for table in ("email_events", "pos_line_items"):
        assert export["source_records"].get(table), table
    profile = export["profile"]
    assert [r["person_id"] for r in profile["golden_record"]] == [story["person_id"]]
    assert len(profile["traits"]) == 1 and "segments" in profile
    assert all(r["person_id"] == story["person_id"] for r in profile["consent"])
    assert export["identity"]["graph"] and "sync_history" in export
    assert "wrote" in story["export_cli"].output


# --------------------------------------------------------------------------- PII in its place
def test_only_customers_holds_pii_among_published_tables(story):
    config = story["config"]
    with duckdb.connect(str(current_path(config.published_dir)), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        assert "customers" in tables
        for table in tables:
            if table == "customers":
                continue
            cols = con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                               "AND data_type = 'VARCHAR'", [table]).fetchall()
            for (col,) in cols:
                assert not re.search(r"email|phone|name|address|postcode|birth", col) or col in ("segment",), (table, col)
                n = con.execute(f"""SELECT count(*) FROM "{table}" WHERE regexp_matches("{col}", '{EMAIL_RE}')
                                    OR regexp_full_match("{col}", '\\+?[0-9][0-9 ()\\-]{{8,}}')""").fetchall()[0][0]
                assert n == 0, (table, col)


def test_logs_of_a_full_run_hold_no_email_or_phone(story):
    config = story["config"]
    logs = [story["run1"].stdout, story["run1"].stderr, story["run2"].output, story["run3"].output,
            story["sync"].output, story["run_unreachable"].output]
    for path in config.dagster_home.rglob("*"):  # all runs' event logs, compute logs, last_run.json
        if path.is_file():
            logs.append(path.read_bytes().decode("utf-8", "ignore"))
    text = "\n".join(logs).lower()
    assert "identity:" in text and "dbt:" in text and "privacy:" in text  # the runs' progress lines
    emails = story["data_emails"]
    phones = story["data_phones"] | {p for p in (phone_e164(x) for x in story["data_phones"]) if p}
    assert len(emails) > 100 and len(phones) > 100
    found = [e for e in emails if e in text] + [p for p in phones if p.lower() in text]
    # nor an email's MD5 (Mailchimp's subscriber hash, in its member URLs)
    found += [e for e in emails if hashlib.md5(e.encode()).hexdigest() in text]
    # the "means unknown" placeholders dbt_project.yml declares reach dbt's manifest (in the
    # project's dbt target folder) as configuration, not as anyone's data
    dbt_vars = yaml.safe_load((dbt_project_dir() / "dbt_project.yml").read_text())["vars"]
    placeholders = {v.lower() for v in dbt_vars["junk_emails"]} | set(dbt_vars["junk_phone_digits"])
    found = [f for f in found if f.lower() not in placeholders and f.lstrip("+") not in placeholders
             and f.strip("+0") != ""]
    assert not found, found[:10]


def test_log_records_are_masked_when_created(capsys):
    """Masking at record creation reaches every handler, including ones added later (as
    Dagster adds its own to capture `tessera` into the event log)."""
    import logging

    from core.pii import install_log_masking, mask_pii

    install_log_masking()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    log = logging.getLogger("tessera.test_privacy")
    handler = Keep()
    log.addHandler(handler)
    try:
        log.warning("row for %s / %s at 2026-06-30 12:00:00, 1,234 rows, run 20260630T120000",
                    "Jane.Doe+shop@Example.co.uk", "(07700) 900123")
    finally:
        log.removeHandler(handler)
    assert seen == ["row for <email> / <phone> at 2026-06-30 12:00:00, 1,234 rows, run 20260630T120000"]
    for phone in ("+447700900123", "07700 900123", "447700900123", "07700-900-123", "+44 7700 900123"):
        assert mask_pii(f"x {phone} y") == "x <phone> y", phone
    # a malformed email is still masked; a metric's name with an @ is not an email
    assert mask_pii("from jane@example, HitRate@10 0.62") == "from <email>, HitRate@10 0.62"


CARD_TOKEN = "ct_00c0ffee1234abcd"  # the generator's shape: ct_ + 16 hex digits


def test_card_tokens_and_sampled_values_are_masked_in_logs_check_metadata_and_run_summaries(tmp_path, capsys):
    """The ingestion stage on receipts whose emails are malformed: the source check samples the
    failing rows (card token, loyalty id, the invalid email) into its metadata, and a log line
    quotes a card token. Neither reaches Dagster's storage, the run summary or the output."""
    import logging

    from core.pii import install_log_masking

    cfg_path = init_project(tmp_path / "proj")
    config = load_config(cfg_path)
    header = "transaction_id,store_id,occurred_at,loyalty_id,email,phone,channel,order_ref,subtotal,discount,total,payment_method,card_token"
    rows = [f"T{i},S1,2026-06-01T10:00:00Z,LOY-SECRET-{i},not-an-email-{i},,store,,10,0,10,card,{CARD_TOKEN}"
            for i in range(5)]
    (config.landing_dir / "pos").mkdir(parents=True, exist_ok=True)
    (config.landing_dir / "pos" / "transactions_2026-06.csv").write_text("\n".join([header, *rows]) + "\n")

    result = cdp_inprocess(cfg_path, "run", "--only", "ingestion", "--json", check=False)
    install_log_masking()
    logging.getLogger("tessera.test_privacy").warning("receipt paid with %s", CARD_TOKEN)
    captured = capsys.readouterr()
    # the check did fail and sample the rows (else there would be nothing to mask)
    summary = json.loads((config.dagster_home / "last_run.json").read_text())
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert any("email_invalid" in c["detail"] or "invalid" in c["check"] for c in failed), summary["checks"]
    texts = [result.output, captured.out, captured.err]
    texts += [p.read_bytes().decode("utf-8", "ignore") for p in config.dagster_home.rglob("*") if p.is_file()]
    texts += [p.read_bytes().decode("utf-8", "ignore") for p in config.reports_dir.rglob("*") if p.is_file()]
    text = "\n".join(texts)
    assert "failing_rows_masked" in text  # the sample is in the event log, masked
    for secret in (CARD_TOKEN, "LOY-SECRET-", "not-an-email-"):
        assert secret.lower() not in text.lower(), secret
    assert "<card_token>" in captured.err + captured.out or "<card_token>" in text


def test_erasure_reaches_rows_kept_under_an_id_merged_away_since(tmp_path, monkeypatch):
    """A person synced and published under an old id, merged into another since (the sync and
    the older snapshot still hold the old id): erasure finds the old id through
    identity.id_history and removes it from the destination, the sync state and the snapshot."""
    from activation.sync import run_sync
    from privacy.erasure import process_requests
    from privacy.requests import record_request

    cfg_path = init_project(tmp_path / "proj")
    with LocalMailchimp(api_key=MAILCHIMP_KEY[1]) as mailchimp:
        monkeypatch.setenv(*MAILCHIMP_KEY)
        monkeypatch.setenv(*KLAVIYO_KEY)
        add_syncs(cfg_path, "http://127.0.0.1:9", mailchimp.url)  # the Klaviyo sync is not run here
        config = load_config(cfg_path)
        with open_warehouse(config.warehouse_path) as con:
            con.execute("CREATE SCHEMA identity; CREATE SCHEMA marts")
            con.execute("""CREATE TABLE identity.records AS SELECT * FROM (VALUES
                ('r1', 'email', 'subscribers', 'S1', 'old.self@example.com', 'old.self@example.com', NULL),
                ('r2', 'pos', 'loyalty_members', 'L2', 'new.self@example.com', 'new.self@example.com', NULL))
                t(record_key, source, entity, source_record_id, email, email_canon, phone)""")
            con.execute("""ALTER TABLE identity.records ADD COLUMN loyalty_id VARCHAR;
                ALTER TABLE identity.records ADD COLUMN user_id VARCHAR;
                ALTER TABLE identity.records ADD COLUMN anonymous_id VARCHAR;
                ALTER TABLE identity.records ADD COLUMN subscriber_id VARCHAR""")
            con.execute("""CREATE TABLE identity.graph AS SELECT * FROM (VALUES
                ('r1', 1, 'PNEW', 'email', 'subscribers', 'S1'), ('r2', 2, 'PNEW', 'pos', 'loyalty_members', 'L2'))
                t(record_key, rid, person_id, source, entity, source_record_id)""")
            con.execute("""CREATE TABLE identity.id_history AS SELECT * FROM (VALUES
                ('run1', 1, 'r1', 'POLD'), ('run1', 1, 'r2', 'PNEW'), ('run2', 2, 'r1', 'PNEW'))
                t(run_id, run_seq, record_key, person_id)""")
            # what was published before the merge: the old id, with the old email
            con.execute("""CREATE TABLE marts.customers AS SELECT * FROM (VALUES
                ('POLD', 'Old', 'Self', 'old.self@example.com', NULL), ('PKEEP', 'Other', 'One', 'other@example.com', NULL))
                t(person_id, first_name, last_name, email, phone)""")
            con.execute("""CREATE TABLE marts.consent AS SELECT * FROM (VALUES
                ('POLD', 'email_marketing', 'granted'), ('PKEEP', 'email_marketing', 'granted')) t(person_id, channel, status)""")
            publish(con, {"customers": "marts.customers", "consent": "marts.consent"}, config.published_dir,
                    run_id="before_merge", gate={"test": "privacy"})
        report = run_sync(config, "customers_to_mailchimp")
        assert report.ok and mailchimp.member_keys() == {"old.self@example.com", "other@example.com"}

        record_request(config, "email", "new.self@example.com")
        with open_warehouse(config.warehouse_path) as con:
            (erasure,) = process_requests(config, con)
        assert erasure["former_person_ids"] == 1, erasure
        assert mailchimp.member_keys() == {"other@example.com"}  # deleted, not only archived
        assert "old.self@example.com" in mailchimp.deleted
        assert search_sync_state(config, {"old.self@example.com", "pold"}) == {}
        assert search_snapshots(config.published_dir, {"old.self@example.com", "pold"}) == {}
        with duckdb.connect(str(current_path(config.published_dir)), read_only=True) as con:
            assert con.execute("SELECT list(person_id) FROM customers").fetchall()[0][0] == ["PKEEP"]
