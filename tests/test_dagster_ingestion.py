"""The Dagster wiring: definitions, the landing-file sensor, and `cdp run` in-process."""

import json
import os

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterInstance, RunRequest, SkipReason, build_sensor_context

from cdp.cli import main as cdp
from dagster_project.defs.automation import landing_files_sensor
from dagster_project.defs.resources import TesseraResource
from tests.helpers import web_line, write


@pytest.fixture
def _config_env(monkeypatch, tmp_path):
    # definitions.py reads the config path from the environment, like `dagster dev`.
    monkeypatch.setenv("CDP_CONFIG", str(tmp_path / "unused.yaml"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()


def test_definitions_wire_one_asset_per_raw_table_with_checks(_config_env):
    from core.contracts import ENTITIES
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    for ent in ENTITIES:
        assert AssetKey(["raw", ent.table]) in keys
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("raw/web_events", "files_accepted") in check_keys
    assert ("raw/web_events", "quarantine_rate_below_1pct") in check_keys
    assert defs.resolve_schedule_def("daily_refresh").cron_schedule == "0 3 * * *"
    assert defs.resolve_sensor_def("landing_files_sensor") is not None
    for key in keys:
        node = graph.get(key)
        assert node.description, f"{key} has no description"
        assert node.group_name


def test_sensor_requests_runs_only_for_new_landing_files(project):
    tessera = TesseraResource(config_path=str(project.root / "cdp.yaml"))
    with DagsterInstance.ephemeral() as instance:
        ctx = build_sensor_context(instance=instance, resources={"tessera": tessera})
        first = landing_files_sensor(ctx)
        assert isinstance(first, SkipReason)

        write(project.landing_dir / "web" / "events_2025-01.jsonl", web_line(1) + "\n")
        write(project.landing_dir / "pos" / "line_items_2025-01.csv", "transaction_id,line_no,sku,quantity,unit_price\nT1,1,S1,1,1\n")
        ctx = build_sensor_context(instance=instance, resources={"tessera": tessera}, cursor=ctx.cursor)
        req = landing_files_sensor(ctx)
        assert isinstance(req, RunRequest)
        assert set(req.asset_selection) == {AssetKey(["raw", "web_events"]), AssetKey(["raw", "pos_line_items"])}
        cursor = ctx.cursor
        assert "web|web_events|web/events_2025-01.jsonl" in json.loads(cursor)

        # Nothing new: skip.
        ctx = build_sensor_context(instance=instance, resources={"tessera": tessera}, cursor=cursor)
        assert isinstance(landing_files_sensor(ctx), SkipReason)

        # One more file of one source: a run for that table only, with a new run key.
        write(project.landing_dir / "web" / "events_2025-02.jsonl", web_line(2) + "\n")
        ctx = build_sensor_context(instance=instance, resources={"tessera": tessera}, cursor=cursor)
        req2 = landing_files_sensor(ctx)
        assert isinstance(req2, RunRequest)
        assert req2.asset_selection == [AssetKey(["raw", "web_events"])]
        assert req2.run_key != req.run_key


def test_sensor_skips_with_reason_on_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: 3\n")
    with DagsterInstance.ephemeral() as instance:
        ctx = build_sensor_context(instance=instance, resources={"tessera": TesseraResource(config_path=str(bad))})
        res = landing_files_sensor(ctx)
        assert isinstance(res, SkipReason) and "config problem" in res.skip_message


def test_cdp_run_ingests_reports_and_is_idempotent(project, monkeypatch):
    monkeypatch.chdir(project.root)  # the default config is ./cdp.yaml
    monkeypatch.delenv("CDP_CONFIG", raising=False)
    write(project.landing_dir / "web" / "events_2025-01.jsonl", "\n".join(web_line(i) for i in range(50)) + "\n{broken\n")
    write(project.landing_dir / "catalog" / "products.csv", "sku,name,category,price,margin\nS1,Mug,home,9.5,0.4\n")
    runner = CliRunner()
    first = runner.invoke(cdp, ["run", "--only", "ingestion", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["ok"] is True
    web = next(m for m in summary["materialized"] if m["asset"] == "raw/web_events")
    assert web["metadata"]["rows_loaded_this_run"] == 50
    assert web["metadata"]["rows_quarantined_this_run"] == 1
    assert web["metadata"]["quarantine_by_reason"] == {"malformed_json": 1}

    second = runner.invoke(cdp, ["run", "--only", "ingestion", "--json"])
    assert second.exit_code == 0
    web2 = next(m for m in json.loads(second.stdout)["materialized"] if m["asset"] == "raw/web_events")
    assert web2["metadata"]["rows_loaded_this_run"] == 0
    assert web2["metadata"]["rows_total"] == 50

    status = runner.invoke(cdp, ["status", "--json"])
    info = json.loads(status.stdout)
    assert info["raw_tables"]["web_events"] == 50
    assert info["raw_tables"]["catalog_products"] == 1
    assert info["latest_run"]["status"] == "SUCCESS" and info["latest_run"]["ok"] is True
    assert info["paths"]["warehouse"] == str(project.warehouse_path)
    # Runs are recorded in the project's Dagster home, so the UI shows them.
    assert os.path.isdir(project.dagster_home / "history") or any(project.dagster_home.iterdir())


def test_cdp_run_exits_nonzero_with_a_summary_when_a_file_is_rejected(project, monkeypatch):
    write(project.landing_dir / "pos" / "line_items_2025-01.csv", "transaction_id,sku\nT1,S1\n")
    result = CliRunner().invoke(cdp, ["run", "--config", str(project.root / "cdp.yaml"), "--only", "ingestion"])
    assert result.exit_code == 1
    # the run stops at ingestion with the file's message and how to go on without it
    assert "pos/line_items_2025-01.csv: REJECTED" in result.output and "--keep-going" in result.output
    assert "required column(s) missing: line_no, quantity, unit_price" in result.output
    assert "FAILED" in result.output


def test_cli_errors_are_messages_not_tracebacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDP_CONFIG", raising=False)
    runner = CliRunner()
    res = runner.invoke(cdp, ["status"])
    assert res.exit_code == 2 and "config file not found" in res.output and "Traceback" not in res.output
    (tmp_path / "cdp.yaml").write_text("sources:\n  - name: web\n    kind: webb\n    entities: {}\n")
    res = runner.invoke(cdp, ["run"])
    assert res.exit_code == 2 and "sources[0].kind: unknown source kind 'webb'" in res.output
    from cdp.scaffold import init_project

    init_project(tmp_path / "p")
    res = runner.invoke(cdp, ["run", "--config", str(tmp_path / "p" / "cdp.yaml"), "--only", "nonsense"])
    assert res.exit_code == 2 and "unknown stage(s) nonsense" in res.output


def test_run_pipeline_twice_on_two_projects_in_one_process(tmp_path, monkeypatch):
    """`cdp run` is in-process and leaves no process-global state: two projects run one after
    the other in one process each get their own rows and their own run history."""
    from cdp.runner import run_pipeline
    from cdp.scaffold import init_project
    from core.config import load_config
    from core.warehouse import fetch_value, open_warehouse

    monkeypatch.delenv("CDP_CONFIG", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    environ_before = dict(os.environ)
    projects = {}
    for name, events in (("a", 30), ("b", 7)):
        config = load_config(init_project(tmp_path / name))
        write(config.landing_dir / "web" / "events_2025-01.jsonl", "\n".join(web_line(i) for i in range(events)) + "\n")
        projects[name] = (config, events)
    summaries = {name: run_pipeline(config.root / "cdp.yaml", only=["ingestion"]) for name, (config, _) in projects.items()}
    for name, (config, events) in projects.items():
        summary = summaries[name]
        assert summary.ok, summary.failures
        web = next(m for m in summary.materialized if m.asset == "raw/web_events")
        assert web.metadata["dagster/row_count"] == events
        with open_warehouse(config.warehouse_path, read_only=True) as con:
            assert fetch_value(con, "SELECT count(*) FROM raw.web_events") == events
        with DagsterInstance.from_config(str(config.dagster_home)) as instance:
            assert [r.run_id for r in instance.get_runs()] == [summary.run_id]
    assert dict(os.environ) == environ_before  # nothing set, nothing left behind
