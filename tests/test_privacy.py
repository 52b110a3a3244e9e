"""Privacy end to end on generated data: erasure that reaches everywhere, subject access, PII
kept out of analytical marts and out of logs.

One module-scoped project (300 generated customers, Splink off: identity by rules is enough
here), driven through the real `cdp` command in subprocesses:

1. `cdp run` in a subprocess (the full asset graph; its stdout/stderr and Dagster's storage
   are scanned for PII), then two published snapshots written with ``publish.snapshot.publish``;
2. a person present in all four sources, whose records identity links completely, is chosen
   from the generator's ground truth; `cdp export-subject --email` for them;
3. `cdp forget --email`, then the erasure asset alone (`cdp run --only privacy`);
4. their old files landed again - identical copies under new names, and new files holding
   only their rows (one line malformed) - and `cdp run --only ingestion`: the loader drops
   their rows. (identity and dbt rebuild only from raw, which then holds nothing of them; the
   erasure itself cleans incremental tables such as segment_membership_history. One full run
   here instead of three keeps the module within the test-time budget.)

The warehouse (every table and view of every schema, every column as text) and every kept
snapshot are searched for the person's identifiers after steps 1, 3 and 4.
"""

from __future__ import annotations

import datetime as dt
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

from cdp.config import load_config
from cdp.scaffold import init_project
from cdp.warehouse import open_warehouse
from identity.normalise import phone_e164
from publish.snapshot import SNAPSHOTS, current_path, publish, read_manifest

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


def choose_person(con, truth: Path) -> tuple[str, str, dict]:
    """A true person in all four sources whose records identity put in exactly one person, alone."""
    values = person_values(con, truth)
    linked = con.execute("""
        WITH m AS (SELECT gt.person_id AS true_id, gt.source, g.person_id AS pid FROM gt
                   LEFT JOIN identity.graph g ON g.source = gt.source AND g.entity = gt.entity
                        AND g.source_record_id = gt.record_id),
        pure AS (SELECT g.person_id AS pid FROM identity.graph g JOIN gt ON g.source = gt.source
                     AND g.entity = gt.entity AND g.source_record_id = gt.record_id
                 GROUP BY 1 HAVING count(DISTINCT gt.person_id) = 1)
        SELECT true_id, any_value(pid), list(DISTINCT source) FROM m GROUP BY true_id
        HAVING count(DISTINCT pid) = 1 AND count(*) FILTER (WHERE pid IS NULL) = 0
           AND any_value(pid) IN (SELECT pid FROM pure)
        ORDER BY true_id""").fetchall()
    for true_id, pid, sources in linked:
        if {KIND_OF_SOURCE[s] for s in sources} != {"web", "email", "pos", "support"}:
            continue
        needles = exclusive_needles(values, true_id)
        if needles["emails"] and needles["phones"] and len(needles["ids"]) >= 4:
            return true_id, pid, needles
    raise AssertionError("no person in all four sources with exclusive identifiers; change SEED")


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
        s["true_id"], s["person_id"], s["needles"] = choose_person(con, truth)
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
    s["before"] = search_everywhere(config, s["needle_set"])

    email = sorted(s["needles"]["emails"])[0]
    s["export_path"] = root / "subject.json"
    s["export_cli"] = cdp_inprocess(cfg_path, "export-subject", "--email", email, "--out", str(s["export_path"]))
    s["export"] = json.loads(s["export_path"].read_text())

    s["forget"] = cdp_inprocess(cfg_path, "forget", "--email", email)
    s["run2"] = cdp_inprocess(cfg_path, "run", "--only", "privacy")
    s["after_erasure"] = search_everywhere(config, s["needle_set"])

    s["relanded"] = land_again(config, s["needles"]["emails"] | s["needles"]["phones"] | s["needles"]["ids"])
    s["run3"] = cdp_inprocess(cfg_path, "run", "--only", "ingestion")
    s["after_reland"] = search_everywhere(config, s["needle_set"])
    return s


# --------------------------------------------------------------------------- erasure
def test_person_is_found_everywhere_before_erasure(story):
    """The search works: before erasure it finds the person in raw, identity, marts and snapshots."""
    hits = story["before"]["warehouse"]
    for table in ("raw.pos_loyalty_members", "raw.email_subscribers", "raw.support_tickets", "raw.web_events",
                  "identity.records", "identity.graph", "marts.customers", "marts.identity_graph"):
        assert hits.get(table), (table, hits)
    assert set(story["before"]["snapshots"]) >= {"first.duckdb", "second.duckdb", "tessera.duckdb"}


def test_erasure_leaves_no_trace_in_warehouse_or_snapshots(story):
    assert story["after_erasure"] == {"warehouse": {}, "snapshots": {}}, story["after_erasure"]


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
    assert set(report["snapshots_rewritten"]) == {"first", "second"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in report["erased_hashes"])
    assert not [n for n in story["needle_set"] if n.lower() in text.lower()]
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
    logs = [story["run1"].stdout, story["run1"].stderr, story["run2"].output, story["run3"].output]
    for path in config.dagster_home.rglob("*"):  # all runs' event logs, compute logs, last_run.json
        if path.is_file():
            logs.append(path.read_bytes().decode("utf-8", "ignore"))
    text = "\n".join(logs).lower()
    assert "identity:" in text and "dbt:" in text and "privacy:" in text  # the runs' progress lines
    emails = story["data_emails"]
    phones = story["data_phones"] | {p for p in (phone_e164(x) for x in story["data_phones"]) if p}
    assert len(emails) > 100 and len(phones) > 100
    found = [e for e in emails if e in text] + [p for p in phones if p.lower() in text]
    assert not found, found[:10]


def test_log_records_are_masked_when_created(capsys):
    """Masking at record creation reaches every handler, including ones added later (as
    Dagster adds its own to capture `tessera` into the event log)."""
    import logging

    from privacy.masking import install_log_masking, mask_pii

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
