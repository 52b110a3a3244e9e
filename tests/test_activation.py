"""Reverse-ETL syncs against real HTTP servers on 127.0.0.1 (Klaviyo- and Mailchimp-shaped),
with injected 429s, 500s, timeouts, dropped connections, a dying server and a killed sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from activation.local_servers import LocalKlaviyo, LocalMailchimp
from activation.state import state_path
from activation.sync import SyncError, erase_persons, run_sync
from core.config import ConfigError
from tests.activation_world import FAST_RETRY, World, klaviyo_sync, mailchimp_sync, make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("TEST_KLAVIYO_KEY", "pk_test")
    monkeypatch.setenv("TEST_MAILCHIMP_KEY", "mc_test-us1")


def _log(root: Path, sync: str) -> list[tuple]:
    with duckdb.connect(str(state_path(root)), read_only=True) as con:
        return con.execute("SELECT person_id, action, result, attempt, reason FROM sync_log WHERE sync = ? "
                           "ORDER BY logged_at, person_id", [sync]).fetchall()


def _consented(w: World) -> set[str]:
    return {w.persons[p]["email"] for (p, ch), s in w.consent.items()
            if ch == "email_marketing" and s == "granted" and p in w.persons and p in w.segments["vip"]}


def _emails(w: World, pids) -> set[str]:
    return {w.persons[p]["email"] for p in pids}


def test_klaviyo_exactly_once_consent_merges_and_erasure(tmp_path):
    w = World.make(40, consent_every=2)          # odd-numbered persons never consented
    w.persons["P00004"]["email"] = "not-an-email"  # the destination will refuse this one
    pub = tmp_path / "published"
    w.publish(pub)
    with LocalKlaviyo(burst_per_s=4, steady_per_min=1000) as k:
        cfg = make_config(tmp_path, [klaviyo_sync(k.url)])
        k.inject("POST /api/profile-bulk-import-jobs", "429", 0.01)
        k.inject("GET /api/profile-bulk-import-jobs", "500")
        k.inject("POST /api/profile-bulk-import-jobs", "drop", skip=1)
        k.inject("POST /api/profile-bulk-import-jobs", "timeout", 0.6, skip=1)

        r = run_sync(cfg, "vip_klaviyo")
        assert r.ok and r.planned["additions"] == 20 and r.sent == 19 and r.rejected == 1
        assert k.faults_served == {"429": 1, "500": 1, "drop": 1, "timeout": 1}
        wanted = _consented(w) - {"not-an-email"}
        # every intended change delivered exactly once; nobody without consent reached
        assert dict(k.deliveries) == {e: 1 for e in wanted}
        assert k.list_keys() == wanted
        rejected = [row for row in _log(tmp_path, "vip_klaviyo") if row[2] == "rejected"]
        assert rejected == [("P00004", "upsert", "rejected", 1, "Invalid email address: The email address is not valid.")]

        # a repeated run after success sends nothing
        before = sum(k.requests.values())
        r2 = run_sync(cfg, "vip_klaviyo")
        assert r2.planned == {"additions": 0, "updates": 0, "removals": 0, "retirements": 0}
        assert r2.requests == 0 and sum(k.requests.values()) == before

        # consent withdrawn, a field changed, a person left the segment (mirror), two merges
        w.consent[("P00002", "email_marketing")] = "denied"
        w.persons["P00010"]["first_name"] = "Changed"
        w.segments["vip"].discard("P00014")
        w.merge("P00006", into="P00008")               # different emails: merged into the survivor's profile
        w.persons["P09999"] = {**w.persons["P00012"], "first_name": "Survivor"}
        w.segments["vip"].add("P09999")
        w.consent[("P09999", "email_marketing")] = "granted"
        w.merge("P00012", into="P09999")               # the survivor holds the same email: one profile
        w.publish(pub)
        r3 = run_sync(cfg, "vip_klaviyo")
        assert r3.ok and r3.planned == {"additions": 0, "updates": 2, "removals": 2, "retirements": 1}
        assert k.throttled > 0  # the burst limit answered 429 with Retry-After, and the sync waited
        assert k.list_keys() == _consented(w) - {"not-an-email"}
        assert _emails(w, ["P00002"]) & k.list_keys() == set()
        # consent lost: unsubscribed through the subscription endpoint (Klaviyo records the opt-out);
        # left the segment: only the list membership goes
        assert k.unsubscribed == {"ann.lee2@example.com": 1} and k.list_removals == {"ann.lee14@example.com": 1}
        assert k.profile("ann.lee2@example.com")["subscriptions"] == {"email": "UNSUBSCRIBED"}
        assert k.profile("ann.lee0@example.com")["subscriptions"] == {"email": "SUBSCRIBED"}
        # merged persons: one profile, Klaviyo's merge (history kept), no GDPR deletion
        assert k.merges == [("ann.lee6@example.com", "ann.lee8@example.com")] and k.deleted == []
        assert "ann.lee6@example.com" not in k.profile_keys()
        assert sum(1 for p in k.profiles.values() if p["email"] == "ann.lee12@example.com") == 1
        assert k.profile("ann.lee12@example.com")["first_name"] == "Survivor"
        assert k.deliveries["ann.lee10@example.com"] == 2 and k.deliveries["ann.lee0@example.com"] == 1
        with duckdb.connect(str(state_path(tmp_path)), read_only=True) as con:
            holders = con.execute("SELECT person_id FROM sync_state WHERE dest_key = 'ann.lee12@example.com'").fetchall()
        assert holders == [("P09999",)]
        assert run_sync(cfg, "vip_klaviyo").requests == 0

        # consent given again: subscribed again (and back on the list) by a subscription job, no re-import
        w.consent[("P00002", "email_marketing")] = "granted"
        w.publish(pub)
        r4 = run_sync(cfg, "vip_klaviyo")
        assert r4.planned["additions"] == 1 and "ann.lee2@example.com" in k.list_keys()
        assert k.deliveries["ann.lee2@example.com"] == 1

        # erasure: gone from the destination, the state, the log and the state file's bytes
        report = erase_persons(cfg, ["P00010", "P00002"])
        assert report["complete"] and report["destinations"][0]["deleted"] == ["P00002", "P00010"]
        assert {"ann.lee10@example.com", "ann.lee2@example.com"} & k.profile_keys() == set()
        assert not any(row[0] in ("P00010", "P00002") for row in _log(tmp_path, "vip_klaviyo"))
        raw = state_path(tmp_path).read_bytes()
        assert b"ann.lee10@example.com" not in raw and b"P00010" not in raw


def test_mailchimp_faults_unsubscribe_and_permanent_delete(tmp_path, monkeypatch):
    w = World.make(30, consent_every=3)
    w.persons["P00009"]["email"] = "ann.nine@nodomain"   # Mailchimp refuses it, quoting the address
    pub = tmp_path / "published"
    w.publish(pub)
    with LocalMailchimp(burst_per_s=5, steady_per_min=1000) as m:
        cfg = make_config(tmp_path, [mailchimp_sync(m.url)])
        monkeypatch.setenv("TEST_MAILCHIMP_KEY", "wrong-key")
        r = run_sync(cfg, "vip_mailchimp")   # refused credentials: nothing rejected, all left pending
        assert (r.sent, r.rejected, r.failed) == (0, 0, 10) and "credentials" in r.error
        monkeypatch.setenv("TEST_MAILCHIMP_KEY", "mc_test-us1")
        m.inject("POST /3.0/lists/AUD1", "429", 0.01)
        m.inject("POST /3.0/lists/AUD1", "500", skip=1)
        m.inject("POST /3.0/lists/AUD1", "drop", skip=1)
        r = run_sync(cfg, "vip_mailchimp")
        assert r.ok and (r.sent, r.rejected) == (9, 1)
        wanted = _consented(w) - {"ann.nine@nodomain"}
        assert dict(m.deliveries) == {e: 1 for e in wanted}
        assert m.member_keys() == wanted
        rejected = [row for row in _log(tmp_path, "vip_mailchimp") if row[2] == "rejected"]
        assert [(p, a, n) for p, a, _, n, _ in rejected] == [("P00009", "upsert", 2)]  # 2nd attempt: 1st was refused
        assert "ann.nine@" not in rejected[0][4] and "looks fake or invalid" in rejected[0][4]
        assert m.member("ann.lee3@example.com")["merge_fields"] == {"FNAME": "Ann3", "LNAME": "Lee3"}
        assert run_sync(cfg, "vip_mailchimp").requests == 0

        w.consent[("P00003", "email_marketing")] = "denied"
        w.publish(pub)
        m.inject("POST /3.0/lists/AUD1", "timeout", 0.6)
        r2 = run_sync(cfg, "vip_mailchimp")
        assert r2.ok and r2.planned["removals"] == 1
        # consent withdrawn: unsubscribed (the opt-out is kept), not archived
        assert m.member("ann.lee3@example.com")["status"] == "unsubscribed"
        assert "ann.lee3@example.com" not in m.member_keys()

        w.persons["P00012"]["email"] = "Ann.New12@Example.com "   # a new address: one live member, the old archived
        w.publish(pub)
        r3 = run_sync(cfg, "vip_mailchimp")
        assert r3.ok and (r3.planned["additions"], r3.planned["retirements"]) == (1, 1)
        assert m.member("ann.lee12@example.com")["status"] == "archived"
        assert m.member("ann.new12@example.com")["status"] == "subscribed"

        m.inject("POST /3.0/lists/AUD1/members", "drop")
        report = erase_persons(cfg, ["P00006", "P00003"])
        assert report["complete"]
        assert m.member("ann.lee6@example.com") is None and m.member("ann.lee3@example.com") is None
        assert sorted(m.deleted) == ["ann.lee3@example.com", "ann.lee6@example.com"]


def test_server_dies_mid_sync_and_next_run_resumes_without_duplicates(tmp_path):
    w = World.make(60)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k, LocalMailchimp() as m:
        cfg = make_config(tmp_path, [klaviyo_sync(k.url), mailchimp_sync(m.url)])
        k.die_after(4)   # two import jobs (each with its subscription job) land, then every connection is refused
        m.die_after(3)
        rk, rm = run_sync(cfg, "vip_klaviyo"), run_sync(cfg, "vip_mailchimp")
        assert (rk.sent, rk.failed) == (20, 40) and not rk.ok
        assert (rm.sent, rm.failed) == (24, 36)
        failed = [row for row in _log(tmp_path, "vip_klaviyo") if row[2] == "failed"]
        assert len(failed) == 40 and failed[0][4].startswith("not acknowledged")
        k.revive()
        m.revive()
        rk2, rm2 = run_sync(cfg, "vip_klaviyo"), run_sync(cfg, "vip_mailchimp")
        assert rk2.ok and rk2.sent == 40 and rm2.ok and rm2.sent == 36
        emails = _emails(w, w.persons)
        assert dict(k.deliveries) == {e: 1 for e in emails} and dict(m.deliveries) == {e: 1 for e in emails}
        retried = [row for row in _log(tmp_path, "vip_klaviyo") if row[2] == "sent" and row[3] == 2]
        assert len(retried) == 40  # logged as sent on their second attempt


def test_killed_sync_process_resumes_without_duplicates(tmp_path):
    w = World.make(50)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k:
        sync = klaviyo_sync(k.url)
        (tmp_path / "cdp.yaml").write_text(json.dumps({"paths": {"published": "published"}, "syncs": [sync]}))
        k.inject("POST /api/profile-bulk-import-jobs", "hang", skip=3)  # the 4th job is held
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_KLAVIYO_KEY": "pk_test"}
        proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "sync", "vip_klaviyo", "--config",
                                 str(tmp_path / "cdp.yaml")], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert k.hung.wait(60), "the sync never reached the 4th batch"
        os.kill(proc.pid, signal.SIGKILL)  # dies while waiting for an answer
        proc.wait()
        k.release_hung()
        assert sum(k.deliveries.values()) == 30
        r = run_sync(make_config(tmp_path, [sync]), "vip_klaviyo")
        assert r.ok and r.sent == 20
        assert dict(k.deliveries) == {e: 1 for e in _emails(w, w.persons)}


def test_dry_run_prints_plan_masked_and_sends_nothing(tmp_path):
    from click.testing import CliRunner

    from cdp.cli import main

    w = World.make(12)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k:
        (tmp_path / "cdp.yaml").write_text(json.dumps({"paths": {"published": "published"},
                                                        "syncs": [klaviyo_sync(k.url)]}))
        res = CliRunner().invoke(main, ["sync", "vip_klaviyo", "--dry-run", "--config", str(tmp_path / "cdp.yaml")])
        assert res.exit_code == 0, res.output
        assert "12 additions" in res.output and "dry run" in res.output
        assert "a***@***.com" in res.output and "@example.com" not in res.output and "Ann" not in res.output
        assert sum(k.requests.values()) == 0 and not state_path(tmp_path).exists()
        assert not (tmp_path / ".dagster").exists()  # a dry run records nothing in Dagster
        res = CliRunner().invoke(main, ["sync", "--all", "--config", str(tmp_path / "cdp.yaml")])
        assert res.exit_code == 0, res.output
        assert "sent 12" in res.output and len(k.deliveries) == 12
    # The delivery made outside Dagster is the sync asset's latest materialization in the
    # project's instance (the UI no longer says "Never materialized").
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(tmp_path / ".dagster")) as instance:
        event = instance.get_latest_materialization_event(AssetKey(["activation", "vip_klaviyo"]))
    assert event is not None and event.run_id == ""  # runless: reported, not run
    meta = event.asset_materialization.metadata
    assert meta["sent"].value == 12 and meta["trigger"].value == "cli"


def test_config_rules_and_clear_errors(tmp_path, monkeypatch):
    base = klaviyo_sync("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"syncs\[0\]: .*marketing destination: add a consent rule"):
        make_config(tmp_path, [{**base, "consent": None}])
    hook = {"name": "h", "source": {"table": "customers"}, "fields": {},
            "destination": {"type": "webhook", "url": "http://x", "secret_env": "S"}}
    with pytest.raises(ConfigError, match="marketing destination"):
        make_config(tmp_path, [hook])
    make_config(tmp_path, [{**hook, "destination": {**hook["destination"], "marketing": False}}])
    with pytest.raises(ConfigError, match="used twice"):
        make_config(tmp_path, [base, base])
    with pytest.raises(ConfigError, match="cron"):
        make_config(tmp_path, [{**base, "schedule": "every day"}])
    with pytest.raises(ConfigError, match="exactly one of segment, table or query"):
        make_config(tmp_path, [{**base, "source": {"segment": "vip", "table": "customers"}}])
    with pytest.raises(ConfigError, match=r"destination.klaviyo.api_key: unknown key"):
        make_config(tmp_path, [{**base, "destination": {**base["destination"], "api_key": "pk_secret"}}])
    W = World.make(3)
    W.publish(tmp_path / "published")
    monkeypatch.delenv("TEST_KLAVIYO_KEY")
    cfg = make_config(tmp_path, [base])
    with pytest.raises(SyncError, match="environment variable TEST_KLAVIYO_KEY is not set"):
        run_sync(cfg, "vip_klaviyo")
    with pytest.raises(SyncError, match="no segment named 'nope'"):
        run_sync(make_config(tmp_path, [{**base, "source": {"segment": "nope"}}]), "vip_klaviyo")
    with pytest.raises(SyncError, match="no sync named 'other'"):
        run_sync(cfg, "other")


def test_webhook_signed_batches_and_file_drops(tmp_path, monkeypatch):
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    received, bad_signatures = [], []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ts = self.headers["X-Tessera-Timestamp"]
            expected = "sha256=" + hmac.new(b"s3cret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers["X-Tessera-Signature"]):
                bad_signatures.append(1)
                self.send_response(401)
                self.end_headers()
                return
            events = json.loads(body)["events"]
            received.extend(events)
            out = json.dumps({"rejected": [{"person_id": e["person_id"], "reason": "blocked domain"}
                                           for e in events if e["person_id"] == "P00003"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    w = World.make(8)
    w.publish(tmp_path / "published")
    big_spenders = "SELECT person_id, email, order_count FROM customer_traits JOIN customers USING (person_id) " \
                   "WHERE order_count >= 3"
    syncs = [
        {"name": "hook", "source": {"segment": "vip"}, "fields": {"first_name": "first_name"},
         "destination": {"type": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/in",
                         "secret_env": "HOOK_SECRET", "batch_size": 3},
         "consent": {"channel": "email_marketing"}, "mode": "mirror"},
        {"name": "drop_csv", "source": {"query": big_spenders}, "fields": {"orders": "order_count"},
         "destination": {"type": "files", "folder": "drops", "format": "csv"}, "mode": "mirror"},
        {"name": "drop_parquet", "source": {"table": "customer_traits"}, "fields": {"stage": "lifecycle_stage"},
         "destination": {"type": "files", "folder": "drops", "format": "parquet"}},
    ]
    try:
        cfg = make_config(tmp_path, syncs)
        for name in ("hook", "drop_csv", "drop_parquet"):
            assert run_sync(cfg, name).ok
        assert not bad_signatures and len(received) == 8
        assert [r for r in _log(tmp_path, "hook") if r[2] == "rejected"] == \
            [("P00003", "upsert", "rejected", 1, "blocked domain")]
        csvs = sorted((tmp_path / "drops").glob("drop_csv__*.csv"))
        assert len(csvs) == 1
        assert sorted(pacsv.read_csv(csvs[0]).column("person_id").to_pylist()) == \
            sorted(p for p, v in w.persons.items() if v["order_count"] >= 3)
        assert pq.read_table(next((tmp_path / "drops").glob("drop_parquet__*.parquet"))).num_rows == 8
        assert not list((tmp_path / "drops").glob(".*"))  # no partial file left behind

        w.persons["P00004"]["order_count"] = 0        # leaves the query's audience: mirror removes
        w.consent.pop(("P00005", "email_marketing"))  # no consent row: removed from the webhook
        w.publish(tmp_path / "published")
        received.clear()
        assert run_sync(cfg, "hook").ok and run_sync(cfg, "drop_csv").ok
        assert [(e["action"], e["person_id"]) for e in received] == [("remove", "P00005")]
        removals = next((tmp_path / "drops").glob("drop_csv__*__remove.csv"))
        assert pacsv.read_csv(removals).column("person_id").to_pylist() == ["P00004"]

        received.clear()
        report = erase_persons(cfg, ["P00004"])
        assert report["complete"] and {d["sync"] for d in report["destinations"]} == {"hook", "drop_csv", "drop_parquet"}
        assert [(e["action"], e["person_id"]) for e in received] == [("erase", "P00004")]
        for f in (tmp_path / "drops").iterdir():
            assert b"ann.lee4@" not in f.read_bytes() and b"P00004" not in f.read_bytes()
    finally:
        server.shutdown()
        server.server_close()


def test_dagster_asset_per_sync_downstream_of_publish_with_schedule(tmp_path):
    from dagster import AssetKey, Definitions, materialize

    from dagster_project.defs.activation import build_sync_asset, build_sync_schedule
    from dagster_project.defs.resources import TesseraResource

    w = World.make(5)
    w.publish(tmp_path / "published")
    with LocalMailchimp() as m:
        sync = mailchimp_sync(m.url, schedule="30 5 * * 1")
        (tmp_path / "cdp.yaml").write_text(json.dumps({"paths": {"published": "published"}, "syncs": [sync]}))
        cfg = make_config(tmp_path, [sync])
        asset = build_sync_asset(cfg.syncs[0])
        schedule = build_sync_schedule(cfg.syncs[0])
        defs = Definitions(assets=[asset], schedules=[schedule],
                           resources={"tessera": TesseraResource(config_path=str(tmp_path / "cdp.yaml"))})
        graph = defs.resolve_asset_graph()
        key = AssetKey(["activation", "vip_mailchimp"])
        assert graph.get(key).parent_keys == {AssetKey(["publish", "snapshot"])}
        assert defs.resolve_schedule_def("sync_vip_mailchimp").cron_schedule == "30 5 * * 1"
        result = materialize([asset], resources={"tessera": TesseraResource(config_path=str(tmp_path / "cdp.yaml"))})
        assert result.success
        meta = result.asset_materializations_for_node(asset.op.name)[0].metadata
        assert meta["sent"].value == 5 and len(m.deliveries) == 5


@pytest.mark.parametrize("query", [
    "SELECT line AS person_id FROM read_csv('/etc/passwd', columns={'line': 'VARCHAR'}, sep='\\x01')",
    "SELECT content AS person_id FROM read_text('/etc/passwd')",
    "SELECT file AS person_id FROM glob('/etc/*')",
    "SELECT person_id FROM customers WHERE EXISTS (SELECT * FROM read_parquet('/tmp/*.parquet'))",
])
def test_a_sync_query_cannot_read_files_outside_the_snapshot(tmp_path, query):
    # The snapshot is opened sealed for syncs as for `cdp query`: no file system, no extensions.
    World.make(3).publish(tmp_path / "published")
    cfg = make_config(tmp_path, [{"name": "drop", "source": {"query": query}, "fields": {},
                                  "destination": {"type": "files", "folder": "drops", "format": "csv"}}])
    with pytest.raises(SyncError, match="file system operations are disabled|Permission"):
        run_sync(cfg, "drop")
    drops = tmp_path / "drops"
    assert not drops.exists() or not any("root:" in p.read_text(errors="ignore") for p in drops.iterdir() if p.is_file())


# ------------------------------------------------------------------ the vendors' definitions
def _capture(monkeypatch) -> list[tuple]:
    """Every request the destinations send, as (method, url, headers, JSON body)."""
    import requests

    seen, real = [], requests.Session.request

    def request(self, method, url, **kw):
        body = kw.get("json")
        if body is None and kw.get("data"):
            body = json.loads(kw["data"])
        params = kw.get("params")
        full = requests.Request(method, url, params=params).prepare().url
        seen.append((method, full, {**self.headers, **(kw.get("headers") or {})}, body))
        return real(self, method, url, **kw)

    monkeypatch.setattr(requests.Session, "request", request)
    return seen


def test_every_request_validates_against_the_vendor_definitions(tmp_path, monkeypatch):
    from activation.contract import spec

    sent = _capture(monkeypatch)
    w = World.make(12)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k, LocalMailchimp() as m:
        ksync = klaviyo_sync(k.url, identifier="person_id", fields={
            "email": "email", "phone_number": "phone", "first_name": "first_name", "city": "lifecycle_stage",
            "order_count": "order_count"})
        msync = mailchimp_sync(m.url, fields={"FNAME": "first_name", "TIER": "lifecycle_stage"})
        cfg = make_config(tmp_path, [ksync, msync])
        assert run_sync(cfg, "vip_klaviyo").ok and run_sync(cfg, "vip_mailchimp").ok
        w.consent[("P00001", "email_marketing")] = "denied"       # unsubscribe
        w.merge("P00002", into="P00003")                          # profile merge
        w.persons["P00004"]["first_name"] = "Changed"              # update
        w.publish(tmp_path / "published")
        assert run_sync(cfg, "vip_klaviyo").ok and run_sync(cfg, "vip_mailchimp").ok
        report = erase_persons(cfg, ["P00005", "P00003"])          # erasure on both
        assert report["complete"], report
        assert k.refused == [] and m.refused == []
        ops = set()
        for method, url, headers, body in sent:
            vendor = "klaviyo" if url.startswith(k.url) else "mailchimp"
            why = spec(vendor).check(method, url, headers, body)
            assert why is None, (method, url, why)
            ops.add(spec(vendor).find(method, url.split("?")[0].replace(k.url, "").replace(m.url, ""))[0]["operationId"])
        assert {"bulk_import_profiles", "bulk_subscribe_profiles", "bulk_unsubscribe_profiles", "merge_profiles",
                "request_profile_deletion", "postListsId", "postListsIdMergeFields",
                "postListsIdMembersHashActionsDeletePermanent"} <= ops
        # a person_id-keyed sync erases by the email the state holds (external_id is not accepted)
        assert "ann.lee5@example.com" in k.deleted and "ann.lee5@example.com" not in k.profile_keys()
        # the merge kept one profile; the merge field Mailchimp lacked was created before the upsert
        assert k.merges == [("ann.lee2@example.com", "ann.lee3@example.com")]
        assert m.member("ann.lee0@example.com")["merge_fields"] == {"FNAME": "Ann0", "TIER": "active"}
        assert k.profile("ann.lee0@example.com")["location"] == {"city": "active"}
        assert k.profile("ann.lee1@example.com")["subscriptions"] == {"email": "UNSUBSCRIBED"}


def test_the_contract_catches_a_retired_revision_and_an_external_id_deletion(tmp_path):
    from activation.contract import spec

    k = spec("klaviyo")
    headers = {"revision": "2024-10-15", "content-type": "application/vnd.api+json", "Authorization": "x"}
    body = {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": {
        "type": "profile", "attributes": {"external_id": "P00001"}}}}}}
    assert "revision 2024-10-15 was retired on 2026-10-15" in k.check(
        "POST", "https://a.klaviyo.com/api/data-privacy-deletion-jobs/", headers, body)
    current = {**headers, "revision": k.revision}
    why = k.check("POST", "https://a.klaviyo.com/api/data-privacy-deletion-jobs/", current, body)
    assert "external_id" in why and "Additional properties are not allowed" in why
    body["data"]["attributes"]["profile"]["data"]["attributes"] = {"email": "a@x.io"}
    assert k.check("POST", "https://a.klaviyo.com/api/data-privacy-deletion-jobs/", current, body) is None
    # Mailchimp: a member without status or status_if_new is refused
    why = spec("mailchimp").check("POST", "https://us1.api.mailchimp.com/3.0/lists/A", {"content-type": "application/json"},
                                  {"members": [{"email_address": "a@x.io"}]})
    assert why and "postListsId" in why
    # the local server refuses the retired revision: the run fails, nobody is marked rejected
    World.make(3).publish(tmp_path / "published")
    with LocalKlaviyo() as server:
        cfg = make_config(tmp_path, [klaviyo_sync(server.url, destination={"revision": "2024-10-15"})])
        r = run_sync(cfg, "vip_klaviyo")
        assert not r.ok and (r.sent, r.rejected, r.failed) == (0, 0, 3) and "retired" in r.error
        assert "2024-10-15" in r.warnings[0] and server.profiles == {}


def test_klaviyo_revision_is_one_setting_warned_six_months_before_retirement(tmp_path):
    from datetime import date

    from activation.sync import revision_warning
    from core.settings.activation import KLAVIYO_REVISION

    cfg = make_config(tmp_path, [klaviyo_sync("http://127.0.0.1:9")])
    assert cfg.syncs[0].destination.revision == KLAVIYO_REVISION == "2026-07-15"
    assert revision_warning(cfg.syncs[0], today=date(2027, 12, 1)) is None
    assert "retires on 2028-07-15" in revision_warning(cfg.syncs[0], today=date(2028, 2, 1))
    with pytest.raises(ConfigError, match="revision"):
        make_config(tmp_path, [klaviyo_sync("http://x", destination={"revision": "latest"})])


def test_klaviyo_profile_layout_location_e164_standard_first(monkeypatch):
    from activation.destinations.klaviyo import KlaviyoDestination
    from activation.plan import Change
    from core.settings.activation import Klaviyo, Retry

    monkeypatch.setenv("K", "pk")
    dest = KlaviyoDestination("s", Klaviyo.model_validate({"type": "klaviyo", "api_key_env": "K"}), Retry(), "email")
    c = Change("upsert", "P1", "a@x.io", {"tier": "gold", "city": "Leeds", "zip": "LS1 4AP", "phone_number": "07700 900123",
                                         "first_name": "Ann"}, "h", None, "new")
    attrs = dest._profile(c)["attributes"]
    assert list(attrs) == ["email", "phone_number", "first_name", "location", "properties"]
    assert attrs["phone_number"] == "+447700900123"
    assert attrs["location"] == {"city": "Leeds", "zip": "LS1 4AP"} and attrs["properties"] == {"tier": "gold"}


# ------------------------------------------------------------------ exactly once (issue 25, item 8)
def test_an_applied_batch_whose_answer_is_lost_is_not_applied_twice(tmp_path):
    w = World.make(30)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k, LocalMailchimp() as m:
        cfg = make_config(tmp_path, [klaviyo_sync(k.url), mailchimp_sync(m.url)])
        k.inject("POST /api/profile-bulk-import-jobs", "ack_lost", skip=1)   # the 2nd job runs, its 202 is lost
        m.inject("POST /3.0/lists/AUD1", "ack_lost")
        rk, rm = run_sync(cfg, "vip_klaviyo"), run_sync(cfg, "vip_mailchimp")
        assert rk.ok and rm.ok and rk.sent == rm.sent == 30
        assert k.faults_served["ack_lost"] == 1 and m.faults_served["ack_lost"] == 1
        emails = _emails(w, w.persons)
        assert dict(k.deliveries) == {e: 1 for e in emails} and dict(m.deliveries) == {e: 1 for e in emails}


def test_kill_9_mid_batch_after_the_server_applied_it_then_rerun_delivers_once(tmp_path):
    w = World.make(50)
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k:
        sync = klaviyo_sync(k.url)
        (tmp_path / "cdp.yaml").write_text(json.dumps({"paths": {"published": "published"}, "syncs": [sync]}))
        k.inject("POST /api/profile-bulk-import-jobs", "apply_hang", skip=2)  # the 3rd job applied, never answered
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_KLAVIYO_KEY": "pk_test"}
        proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "sync", "vip_klaviyo", "--config",
                                 str(tmp_path / "cdp.yaml")], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert k.hung.wait(60), "the sync never reached the 3rd batch"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        k.release_hung()
        assert sum(k.deliveries.values()) == 30
        r = run_sync(make_config(tmp_path, [sync]), "vip_klaviyo")
        assert r.ok and r.sent == 30 and r.reconciled == 10 and r.recovered_runs == 1
        assert dict(k.deliveries) == {e: 1 for e in _emails(w, w.persons)}
        with duckdb.connect(str(state_path(tmp_path)), read_only=True) as con:
            statuses = [s for (s,) in con.execute("SELECT status FROM sync_runs ORDER BY started_at").fetchall()]
            assert statuses == ["interrupted", "ok"]
            assert con.execute("SELECT count(*) FROM sync_intent").fetchall() == [(0,)]


def test_a_whole_request_refused_is_a_failed_run_and_the_fix_delivers_everyone(tmp_path):
    w = World.make(12)
    w.publish(tmp_path / "published")
    with LocalMailchimp() as m:
        bad = make_config(tmp_path, [mailchimp_sync(m.url, destination={"list_id": "AUD_TYPO"})])
        r = run_sync(bad, "vip_mailchimp")
        assert not r.ok and (r.sent, r.rejected, r.failed) == (0, 0, 12) and "404" in r.error
        r = run_sync(make_config(tmp_path, [mailchimp_sync(m.url)]), "vip_mailchimp")
        assert r.ok and r.sent == 12 and m.member_keys() == _emails(w, w.persons)


def test_a_phone_shared_by_two_persons_is_not_sent_for_them(tmp_path):
    w = World.make(6)
    w.persons["P00001"]["phone"] = w.persons["P00002"]["phone"]  # one household landline
    w.publish(tmp_path / "published")
    with LocalKlaviyo() as k:
        cfg = make_config(tmp_path, [klaviyo_sync(k.url, fields={"first_name": "first_name", "phone_number": "phone"})])
        r = run_sync(cfg, "vip_klaviyo")
        assert r.ok and r.skipped["shared_identifier"] == 2
        assert k.profile_keys() == _emails(w, w.persons)            # six profiles, none merged
        assert "phone_number" not in k.profile("ann.lee1@example.com")
        assert k.profile("ann.lee3@example.com")["phone_number"] == "+447700900003"


def test_webhook_rows_carry_stable_event_ids_and_an_idempotency_key(tmp_path, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen, applied, first = [], {}, threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(self.headers["Idempotency-Key"])
            for e in body["events"]:           # a receiver that dedups by event id
                applied.setdefault(e["event_id"], e)
            if not first.is_set():            # the first answer is lost
                first.set()
                self.connection.shutdown(2)
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    World.make(4).publish(tmp_path / "published")
    try:
        cfg = make_config(tmp_path, [{"name": "hook", "source": {"segment": "vip"}, "fields": {"first_name": "first_name"},
                                      "destination": {"type": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/",
                                                      "secret_env": "HOOK_SECRET"},
                                      "consent": {"channel": "email_marketing"}, "retry": FAST_RETRY}])
        assert run_sync(cfg, "hook").ok
        assert len(seen) == 2 and seen[0] == seen[1]  # the re-send carries the same key
        assert len(applied) == 4
    finally:
        server.shutdown()
        server.server_close()


def test_person_id_keyed_dry_run_shows_the_person_id_and_the_report_line(tmp_path):
    from click.testing import CliRunner

    from cdp.cli import main

    World.make(3).publish(tmp_path / "published")
    with LocalKlaviyo() as k:
        sync = klaviyo_sync(k.url, identifier="person_id", fields={"email": "email"})
        (tmp_path / "cdp.yaml").write_text(json.dumps({"paths": {"published": "published"}, "syncs": [sync]}))
        res = CliRunner().invoke(main, ["sync", "vip_klaviyo", "--dry-run", "--config", str(tmp_path / "cdp.yaml")])
        assert res.exit_code == 0, res.output
        assert "P00001         P00001" in res.output and "P***" not in res.output
        res = CliRunner().invoke(main, ["sync", "vip_klaviyo", "--config", str(tmp_path / "cdp.yaml")])
        assert "failed 0;" in res.output and "pending, retried" not in res.output
