"""Marketer commands (`cdp segments / segment / profile / query / report`) and the per-publish
report, against real published snapshots of a real pipeline build.

One module-scoped project: `cdp generate --customers 300` + `cdp run` (ingestion, identity,
dbt), then two publishes with ``publish.snapshot.publish``:
  r1 - the real marts, with segment membership altered so that r2 has entries and exits;
  r2 - the real marts (consent included) plus STAND-INS for the tables later stages publish
       (churn_scores, cart_intent, next_best_offer, recommendations, segment_catalog, model_metrics), in the
       shape interfaces.md states. FOR THESE TESTS ONLY: they exercise the commands and the
       report on every table; the real ones come from the scoring, segments and privacy stages.
Every answer is compared with direct SQL on the snapshot file.
"""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cdp.cli import main
from cdp.scaffold import init_project
from core.config import load_config
from core.snapshots import CURRENT
from marketing.report import CHARTS, report_path, write_report
from publish.snapshot import publish

REAL_MARTS = ("customers", "customer_traits", "identity_graph", "identity_changes", "segment_membership_history",
              "consent")
STANDINS = ("churn_scores", "cart_intent", "next_best_offer", "recommendations", "segment_catalog",
            "model_metrics")


def _build_standins(con) -> None:
    """Contract-shaped stand-ins for tables other stages publish (see the module docstring)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS standin")
    con.execute("""CREATE OR REPLACE TABLE standin.persons AS
                   SELECT person_id, CAST(hash(person_id) % 1000 AS BIGINT) AS h, as_of FROM marts.customers""")
    con.execute("""CREATE OR REPLACE TABLE standin.churn_scores AS
        SELECT person_id, h / 1000.0 AS churn_probability,
               CASE WHEN h >= 700 THEN 'high' WHEN h >= 400 THEN 'medium' ELSE 'low' END AS risk_tier,
               'standin-1' AS model_version, ['recency_days'] AS top_reasons, as_of FROM standin.persons""")
    con.execute("""CREATE OR REPLACE TABLE standin.cart_intent AS
        SELECT person_id, (h % 100) / 100.0 AS purchase_probability,
               CASE WHEN h % 100 >= 60 THEN 'likely' WHEN h % 100 >= 30 THEN 'on_the_fence' ELSE 'unlikely' END
                   AS intent_group, 24.0 AS expected_return_hours, as_of
        FROM standin.persons WHERE h % 7 = 0""")
    con.execute("""CREATE OR REPLACE TABLE standin.next_best_offer AS
        SELECT person_id,
               CASE WHEN h % 10 = 0 THEN 'holdout' ELSE ['cart_reminder', 'win_back_discount', 'cross_sell',
                    'none'][1 + h % 4] END AS offer,
               'email' AS channel, (h % 50) / 10.0 AS expected_value, ['standin'] AS reason_codes,
               h % 10 = 0 AS holdout, 'nbo_standin' AS experiment, as_of FROM standin.persons""")
    con.execute("""CREATE OR REPLACE TABLE standin.recommendations AS
        SELECT p.person_id, r.rank, 'SKU-' || (p.h + r.rank) AS sku, 1.0 / r.rank AS score, 'standin' AS reason, p.as_of
        FROM standin.persons p, (SELECT range + 1 AS rank FROM range(3)) r WHERE p.h % 4 = 0""")
    con.execute("""CREATE OR REPLACE TABLE standin.segment_catalog AS
        SELECT DISTINCT segment, 'builtin' AS kind, 'built-in ' || segment_type || ' segment' AS description,
               CAST(NULL AS VARCHAR) AS definition FROM marts.segment_membership
        UNION ALL SELECT 'vip_recent', 'declarative', 'Big spenders who ordered lately',
               'revenue >= 500 and ordered in the last 30 days'""")
    con.execute("""CREATE OR REPLACE TABLE standin.model_metrics AS
        SELECT 'churn' AS model, 'roc_auc' AS metric, 0.8 AS value, 'validation' AS dataset""")
    # r1's membership: a tenth of the persons not yet in their segments, plus a segment that r2 drops
    # (5 members taken from the largest segment, which always has 5).
    con.execute("""CREATE OR REPLACE TABLE standin.segment_membership_r1 AS
        SELECT * FROM marts.segment_membership WHERE hash(person_id) % 10 <> 0
        UNION ALL
        SELECT * FROM (SELECT 'retired_segment', 'rfm', person_id, since, as_of FROM marts.segment_membership
                       WHERE segment = (SELECT segment FROM marts.segment_membership
                                        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1)
                       ORDER BY person_id LIMIT 5)""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("marketing")
    cfg_path = init_project(root / "proj")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cli = [sys.executable, "-m", "cdp.cli"]
    subprocess.run([*cli, "generate", "--config", str(cfg_path), "--customers", "300", "--seed", "7"],
                   check=True, env=env, capture_output=True)
    done = subprocess.run([*cli, "run", "--config", str(cfg_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = load_config(cfg_path)
    # `cdp run` published the real build; these tests publish their own two (r1, r2) instead,
    # so that the history and the change between publishes are known.
    shutil.rmtree(config.published_dir)
    config.published_dir.mkdir()
    con = duckdb.connect(str(config.warehouse_path))
    _build_standins(con)
    tables = {t: f"marts.{t}" for t in REAL_MARTS}
    publish(con, {**tables, "segment_membership": "standin.segment_membership_r1"}, config.published_dir,
            run_id="r1", gate={"checks": [{"check": "keys_unique", "table": "customers", "severity": "ERROR",
                                           "passed": True}]})
    publish(con, {**tables, "segment_membership": "marts.segment_membership",
                  **{t: f"standin.{t}" for t in STANDINS}}, config.published_dir, run_id="r2",
            gate={"checks": [{"check": "keys_unique", "table": "customers", "severity": "ERROR", "passed": True},
                             {"check": "churn_drift", "table": "churn_scores", "severity": "WARN", "passed": False}]})
    con.close()
    return cfg_path, config


def cdp(cfg_path, *args):
    result = CliRunner().invoke(main, [*args, "--config", str(cfg_path)])
    return result


def ro(config, run_id=None):
    path = config.published_dir / (f"snapshots/{run_id}.duckdb" if run_id else CURRENT)
    return duckdb.connect(str(path), read_only=True)


# --------------------------------------------------------------------------- segments
def test_segments_sizes_definitions_and_change_since_previous_publish(built):
    cfg_path, config = built
    result = cdp(cfg_path, "segments", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["previous_run"] == "r1"
    by_name = {s["segment"]: s for s in info["segments"]}
    with ro(config) as cur, ro(config, "r1") as old:
        now = dict(cur.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall())
        before = dict(old.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall())
        now_pairs = set(cur.execute("SELECT segment, person_id FROM segment_membership").fetchall())
        old_pairs = set(old.execute("SELECT segment, person_id FROM segment_membership").fetchall())
        catalog = {r[0]: r for r in cur.execute("SELECT segment, kind, definition FROM segment_catalog").fetchall()}
    assert len(now) > 5
    for name, size in now.items():
        s = by_name[name]
        assert s["size"] == size
        assert s["previous_size"] == before.get(name, 0)
        assert s["change"] == size - before.get(name, 0)
        assert s["entered"] == len({p for p in now_pairs - old_pairs if p[0] == name})
        assert s["left"] == len({p for p in old_pairs - now_pairs if p[0] == name})
    assert sum(s["entered"] for s in by_name.values()) == len(now_pairs - old_pairs) > 0
    # A segment the new publish dropped shows as emptied; a declarative one with its definition.
    assert by_name["retired_segment"]["size"] == 0 and by_name["retired_segment"]["left"] == 5
    assert by_name["vip_recent"]["kind"] == "declarative"
    assert by_name["vip_recent"]["definition"] == catalog["vip_recent"][2]
    text = cdp(cfg_path, "segments")
    assert text.exit_code == 0
    assert "vip_recent" in text.stdout and "revenue >= 500" in text.stdout and "previous publish r1" in text.stdout


# --------------------------------------------------------------------------- segment export
def test_segment_export_respects_email_consent(built, tmp_path):
    cfg_path, config = built
    segment = "lifecycle_active"
    out_csv = tmp_path / "active.csv"
    result = cdp(cfg_path, "segment", segment, "--export", str(out_csv), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    with ro(config) as con:
        expected = {r[0] for r in con.execute(
            """SELECT m.person_id FROM segment_membership m JOIN customers c USING (person_id)
               JOIN consent k ON k.person_id = m.person_id AND k.channel = 'email_marketing' AND k.status = 'granted'
               WHERE m.segment = ? AND c.email IS NOT NULL""", [segment]).fetchall()}
        members = con.execute("SELECT count(*) FROM segment_membership WHERE segment = ?", [segment]).fetchall()[0][0]
        emails = dict(con.execute("SELECT person_id, email FROM customers").fetchall())
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert {r["person_id"] for r in rows} == expected
    assert 0 < len(expected) < members  # consent removed someone
    assert summary["members_in_segment"] == members and summary["rows"] == len(expected)
    assert set(rows[0]) >= {"person_id", "first_name", "last_name", "email", "phone", "consent_email_marketing",
                            "consent_sms_marketing", "in_segment_since"}
    assert all(r["consent_email_marketing"] == "true" and r["email"] == emails[r["person_id"]] for r in rows)

    # Parquet, for SMS: sms consent granted and a phone.
    out_pq = tmp_path / "active.parquet"
    assert cdp(cfg_path, "segment", segment, "--export", str(out_pq), "--channel", "sms").exit_code == 0
    table = pq.read_table(out_pq).to_pylist()
    with ro(config) as con:
        sms = {r[0] for r in con.execute(
            """SELECT m.person_id FROM segment_membership m JOIN customers c USING (person_id)
               JOIN consent k ON k.person_id = m.person_id AND k.channel = 'sms_marketing' AND k.status = 'granted'
               WHERE m.segment = ? AND c.phone IS NOT NULL""", [segment]).fetchall()}
    assert {r["person_id"] for r in table} == sms and all(r["consent_sms_marketing"] for r in table)
    # --channel none: everyone, flags shown.
    result = cdp(cfg_path, "segment", segment, "--channel", "none", "--json", "--limit", "100000")
    assert len(json.loads(result.stdout)["members"]) == members


def test_unknown_segment_suggests_close_names(built):
    cfg_path, _ = built
    result = cdp(cfg_path, "segment", "lifecycle_activ")
    assert result.exit_code == 2
    assert "no segment named 'lifecycle_activ'" in result.stderr and "lifecycle_active" in result.stderr
    assert "Traceback" not in result.output
    bad = cdp(cfg_path, "segment", "lifecycle_active", "--export", "members.xlsx")
    assert bad.exit_code == 2 and ".csv or .parquet" in bad.stderr


# --------------------------------------------------------------------------- profile
def test_profile_by_email_matches_the_snapshot(built):
    cfg_path, config = built
    with ro(config) as con:
        # The person with the most source records who has an email: the richest profile.
        pid, email = con.execute(
            """SELECT person_id, email FROM customers WHERE email IS NOT NULL
               ORDER BY source_record_count DESC, person_id LIMIT 1""").fetchall()[0]
        graph = con.execute("""SELECT source, entity, source_record_id, match_method, match_probability
                               FROM identity_graph WHERE person_id = ? ORDER BY 1, 2, 3""", [pid]).fetchall()
        segments = [r[0] for r in con.execute(
            "SELECT segment FROM segment_membership WHERE person_id = ? ORDER BY 1", [pid]).fetchall()]
        churn = con.execute("SELECT churn_probability, risk_tier FROM churn_scores WHERE person_id = ?", [pid]).fetchall()
        traits = con.execute("SELECT order_count, lifecycle_stage FROM customer_traits WHERE person_id = ?",
                             [pid]).fetchall()[0]
        recs = con.execute("SELECT sku FROM recommendations WHERE person_id = ? ORDER BY rank", [pid]).fetchall()
    result = cdp(cfg_path, "profile", "--email", email.upper(), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    s = info["sections"]
    assert info["person_id"] == pid and s["customers"][0]["email"] == email
    assert [(r["source"], r["entity"], r["source_record_id"], r["match_method"], r["match_probability"])
            for r in s["identity_graph"]] == [tuple(g) for g in graph]
    assert len(graph) > 1
    assert [r["segment"] for r in s["segment_membership"]] == segments
    assert (s["customer_traits"][0]["order_count"], s["customer_traits"][0]["lifecycle_stage"]) == traits
    assert [(r["churn_probability"], r["risk_tier"]) for r in s["churn_scores"]] == churn
    assert [r["sku"] for r in s["recommendations"]] == [r[0] for r in recs]
    for table in ("cart_intent", "next_best_offer", "consent"):
        assert table in s  # discovered from the snapshot, rows or not
    assert info["not_published"] == []
    text = cdp(cfg_path, "profile", "--person-id", pid)
    assert text.exit_code == 0 and "identity_graph" in text.stdout and "churn_scores" in text.stdout


def test_profile_unknown_email_is_a_clear_error_without_the_email(built):
    cfg_path, _ = built
    result = cdp(cfg_path, "profile", "--email", "nobody.at.all@example.invalid")
    assert result.exit_code == 2
    assert "no person in the published snapshot has that email" in result.stderr
    assert "nobody.at.all" not in result.stderr  # personal data stays out of messages
    both = cdp(cfg_path, "profile")
    assert both.exit_code == 2 and "exactly one of --email or --person-id" in both.stderr


# --------------------------------------------------------------------------- query
def test_query_matches_direct_sql_and_writes_csv(built, tmp_path):
    cfg_path, config = built
    sql = "SELECT risk_tier, count(*) AS persons FROM churn_scores GROUP BY 1 ORDER BY 1"
    result = cdp(cfg_path, "query", sql, "--json")
    assert result.exit_code == 0, result.output
    with ro(config) as con:
        expected = con.execute(sql).fetchall()
    assert [(r["risk_tier"], r["persons"]) for r in json.loads(result.stdout)] == expected
    out = tmp_path / "q.csv"
    assert cdp(cfg_path, "query", sql, "--csv", str(out)).exit_code == 0
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["risk_tier", "persons"] and [(a, int(b)) for a, b in rows[1:]] == expected
    table = cdp(cfg_path, "query", sql)
    assert all(tier in table.stdout for tier, _ in expected)


@pytest.mark.parametrize("sql", [
    "DELETE FROM customers",
    "INSERT INTO customers (person_id) VALUES ('x')",
    "CREATE TABLE hack AS SELECT 1",
    "SELECT 1; DROP TABLE customers",
    "COPY customers TO '/tmp/marketer-leak.csv'",
    "ATTACH ':memory:' AS other",
    "UPDATE consent SET status = 'granted'",
])
def test_query_cannot_modify_the_snapshot(built, sql):
    cfg_path, config = built
    snapshot = config.published_dir / CURRENT
    before = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    result = cdp(cfg_path, "query", sql)
    assert result.exit_code == 2, result.output
    assert "only SELECT" in result.stderr or "one statement at a time" in result.stderr
    assert "Traceback" not in result.output
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == before


def test_query_connection_is_read_only_even_past_the_statement_check(built):
    # The second layer: the connection itself refuses writes and files outside the snapshot.
    from core.snapshots import open_snapshot

    _, config = built
    snapshot = config.published_dir / CURRENT
    before = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    con = open_snapshot(snapshot)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM customers")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_csv('/etc/hostname')")
    con.close()
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == before


def test_query_bad_sql_and_unknown_table(built):
    cfg_path, _ = built
    bad = cdp(cfg_path, "query", "SELEC * FROM customers")
    assert bad.exit_code == 2 and "does not parse" in bad.stderr and "Traceback" not in bad.output
    missing = cdp(cfg_path, "query", "SELECT * FROM churn_predictions")
    assert missing.exit_code == 2 and "Published tables:" in missing.stderr and "churn_scores" in missing.stderr


# --------------------------------------------------------------------------- nothing / partial publish
def test_nothing_published_and_missing_tables_are_said_plainly(built, tmp_path):
    _, config = built
    cfg = init_project(tmp_path / "empty")
    for args in (["segments"], ["segment", "rfm_lost"], ["profile", "--person-id", "x"], ["query", "SELECT 1"],
                 ["report"]):
        result = cdp(cfg, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "nothing has been published yet" in result.stderr
    # A snapshot with only the real marts: no consent table -> no export for email.
    partial = load_config(cfg)
    con = duckdb.connect(str(config.warehouse_path))  # publish() attaches the new snapshot file to write it
    try:
        publish(con, {"customers": "marts.customers", "segment_membership": "marts.segment_membership",
                      "identity_graph": "marts.identity_graph"}, partial.published_dir, run_id="p1", gate={})
    finally:
        con.close()
    result = cdp(cfg, "segment", "lifecycle_active", "--export", str(tmp_path / "x.csv"))
    assert result.exit_code == 2 and "no consent table" in result.stderr
    assert not (tmp_path / "x.csv").exists()
    prof = cdp(cfg, "profile", "--person-id",
               duckdb.connect(str(partial.published_dir / CURRENT), read_only=True)
               .execute("SELECT min(person_id) FROM customers").fetchall()[0][0])
    assert prof.exit_code == 0 and "not in the published snapshot yet" in prof.stdout and "churn_scores" in prof.stdout
    report = cdp(cfg, "report")
    assert report.exit_code == 0
    page = report_path(partial.published_dir, "p1").read_text()
    assert "churn_scores is not in this published snapshot" in page


# --------------------------------------------------------------------------- report
def _figures(page: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r'<script type="application/json" id="chart-([a-z_]+)">(.*?)</script>', page, re.S)}


def test_report_holds_every_chart_with_data_and_needs_no_network(built):
    cfg_path, config = built
    syncs = [{"sync": "klaviyo_vip", "status": "ok", "last_run_at": "2026-06-30T04:00:00", "sent": 120,
              "rejected": 2, "pending_retry": 1}]
    path = write_report(config.published_dir, syncs=syncs)
    assert path == report_path(config.published_dir, "r2") and path.parent == config.published_dir / "snapshots"
    page = path.read_text()
    figs = _figures(page)
    # this project configures no experiment: that section says so instead of drawing a chart
    assert set(figs) == {name for name, _ in CHARTS} - {"experiments"}
    assert ("No experiment has analysed anyone yet" in page
            or "experiment_results is not in this published snapshot" in page)
    with ro(config) as con, ro(config, "r1") as old:
        seg = dict(con.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall())
        seg_r1 = dict(old.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall())
        tiers = dict(con.execute("SELECT risk_tier, count(*) FROM churn_scores GROUP BY 1").fetchall())
        per_person = dict(con.execute("""SELECT least(n, 20), count(*) FROM (SELECT count(*) n FROM identity_graph
                                         GROUP BY person_id) GROUP BY 1""").fetchall())
        methods = dict(con.execute("SELECT match_method, count(*) FROM identity_graph GROUP BY 1").fetchall())
        top = con.execute("SELECT person_id, count(*) FROM identity_graph GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10").fetchall()
        intent = dict(con.execute("SELECT intent_group, count(*) FROM cart_intent GROUP BY 1").fetchall())
        offers = dict(con.execute("SELECT offer, count(*) FROM next_best_offer GROUP BY 1").fetchall())
    trend = {t["name"]: t for t in figs["segment_sizes"]["data"]}
    for name, n in seg.items():
        assert trend[name]["y"][-1] == n and trend[name]["y"][0] == seg_r1.get(name, 0)
    assert {t["name"]: sum(t["y"]) for t in figs["churn_distribution"]["data"]} == tiers
    assert dict(zip(figs["records_per_person"]["data"][0]["x"], figs["records_per_person"]["data"][0]["y"])) == per_person
    assert dict(zip(figs["match_methods"]["data"][0]["x"], figs["match_methods"]["data"][0]["y"])) == methods
    largest = figs["largest_clusters"]["data"][0]
    assert list(zip(largest["y"], largest["x"]))[::-1] == top
    assert dict(zip(figs["intent_groups"]["data"][0]["x"], figs["intent_groups"]["data"][0]["y"])) == intent
    assert {x: y for t in figs["offers"]["data"] for x, y in zip(t["x"], t["y"])} == offers
    gate = {t["name"]: sum(t["y"]) for t in figs["quality_gate"]["data"]}
    assert gate == {"passed": 1, "failed": 1} and "churn_drift" in page
    sync_bars = {t["name"]: t["y"][0] for t in figs["syncs"]["data"]}
    assert sync_bars == {"sent": 120, "rejected": 2, "pending_retry": 1}
    # Self-contained: plotly.js inline, nothing fetched from the network.
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    assert not re.search(r"<script[^>]+src=[\"']?https?:", page, re.I)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", page, re.I)
    # `cdp report` points at it.
    result = cdp(cfg_path, "report", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["report"] == str(path)


# --------------------------------------------------------------------------- docs
def test_every_published_column_is_described_in_dbt(built, tmp_path, capsys):
    from marketing.table_docs import main as check_docs

    _, config = built
    from dagster_project.defs.dbt_marts import DBT_PROJECT

    manifest = DBT_PROJECT.manifest_path  # parsed when the definitions loaded
    r1 = str(config.published_dir / "snapshots" / "r1.duckdb")  # the real marts only
    assert check_docs(["--manifest", str(manifest), "--database", r1]) == 0
    assert "every one described" in capsys.readouterr().out
    # Blank one column's description: the check names it.
    data = json.loads(manifest.read_text())
    node = next(n for n in data["nodes"].values() if n.get("name") == "customers" and n["resource_type"] == "model")
    node["columns"]["email"]["description"] = ""
    blanked = tmp_path / "manifest.json"
    blanked.write_text(json.dumps(data))
    assert check_docs(["--manifest", str(blanked), "--database", r1]) == 1
    assert "customers.email: column has no description" in capsys.readouterr().err
    # A published table no dbt model describes is named.
    extra = tmp_path / "extra.duckdb"
    shutil.copy(r1, extra)
    with duckdb.connect(str(extra)) as con:
        con.execute("CREATE TABLE not_a_model AS SELECT 1 AS person_id")
    assert check_docs(["--manifest", str(manifest), "--database", str(extra)]) == 1
    assert "not_a_model: published table without a dbt model" in capsys.readouterr().err


# --------------------------------------------------------------------------- Dagster
def test_every_dagster_asset_has_a_stage_group_and_description_and_every_materialization_metadata(built):
    from dagster import DagsterEventType, DagsterInstance

    from dagster_project.definitions import defs

    specs = defs.resolve_all_asset_specs()
    assert specs
    for spec in specs:
        assert spec.group_name and spec.group_name != "default", f"{spec.key.to_user_string()} has no stage group"
        assert (spec.description or "").strip(), f"{spec.key.to_user_string()} has no description"
    graph = defs.resolve_asset_graph()
    checked = {k.asset_key for k in graph.asset_check_keys}
    assert {s.key for s in specs if s.group_name in ("ingestion", "marts")} <= checked
    for name in ("daily_refresh",):
        assert defs.resolve_schedule_def(name).description
    assert defs.resolve_sensor_def("landing_files_sensor").description

    # The fixture's `cdp run` (two Dagster runs: landing, then the build): every materialization
    # carried metadata, tables their row counts.
    _, config = built
    with DagsterInstance.from_config(str(config.dagster_home)) as instance:
        records = instance.get_run_records(limit=2)
        assert {r.dagster_run.tags.get("tessera/phase") for r in records} == {"landing", "build"}
        events = [e for r in records
                  for e in instance.all_logs(r.dagster_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]
    materialized = {e.dagster_event.asset_key.to_user_string(): e.dagster_event.event_specific_data.materialization
                    for e in events}
    assert set(materialized) <= {s.key.to_user_string() for s in specs}
    assert {"raw/web_events", "identity/graph", "staging/stg_web__events", "marts/customers"} <= set(materialized)
    for key, mat in materialized.items():
        assert mat.metadata, f"{key} materialized without metadata"
    for key in ("marts/customers", "marts/segment_membership"):
        assert materialized[key].metadata["dagster/row_count"].value > 0
    assert materialized["identity/graph"].metadata["persons"].value > 0


def test_a_pipeline_run_stores_one_gate_verdict_and_reports_every_check_once(built):
    """Dagster runs the gate's checks in steps, right after the dbt step that builds their
    tables; only the last step, with every table built, gives the stored verdict."""
    from dagster import DagsterEventType, DagsterInstance

    _, config = built
    with DagsterInstance.from_config(str(config.dagster_home)) as instance:
        (record,) = instance.get_run_records(limit=1)
        run_id = record.dagster_run.run_id
        evaluations = [e.dagster_event.event_specific_data for e in
                       instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)]
    with duckdb.connect(str(config.warehouse_path), read_only=True) as con:
        verdicts = con.execute("SELECT dagster_run_id, passed, skipped_tables FROM quality.gate_runs").fetchall()
        stored = set(con.execute("SELECT asset, check_name FROM quality.check_results").fetchall())
    assert verdicts == [(run_id, True, [])]
    gate_keys = _gate_check_keys()
    gate = [e for e in evaluations
            if (e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name) in gate_keys]
    keys = [(e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name) for e in gate]
    assert len(keys) == len(set(keys)), "a gate check was reported twice"
    assert set(keys) == gate_keys
    assert all(e.passed for e in gate), [k for k, e in zip(keys, gate) if not e.passed]
    # the verdict's checks are the ones Dagster showed, except the comparison of each source's
    # loads with its earlier loads (drift_source_* on raw/<table>): no Dagster check of its own yet
    assert stored and {k for k in stored if not k[1].startswith("drift_source_")} <= gate_keys


def _gate_check_keys() -> set[tuple[str, str]]:
    from core.published import published_tables
    from dagster_project.defs.quality import gate_check_names

    names = gate_check_names()
    return {("/".join(t.asset_path), n) for t in published_tables() for n in names[t.name]}
