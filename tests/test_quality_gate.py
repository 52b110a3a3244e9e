"""The quality gate and write-audit-publish, for real: a small pipeline built once (real loader,
real dbt run, ground-truth identity), published through `cdp run --only publish` (Dagster +
GX), then each kind of bad data injected into a COPY of that project. Every bad build must fail
with a message naming the check and the table, and leave the published snapshot byte-identical.

The marts other engineers are still building (churn_scores, cart_intent, next_best_offer,
recommendations, consent, segment_catalog, model_metrics) are created here in SQL, in the
shapes of the shared interface, when the dbt run did not build them.
"""

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdp.cli import main
from cdp.scaffold import init_project
from core.config import load_config
from core.published import CONSENT_CHANNELS, MANIFEST_ENV, published_names, published_table, published_tables
from core.snapshots import CURRENT, read_manifest
from core.warehouse import fetch_all, fetch_value, open_warehouse, table_exists
from tests.helpers import DBT_DIR, build_identity_from_ground_truth, dbt

AS_OF = dt.date(2026, 6, 30)

OTHER_MARTS = {
    # Only if a dbt selection left them out (after the dbt split they are built after scoring).
    "segment_membership": """
        SELECT 'lifecycle_' || lifecycle_stage AS segment, 'lifecycle' AS segment_type, person_id,
               as_of AS since, as_of FROM marts.customer_traits""",
    "segment_membership_history": """
        SELECT md5(segment || person_id) AS spell_key, segment, segment_type, person_id, since AS entered_at,
               NULL::TIMESTAMP AS exited_at, since AS last_evaluated_at FROM marts.segment_membership""",
    "consent": """
        SELECT person_id, ch.channel,
               CASE WHEN hash(person_id || ch.channel) % 3 = 0 THEN 'denied' ELSE 'granted' END AS status,
               as_of AS since, 'test' AS source, as_of
        FROM marts.customers, (VALUES ('email_marketing'), ('sms_marketing')) ch(channel)
        WHERE hash(person_id) % 5 <> 0""",
    "churn_scores": """
        SELECT person_id, (hash(person_id) % 1000) / 1000.0 AS churn_probability,
               CASE WHEN hash(person_id) % 1000 >= 700 THEN 'high' WHEN hash(person_id) % 1000 >= 300 THEN 'medium'
                    ELSE 'low' END AS risk_tier,
               'test-1' AS model_version, ['recency'] AS top_reasons, as_of
        FROM marts.customers""",
    "cart_intent": """
        SELECT person_id, 'cart-' || person_id AS cart_id, 20.0 AS cart_value, as_of AS cart_added_at,
               p AS purchase_probability,
               CASE WHEN p >= 0.6 THEN 'likely' WHEN p >= 0.3 THEN 'on_the_fence' ELSE 'unlikely' END AS intent_group,
               24.0 AS expected_return_hours, 'test-1' AS model_version, as_of
        FROM (SELECT person_id, (hash(person_id || 'cart') % 100) / 100.0 AS p, as_of FROM marts.customers)
        WHERE hash(person_id) % 4 = 0""",
    "next_best_offer": """
        SELECT c.person_id,
               CASE WHEN e.status = 'granted' THEN 'cart_reminder' ELSE 'cross_sell' END AS offer,
               CASE WHEN e.status = 'granted' THEN 'email' ELSE 'sms' END AS channel,
               1.5 AS expected_value, ['test'] AS reason_codes, false AS holdout, 'exp1' AS experiment,
               CASE WHEN e.status = 'granted' THEN 'cart_reminder' ELSE 'cross_sell' END AS assigned_offer,
               1.5 AS assigned_expected_value, 'offer' AS arm, NULL::VARCHAR AS cart_id, NULL::VARCHAR AS sku, c.as_of
        FROM marts.customers c
        LEFT JOIN marts.consent e ON e.person_id = c.person_id AND e.channel = 'email_marketing'
        LEFT JOIN marts.consent s ON s.person_id = c.person_id AND s.channel = 'sms_marketing'
        WHERE e.status = 'granted' OR s.status = 'granted'""",
    "recommendations": """
        SELECT person_id, r::INTEGER AS rank, 'SKU-' || r AS sku, 1.0 / r AS score, 'trending' AS reason, as_of
        FROM marts.customers, range(1, 4) t(r)""",
    "segment_catalog": """
        SELECT segment, 'builtin' AS kind, any_value(segment_type) AS segment_type, 'test segment' AS description,
               NULL::VARCHAR AS definition, count(*) AS members, max(as_of) AS as_of
        FROM marts.segment_membership GROUP BY segment""",
    # no experiment configured: published empty, with their contracts' columns
    "experiment_assignments": "SELECT NULL::VARCHAR AS experiment, NULL::VARCHAR AS person_id, NULL::VARCHAR AS arm, "
                              "NULL::BOOLEAN AS holdout, NULL::TIMESTAMP AS exposed_at, NULL::BOOLEAN AS arm_conflict, "
                              "NULL::TIMESTAMP AS as_of WHERE false",
    "experiment_results": "SELECT NULL::VARCHAR AS experiment, NULL::VARCHAR AS arm, NULL::BOOLEAN AS is_control, NULL::BOOLEAN AS holdout, NULL::VARCHAR AS metric, NULL::INTEGER AS window_days, NULL::BIGINT AS exposed, NULL::BIGINT AS n, NULL::DOUBLE AS outcome_mean, NULL::DOUBLE AS abs_lift, NULL::DOUBLE AS abs_lift_low, NULL::DOUBLE AS abs_lift_high, NULL::DOUBLE AS rel_lift, NULL::DOUBLE AS rel_lift_low, NULL::DOUBLE AS rel_lift_high, NULL::DOUBLE AS prob_beats_control, NULL::DOUBLE AS z, NULL::DOUBLE AS sequential_boundary, NULL::BOOLEAN AS sequential_significant, NULL::VARCHAR AS decision, NULL::DOUBLE AS srm_p_value, NULL::BOOLEAN AS srm_flag, NULL::DOUBLE AS mde_absolute, NULL::DOUBLE AS mde_relative, NULL::DOUBLE AS spending_fraction, NULL::DOUBLE AS alpha_spent, NULL::INTEGER AS looks, NULL::BIGINT AS arm_conflicts, NULL::VARCHAR AS interval_method, NULL::VARCHAR AS posterior_method, NULL::TIMESTAMP AS as_of WHERE false",
    "model_metrics": "SELECT 'churn' AS model, 'roc_auc' AS metric, 0.8 AS value, 'validation' AS dataset, "
                     "'gradient_boosting' AS algorithm, true AS selected, NULL::INTEGER AS bin, 'test-1' AS model_version, "
                     "TIMESTAMP '2026-06-30 23:59:59' AS as_of",
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One small built and published project; tests work on copies of it."""
    from ingestion.generator import generate
    from ingestion.loader import ingest

    root = tmp_path_factory.mktemp("gate")
    cfg_path = init_project(root / "proj")
    cfg_path.write_text(cfg_path.read_text().replace("\nas_of:\n", f"\nas_of: {AS_OF.isoformat()}\n"))
    config = load_config(cfg_path)
    generate(customers=150, seed=5, out=config.landing_dir, as_of=AS_OF, clean=True)
    with open_warehouse(config.warehouse_path) as con:
        ingest(config, con)
        build_identity_from_ground_truth(con, config.landing_dir / "ground_truth")
    dbt(["run", "--exclude", "tag:after_scoring", "--vars", json.dumps({"as_of": AS_OF.isoformat()})],
        config.warehouse_path, root / "target")
    with open_warehouse(config.warehouse_path) as con:
        for name in OTHER_MARTS:  # in dependency order
            if not table_exists(con, "marts", name):
                con.execute(f"CREATE TABLE marts.{name} AS {OTHER_MARTS[name]}")
    result = cli("run", "--config", str(cfg_path), "--only", "publish")
    assert result.exit_code == 0, result.output
    assert "published snapshot" in result.output
    return cfg_path


def copy_project(base_cfg: Path, dest: Path) -> Path:
    src = base_cfg.parent
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("landing", "gx"))
    return dest / "cdp.yaml"


def test_baseline_publish_holds_every_registered_table_and_records_the_gate(base):
    config = load_config(base)
    manifest = read_manifest(config.published_dir)
    (entry,) = manifest["history"]
    assert entry["gate"]["passed"] is True and entry["gate"]["blocking_failures"] == []
    assert sorted(entry["tables"]) == sorted(published_names())
    with open_warehouse(config.published_dir / CURRENT, read_only=True) as ro:
        for name, n in entry["tables"].items():
            assert fetch_value(ro, f'SELECT count(*) FROM main."{name}"') == n
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        runs = fetch_all(con, "SELECT gate_id, passed FROM quality.gate_runs")
        assert runs == [(manifest["current"], True)]
        checks = dict(fetch_all(con, "SELECT check_name, count(*) FROM quality.check_results GROUP BY 1"))
    for name in ("schema", "keys_unique", "probabilities_in_range", "email_audience_has_consent",
                 "one_offer_per_contactable_person", "persons_exist", "identity_largest_cluster", "drift_person_count"):
        assert checks.get(name), name
    report = config.reports_dir / "quality" / "latest.md"
    assert "PASSED" in report.read_text()
    assert (config.reports_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def _most_common_segment(con) -> str:
    return fetch_value(con, "SELECT segment FROM marts.segment_membership GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")


NAMED = "email IS NOT NULL AND first_name IS NOT NULL AND last_name IS NOT NULL ORDER BY person_id"
FAULTS = {
    "schema drift": ("ALTER TABLE marts.churn_scores RENAME COLUMN churn_probability TO churn_prob",
                     "schema on churn_scores"),
    "duplicated keys": ("INSERT INTO marts.customers SELECT * FROM marts.customers WHERE " + NAMED + " LIMIT 1",
                        "keys_unique on customers"),
    "probability out of range": (
        "UPDATE marts.cart_intent SET purchase_probability = 1.7 "
        "WHERE person_id = (SELECT min(person_id) FROM marts.cart_intent)", "probabilities_in_range on cart_intent"),
    "opted-out person in an email audience": (  # a person who withdrew email consent gets an email offer
        """DELETE FROM marts.next_best_offer WHERE person_id = ({opted_out});
           INSERT INTO marts.next_best_offer (person_id, offer, channel, expected_value, reason_codes, holdout,
                                              experiment, as_of)
           SELECT ({opted_out}), 'cart_reminder', 'email', 1.0, ['test'], false, 'exp1',
                  (SELECT max(as_of) FROM marts.customers)""",
        "email_audience_has_consent on next_best_offer"),
    "segment collapsing to zero": (
        "DELETE FROM marts.segment_membership WHERE segment = '{segment}'", "drift_segment_sizes on segment_membership"),
    "giant identity cluster": (  # 600 more source records resolved to one person
        """INSERT INTO marts.identity_graph (source, entity, source_record_id, record_key, person_id, match_method,
                                             match_probability, as_of)
           SELECT 'web', 'anonymous_id', 'fake-' || i, 'web:anonymous_id:fake-' || i, (SELECT min(person_id) FROM marts.customers),
                  'splink', 0.99, (SELECT max(as_of) FROM marts.customers) FROM range(600) t(i)""",
        "identity_largest_cluster on identity_graph"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_data_blocks_the_publish_and_leaves_the_snapshot_byte_identical(base, tmp_path, fault):
    cfg_path = copy_project(base, tmp_path / "proj")
    config = load_config(cfg_path)
    current = config.published_dir / CURRENT
    before, manifest_before = digest(current), (config.published_dir / "manifest.json").read_text()
    sql, expected = FAULTS[fault]
    with open_warehouse(config.warehouse_path) as con:
        opted_out = ("SELECT min(person_id) FROM marts.consent WHERE channel = 'email_marketing' "
                     "AND status = 'denied'")
        assert fetch_value(con, opted_out) is not None
        con.execute(sql.format(segment=_most_common_segment(con), opted_out=opted_out))

    result = cli("run", "--config", str(cfg_path), "--only", "publish")

    assert result.exit_code == 1, result.output
    assert "publish blocked by the quality gate" in result.output
    assert expected in result.output, result.output
    assert digest(current) == before
    assert (config.published_dir / "manifest.json").read_text() == manifest_before
    assert len(list((config.published_dir / "snapshots").glob("*.duckdb"))) == 1
    gate = json.loads((config.reports_dir / "quality" / "latest.json").read_text())
    assert gate["passed"] is False and expected in gate["blocking_failures"]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        stored = fetch_all(con, "SELECT table_name || ':' || check_name FROM quality.check_results "
                                "WHERE gate_id = ? AND NOT passed", [gate["gate_id"]])
    check, table = expected.split(" on ")
    assert (f"{table}:{check}",) in stored
    report = (config.reports_dir / "quality" / "latest.md").read_text()
    assert f"### {check} on {table} (BLOCKING)" in report
    assert expected in (config.reports_dir / "quality" / "latest.html").read_text()
    if fault == "duplicated keys":  # the failing rows are sampled, with personal data masked
        with open_warehouse(config.warehouse_path, read_only=True) as con:
            email, first, last = fetch_all(
                con, f"SELECT email, first_name, last_name FROM marts.customers WHERE {NAMED} LIMIT 1")[0]
        assert f"{email[0]}***@***" in report and f"{first[0]}***" in report
        assert email not in report and email not in result.output
        for name in (email.split("@")[0], first, last):
            assert f"| {name} |" not in report


READER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    deadline = time.time() + float(sys.argv[2])
    first = None
    print("ready", flush=True)
    while time.time() < deadline:
        now = con.execute("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM segment_membership), "
                          "(SELECT count(DISTINCT segment) FROM segment_membership)").fetchall()[0]
        first = first or now
        assert now == first, (first, now)
    print(list(first), flush=True)
""")


def test_accept_drift_publishes_while_a_reader_keeps_its_snapshot_then_rollback(base, tmp_path):
    cfg_path = copy_project(base, tmp_path / "proj")
    config = load_config(cfg_path)
    current = config.published_dir / CURRENT
    baseline = digest(current)
    with open_warehouse(config.warehouse_path) as con:
        segment = _most_common_segment(con)
        con.execute(f"DELETE FROM marts.segment_membership WHERE segment = '{segment}'")
        members_after = fetch_value(con, "SELECT count(*) FROM marts.segment_membership")
    with open_warehouse(current, read_only=True) as ro:
        members_before = fetch_value(ro, "SELECT count(*) FROM segment_membership")

    blocked = cli("publish", "--config", str(cfg_path))
    assert blocked.exit_code == 1 and "--accept-drift" in blocked.output
    assert digest(current) == baseline

    reader = subprocess.Popen([sys.executable, "-c", READER, str(current), "6"], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    accepted = cli("publish", "--config", str(cfg_path), "--accept-drift")
    out, _ = reader.communicate(timeout=120)
    assert accepted.exit_code == 0, accepted.output
    assert reader.returncode == 0, out
    assert json.loads(out)[1] == members_before  # the reader saw the old snapshot throughout

    manifest = read_manifest(config.published_dir)
    assert len(manifest["history"]) == 2
    assert manifest["history"][0]["gate"]["accepted_drift"] == ["drift_segment_sizes on segment_membership"]
    with open_warehouse(current, read_only=True) as ro:
        assert fetch_value(ro, "SELECT count(*) FROM segment_membership") == members_after

    status = json.loads(cli("status", "--config", str(cfg_path), "--json").output)
    assert status["published"]["snapshot"] == manifest["current"]
    assert status["quality_gate"]["passed"] is True and status["quality_gate"]["accept_drift"] is True

    rolled = cli("rollback", "--config", str(cfg_path))
    assert rolled.exit_code == 0, rolled.output
    assert digest(current) == baseline
    status = json.loads(cli("status", "--config", str(cfg_path), "--json").output)
    assert status["published"]["snapshot"] == manifest["history"][1]["run_id"]
    assert cli("rollback", "--config", str(cfg_path), "--to", "nope").exit_code == 2


def test_source_suites_catch_schema_drift_and_bad_values_in_a_load(base, tmp_path):
    from expectations.gate import run_source_checks

    cfg_path = copy_project(base, tmp_path / "proj")
    config = load_config(cfg_path)
    with open_warehouse(config.warehouse_path) as con:
        clean = run_source_checks(config, con, since=None)
        assert clean and all(c.passed for c in clean), [c.label for c in clean if not c.passed]
        # a negative total is a return unless the receipt is flagged a sale: that is the bad value
        con.execute("UPDATE raw.pos_transactions SET total = -5, is_return = false WHERE transaction_id = "
                    "(SELECT min(transaction_id) FROM raw.pos_transactions)")
        con.execute("ALTER TABLE raw.support_tickets DROP COLUMN category")
        failed = {c.label: c for c in run_source_checks(config, con, since=None) if not c.passed}
    assert set(failed) == {"values_in_range on raw.pos_transactions", "schema on raw.support_tickets"}
    assert "category" in failed["schema on raw.support_tickets"].detail
    assert failed["values_in_range on raw.pos_transactions"].sample[0]["total"] == -5


def test_suites_in_version_control_match_the_contracts():
    """Only the suites dbt cannot derive are committed (sources, drift, identity); the published
    tables' are built from the dbt manifest at run time."""
    from expectations.suites import SUITES_DIR, all_suites, suite_json

    suites = all_suites()
    assert {p.stem for p in SUITES_DIR.glob("*.json")} == {s["name"] for s in suites}
    for s in suites:
        assert (SUITES_DIR / f"{s['name']}.json").read_text() == suite_json(s), \
            f"{s['name']} is out of date: run `python -m expectations.suites`"


def test_dagster_wiring_publish_is_downstream_of_every_mart_and_checks_block():
    from dagster import AssetKey

    from dagster_project.definitions import GATE_CHECKS, PUBLISH_ASSETS, defs
    from dagster_project.defs.ingestion import WAREHOUSE_POOL
    from dagster_project.defs.quality import PUBLISH_KEY

    (publish_asset,) = PUBLISH_ASSETS
    deps = {d.asset_key for d in publish_asset.specs_by_key[PUBLISH_KEY].deps}
    graph = defs.resolve_asset_graph()
    defined_marts = {AssetKey(list(t.asset_path)) for t in published_tables()} & set(graph.get_all_asset_keys())
    assert deps == defined_marts and AssetKey(["marts", "customers"]) in deps
    assert publish_asset.node_def.pool == WAREHOUSE_POOL
    (gate,) = GATE_CHECKS
    specs = {(s.asset_key.path[-1], s.name): s for s in gate.check_specs}
    assert specs[("customers", "keys_unique")].blocking
    assert specs[("segment_membership", "drift_segment_sizes")].blocking
    assert not specs[("customers", "row_count")].blocking if ("customers", "row_count") in specs else True
    assert gate.node_def.pool == WAREHOUSE_POOL


def test_drift_defaults_block_a_halved_person_count_and_a_shifted_churn_distribution(tmp_path):
    from core.config import config_from_dict
    from expectations.gate import _frame, drift_values
    from expectations.gx_runner import runner_for

    before = {"persons": 1000, "segments": {"a": 100, "b": 10}, "merged_share": 0.5,
              "churn_hist": [0.1] * 10, "churn_mean": 0.5}
    drift = config_from_dict({}, tmp_path).expectations.drift
    params = {"max_person_count_change": drift.max_person_count_change, "max_emptied_segments": 0,
              "max_segment_size_change": 1e18, "max_merge_rate_change": drift.max_merge_rate_change,
              "max_churn_mean_change": drift.max_churn_mean_change, "max_churn_psi": drift.max_churn_psi}
    gx = runner_for(tmp_path)

    def failing(now):
        values, _ = drift_values(now, before, drift.min_segment_size)
        return {o.check for o in gx.validate("gate_drift", _frame(values), params) if not o.success}

    steady = {"persons": 1050, "segments": {"a": 90, "b": 12}, "merged_share": 0.52,
              "churn_hist": [0.1] * 10, "churn_mean": 0.51}
    assert failing(steady) == set()
    assert failing({**steady, "persons": 500}) == {"drift_person_count"}  # dropped by half
    assert failing({**steady, "persons": 1500}) == {"drift_person_count"}  # rose by half
    assert failing({**steady, "persons": 1150}) == {"drift_person_count"}  # profiles split: +15% (issue #25)
    assert failing({**steady, "segments": {"a": 90}}) == {"drift_segment_sizes"}  # b emptied
    # b still defined but empty blocks; b deleted from the segment definitions does not.
    assert failing({**steady, "segments": {"a": 90}, "defined_segments": {"a", "b"}}) == {"drift_segment_sizes"}
    assert failing({**steady, "segments": {"a": 90}, "defined_segments": {"a"}}) == set()
    skewed = [0.01] * 9 + [0.91]
    assert failing({**steady, "churn_hist": skewed, "churn_mean": 0.9}) == {"drift_churn_distribution"}
    assert failing({**steady, "merged_share": 0.8}) == {"drift_merge_rate"}


def test_masking_keeps_no_personal_value():
    from core.pii import mask_value as mask

    assert mask("jane.doe@example.co.uk", "email") == "j***@***.uk"
    assert mask("+44 7700 900123", "phone") == "***23"
    assert mask("Jane", "first_name") == "J***"


NEW_MART_SQL = """
select person_id, source_record_count as records,
       case when source_record_count > 1 then 'multi' else 'single' end as tier, as_of
from {{ ref('customers') }}
"""
NEW_MART_YML = """
version: 2
models:
  - name: vip_customers
    description: Published. A mart added by the test - one dbt model and its YAML, nothing else.
    config:
      tags: ["published"]
      contract: {enforced: true}
      meta: {tessera: {profile: 10}}
    data_tests:
      - unique_key: {arguments: {columns: [person_id]}}
    columns:
      - name: person_id
        description: The person.
        data_type: varchar
        constraints: [{type: not_null}]
        data_tests:
          - relationships: {arguments: {to: ref('customers'), field: person_id}}
      - name: records
        description: Source records.
        data_type: bigint
        data_tests:
          - value_between: {arguments: {min_value: 0, max_value: 100000}}
      - name: tier
        description: single or multi.
        data_type: varchar
        data_tests:
          - accepted_values: {arguments: {values: [single, multi]}}
      - name: as_of
        description: As of.
        data_type: timestamp
"""


def test_a_new_published_mart_needs_one_dbt_model_and_yaml(base, tmp_path, monkeypatch):
    """Add `vip_customers` to a copy of the dbt project (model + YAML, tagged published, with a
    contract), build it, and point the registry at that project's manifest: the gate checks it
    with its key, value set, range and person checks, the Dagster wiring gets its checks and
    publish dependency, the snapshot holds it, and `cdp query` / the marketer's table list and
    profile show it - with no Python change. (The Dagster definitions themselves load the one
    dbt project in the code tree; here they are built from the copy's manifest directly.)"""
    from dagster import AssetKey

    from dagster_project.defs.quality import build_quality_defs
    from expectations.gate import run_gate
    from marketing.published import expected_tables, profile
    from publish.snapshot import publish_build

    dbt_copy = tmp_path / "dbt"
    shutil.copytree(DBT_DIR, dbt_copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    (dbt_copy / "models" / "marts" / "vip_customers.sql").write_text(NEW_MART_SQL)
    (dbt_copy / "models" / "marts" / "vip_customers.yml").write_text(NEW_MART_YML)
    cfg_path = copy_project(base, tmp_path / "proj")
    config = load_config(cfg_path)
    target = tmp_path / "target"
    dbt(["run", "--select", "vip_customers", "--vars", json.dumps({"as_of": AS_OF.isoformat()})],
        config.warehouse_path, target, project_dir=dbt_copy)
    manifest = target / "manifest.json"
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))

    t = published_table("vip_customers")
    assert (t.relation, t.keys, t.person_column, t.not_null) == ("marts.vip_customers", ("person_id",), "person_id",
                                                                   ("person_id",))
    assert (t.value_sets, t.non_negative, t.columns) == ({"tier": ("single", "multi")}, ("records",),
                                                         ("person_id", "records", "tier", "as_of"))

    # Dagster: the gate's checks on the new mart, and publish/snapshot waits for it.
    keys = {AssetKey(list(x.asset_path)) for x in published_tables()}
    (publish_asset,), (gate_checks,) = build_quality_defs(keys, manifest)
    assert AssetKey(["marts", "vip_customers"]) in {d.asset_key for d in publish_asset.specs_by_key[
        AssetKey(["publish", "snapshot"])].deps}
    new_checks = {s.name for s in gate_checks.check_specs if s.asset_key == AssetKey(["marts", "vip_customers"])}
    assert {"table_present", "schema", "keys_not_null", "keys_unique", "values_in_set", "values_non_negative",
            "persons_exist"} <= new_checks

    # The gate checks it (from the env-pointed manifest) and the snapshot publishes it.
    with open_warehouse(config.warehouse_path) as con:
        gate = run_gate(config, con, dagster_run_id="test-new-mart")
        assert gate.passed, gate.message()
        assert {c.check for c in gate.checks if c.table == "vip_customers"} == new_checks - {"table_present"}
        snap = publish_build(config, con, gate.summary())
    assert "vip_customers" in snap.tables and snap.tables["vip_customers"] == snap.tables["customers"]

    # The marketer's view: `cdp query`, the expected tables, a person's profile.
    result = cli("query", "--config", str(cfg_path), "SELECT count(*) AS n FROM vip_customers")
    assert result.exit_code == 0 and str(snap.tables["vip_customers"]) in result.output, result.output
    assert "vip_customers" in expected_tables()
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        person = fetch_value(con, "SELECT min(person_id) FROM marts.vip_customers")
    sections = list(profile(config.published_dir, person_id=person)["sections"])
    # meta.tessera.profile: 10 puts it right after consent (9); tables without a position follow.
    assert sections[0] == "customers" and sections.index("vip_customers") == sections.index("consent") + 1

    # A broken key in the new mart blocks the next publish, like any other.
    with open_warehouse(config.warehouse_path) as con:
        con.execute("INSERT INTO marts.vip_customers SELECT * FROM marts.vip_customers LIMIT 1")
        blocked = run_gate(config, con, dagster_run_id="test-new-mart-2")
    assert not blocked.passed and "keys_unique on vip_customers" in blocked.summary()["blocking_failures"]


def test_consent_channels_are_one_constant():
    """dbt cannot import Python: its var must equal core's constant, which the settings derive from."""
    import yaml

    from core.dbt_project import dbt_project_dir
    from core.published import manifest_path
    from core.settings.activation import ConsentRule
    from core.settings.scoring import CHANNELS

    dbt_vars = yaml.safe_load((dbt_project_dir() / "dbt_project.yml").read_text())["vars"]
    assert tuple(dbt_vars["consent_channels"]) == CONSENT_CHANNELS
    assert tuple(CHANNELS.values()) == CONSENT_CHANNELS and set(CHANNELS) == {"email", "sms", "web"}
    assert all(ConsentRule(channel=c) for c in CONSENT_CHANNELS)
    with pytest.raises(ValueError):
        ConsentRule(channel="fax_marketing")
    assert published_table("consent", manifest_path()).value_sets["channel"] == CONSENT_CHANNELS


def test_the_dagster_wiring_refuses_to_load_without_published_tables(tmp_path):
    """No manifest, or one without published models, fails loudly instead of wiring a publish of nothing."""
    from core.published import ManifestError
    from dagster_project.defs.quality import build_quality_defs

    with pytest.raises(ManifestError, match="no dbt manifest at .*Run `dbt parse`"):
        build_quality_defs(set(), tmp_path / "missing.json")
    empty = tmp_path / "manifest.json"
    empty.write_text(json.dumps({"nodes": {"model.tessera.x": {
        "resource_type": "model", "name": "x", "tags": [], "config": {}, "unique_id": "model.tessera.x"}}}))
    with pytest.raises(ManifestError, match="declares no published table"):
        build_quality_defs(set(), empty)
    no_contract = {"resource_type": "model", "name": "y", "tags": ["published"], "config": {},
                   "unique_id": "model.tessera.y", "schema": "marts", "columns": {}}
    with pytest.raises(ManifestError, match="y has no enforced contract"):
        build_quality_defs(set(), {"nodes": {"model.tessera.y": no_contract}})


# --------------------------------------------------------------------------- the daily gate
def test_gate_scope_is_daily_between_full_gates_of_the_same_checks(base, tmp_path):
    from expectations.gate import DAILY, FULL, checks_digest, gate_scope

    config = load_config(copy_project(base, tmp_path / "proj"))
    last = read_manifest(config.published_dir)["history"][0]["gate"]
    assert last["scope"] == FULL and last["last_full_gate"]["gate_id"] == last["gate_id"]  # (--only publish)
    digest = checks_digest(config)
    checked = dt.datetime.fromisoformat(last["last_full_gate"]["checked_at"])
    assert gate_scope(config, digest, now=checked + dt.timedelta(days=6))[0] == DAILY
    assert gate_scope(config, digest, now=checked + dt.timedelta(days=7))[:1] == (FULL,)
    assert "checks changed" in gate_scope(config, "another digest", now=checked)[1]
    assert gate_scope(config, digest, requested=FULL, now=checked)[0] == FULL
    empty = load_config(copy_project(base, tmp_path / "empty"))
    shutil.rmtree(empty.published_dir)
    assert gate_scope(empty, digest)[:2] == (FULL, "nothing published yet")


def test_the_daily_gate_passes_a_good_day_and_keeps_the_full_gate_it_follows(base, tmp_path):
    from expectations.gate import DAILY, run_gate
    from publish.snapshot import publish_build

    config = load_config(copy_project(base, tmp_path / "proj"))
    before = read_manifest(config.published_dir)["history"][0]["gate"]
    with open_warehouse(config.warehouse_path) as con:  # a good day: one more day of recency for everyone
        con.execute("UPDATE marts.customer_traits SET web_sessions_90d = web_sessions_90d + 1 "
                    "WHERE web_sessions_90d IS NOT NULL")
        gate = run_gate(config, con, dagster_run_id="good-day")
        assert gate.passed, gate.message()
        assert gate.scope == DAILY and not gate.data_docs
        snap = publish_build(config, con, gate.summary())
    entry = read_manifest(config.published_dir)["history"][0]
    assert entry["run_id"] == snap.run_id and entry["gate"]["scope"] == DAILY
    assert entry["gate"]["last_full_gate"] == before["last_full_gate"]  # carried until the next full gate
    assert entry["gate"]["profile"]["persons"] == snap.tables["customers"]
    # the daily gate ran every check the full gate ran, on the same tables (but the comparison of
    # new loads with earlier ones: the full gate's publish took this build's loads in)
    assert entry["gate"]["tables"] == before["tables"]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        ran = {g: set(fetch_all(con, "SELECT table_name, check_name FROM quality.check_results WHERE gate_id = ? "
                                     "AND table_name NOT LIKE 'raw.%'", [g])) for g in (before["gate_id"], snap.run_id)}
    assert ran[snap.run_id] == ran[before["gate_id"]] and len(ran[snap.run_id]) > 90


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_daily_gate_blocks_a_bad_row_of_the_days_data(base, tmp_path, fault):
    """Each bad build the full gate blocks (above, through Dagster) is blocked by the daily gate;
    the stored verdict is then the full gate's (GX, Data Docs), with the same failure."""
    from core.snapshots import PublishError
    from expectations.gate import DAILY, FULL, checks_digest, gate_scope, run_gate
    from publish.snapshot import publish_build

    config = load_config(copy_project(base, tmp_path / "proj"))
    assert gate_scope(config, checks_digest(config))[0] == DAILY
    current = config.published_dir / CURRENT
    before = digest(current)
    sql, expected = FAULTS[fault]
    with open_warehouse(config.warehouse_path) as con:
        opted_out = ("SELECT min(person_id) FROM marts.consent WHERE channel = 'email_marketing' "
                     "AND status = 'denied'")
        con.execute(sql.format(segment=_most_common_segment(con), opted_out=opted_out))
        gate = run_gate(config, con, dagster_run_id=f"bad-day-{fault.replace(' ', '-')}")
        assert not gate.passed and expected in gate.summary()["blocking_failures"], gate.message()
        assert gate.scope == FULL and gate.scope_reason.startswith("the daily gate failed: ")
        assert expected in gate.scope_reason
        with pytest.raises(PublishError, match="did not pass"):
            publish_build(config, con, gate.summary())
    assert digest(current) == before


def test_the_daily_gates_python_bounds_agree_with_gx(base, tmp_path):
    """NativeRunner against GX on every published table's suite, on a build with several faults."""
    from expectations.gate import check_published_table, existing_tables
    from expectations.gx_runner import NativeRunner, runner_for

    config = load_config(copy_project(base, tmp_path / "proj"))
    with open_warehouse(config.warehouse_path) as con:
        for fault in ("duplicated keys", "probability out of range", "opted-out person in an email audience",
                      "schema drift"):
            opted_out = ("SELECT min(person_id) FROM marts.consent WHERE channel = 'email_marketing' "
                         "AND status = 'denied'")
            con.execute(FAULTS[fault][0].format(segment=_most_common_segment(con), opted_out=opted_out))
        present = existing_tables(con)
        relations = {t.relation for t in present.values()}
        gx, native = runner_for(config.reports_dir), NativeRunner()
        failed = set()
        for t in present.values():
            by_gx = {(c.check, c.passed, c.blocking) for c in check_published_table(con, gx, t, relations, 0)}
            by_python = {(c.check, c.passed, c.blocking) for c in check_published_table(con, native, t, relations, 0)}
            assert by_python == by_gx, t.name
            failed |= {f"{check} on {t.name}" for check, passed, _ in by_gx if not passed}
    assert {FAULTS[f][1] for f in ("duplicated keys", "probability out of range",
                                   "opted-out person in an email audience", "schema drift")} <= failed
