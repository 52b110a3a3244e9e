"""Crash-only runs (issue 25, items 1-2): a `cdp run` killed with SIGKILL mid-step leaves the
project runnable by the next `cdp run`, and one run at a time is enforced by the project's
lock for `cdp run`, the sensor, the schedule and warehouse-writing steps. Real `cdp`
subprocesses, real SIGKILL, a real Dagster instance on the project's home."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from core import run_lock
from core.config import load_config
from dagster_project.defs.automation import daily_refresh, landing_files_sensor
from dagster_project.defs.ingestion import RAW_ASSETS, WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource
from dagster_project.run_guard import TAG_PID
from tests.helpers import web_line, write

CDP = str(Path(sys.executable).parent / "cdp")
RUN_TIMEOUT = 300  # a 300-customer ingestion run takes well under a minute even on a busy machine


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG", "DAGSTER_HOME")}
    env.update(DAGSTER_DISABLE_TELEMETRY="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false", GX_ANALYTICS_ENABLED="false")
    return env


def _cdp(*args, timeout=RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([CDP, *args], env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def generated_landing(tmp_path_factory) -> Path:
    """One `cdp generate` (300 customers) per module; each test copies its landing folder."""
    root = tmp_path_factory.mktemp("generated")
    assert _cdp("init", str(root)).returncode == 0
    done = _cdp("generate", "--config", str(root / "cdp.yaml"), "--customers", "300", "--seed", "3")
    assert done.returncode == 0, done.stderr
    return root / "landing"


def _small_project(root: Path, landing: Path) -> Path:
    assert _cdp("init", str(root)).returncode == 0
    shutil.copytree(landing, root / "landing", dirs_exist_ok=True)
    return root / "cdp.yaml"


@pytest.fixture
def start_run():
    """`cdp run --only ingestion` in the background; any still running at the end are killed."""
    started: list[subprocess.Popen] = []

    def start(cfg: Path, *extra) -> subprocess.Popen:
        proc = subprocess.Popen([CDP, "run", "--config", str(cfg), "--only", "ingestion", *extra], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for_warehouse_slot(home: Path, proc: subprocess.Popen, timeout=RUN_TIMEOUT) -> str:
    """Poll the project's Dagster instance until a step of a run holds the warehouse pool slot
    (the run is inside a warehouse-writing step); that run's id."""
    deadline = time.monotonic() + timeout
    with DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended before a warehouse step: {proc.communicate()}"
            if WAREHOUSE_POOL in instance.event_log_storage.get_concurrency_keys():
                claimed = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
                if claimed:
                    return claimed[0].run_id
            time.sleep(0.02)
    raise AssertionError("no warehouse step started in time")


def _outcome(stdout: str) -> dict:
    """What a run did, comparable between projects: per asset its row counts, and the checks."""
    summary = json.loads(stdout)
    rows = {m["asset"]: {k: m["metadata"][k] for k in ("rows_total", "rows_loaded_this_run",
                                                          "rows_quarantined_this_run")}
            for m in summary["materialized"]}
    checks = sorted((c["asset"], c["check"], c["passed"]) for c in summary["checks"])
    return {"ok": summary["ok"], "rows": rows, "checks": checks}


@pytest.mark.slow
def test_kill_9_in_a_warehouse_step_then_the_next_run_recovers_without_a_manual_step(tmp_path, start_run,
                                                                                    generated_landing):
    cfg = _small_project(tmp_path / "p", generated_landing)
    home = load_config(cfg).dagster_home
    first = start_run(cfg)
    killed_run = _wait_for_warehouse_slot(home, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with DagsterInstance.from_config(str(home)) as instance:
        # What used to wedge the project: the dead run is still STARTED (and held the slot).
        assert instance.get_run_by_id(killed_run).status == DagsterRunStatus.STARTED

    # Before: this run waited forever for the dead run's slot, printing nothing.
    second = _cdp("run", "--config", str(cfg), "--only", "ingestion", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (f"run {killed_run[:8]} was left STARTED by a process that is gone (pid {first.pid}); "
            "marked failed and its warehouse slot freed") in second.stderr
    assert _outcome(second.stdout)["ok"]
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(killed_run).status == DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots


@pytest.mark.slow
def test_a_second_cdp_run_exits_2_naming_the_first_which_completes_as_if_alone(tmp_path, start_run,
                                                                               generated_landing):
    cfg = _small_project(tmp_path / "p", generated_landing)
    alone_cfg = tmp_path / "alone" / "cdp.yaml"
    assert _cdp("init", str(alone_cfg.parent)).returncode == 0
    shutil.copytree(cfg.parent / "landing", alone_cfg.parent / "landing", dirs_exist_ok=True)
    home = load_config(cfg).dagster_home

    first = start_run(cfg, "--json")
    first_run = _wait_for_warehouse_slot(home, first)  # the first is mid-steps, as in the report
    second = _cdp("run", "--config", str(cfg), "--only", "ingestion", "--json")
    assert second.returncode == 2, (second.stdout[-2000:], second.stderr[-2000:])
    assert f"run {first_run[:8]} is in progress since" in second.stderr
    assert f"(pid {first.pid} on" in second.stderr
    assert second.stdout == ""  # it ran nothing
    out, errors = first.communicate(timeout=RUN_TIMEOUT)
    assert first.returncode == 0, errors[-3000:]

    alone = _cdp("run", "--config", str(alone_cfg), "--only", "ingestion", "--json")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert _outcome(out) == _outcome(alone.stdout)
    with DagsterInstance.from_config(str(home)) as instance:
        assert [r.run_id for r in instance.get_runs()] == [first_run]  # the second made no run


def _hold_lock_elsewhere(home: Path, run_id: str) -> subprocess.Popen:
    """Another process holding the project lock, as a running `cdp run` does, until its stdin closes."""
    code = ("import sys; from pathlib import Path; from core import run_lock; "
            f"run_lock.acquire(run_lock.lock_path(Path({str(home)!r})), {run_id!r}, 'cdp run'); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_sensor_schedule_and_warehouse_steps_respect_the_lock_another_process_holds(project):
    tessera = TesseraResource(config_path=str(project.root / "cdp.yaml"))
    write(project.landing_dir / "web" / "events_2025-01.jsonl", web_line(1) + "\n")
    holder_run = "1a2b3c4d-0000-4000-8000-000000000000"
    holder = _hold_lock_elsewhere(project.dagster_home, holder_run)
    try:
        with DagsterInstance.from_config(str(project.dagster_home)) as instance:
            ctx = build_sensor_context(instance=instance, resources={"tessera": tessera})
            res = landing_files_sensor(ctx)
            assert isinstance(res, SkipReason), res
            assert "run 1a2b3c4d is in progress since" in res.skip_message
            assert f"pid {holder.pid}" in res.skip_message
            assert ctx.cursor is None  # the new file is still new for the next tick

            sched = daily_refresh(build_schedule_context(instance=instance, resources={"tessera": tessera}))
            assert isinstance(sched, SkipReason) and "run 1a2b3c4d is in progress" in sched.skip_message

        # A warehouse-writing step started elsewhere (e.g. the UI) fails fast, naming the holder.
        raw_web = next(a for a in RAW_ASSETS if a.node_def.name == "raw_web_events")
        result = materialize([raw_web], resources={"tessera": tessera}, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "run 1a2b3c4d is in progress since" in failure.event_specific_data.error.message
        assert not project.warehouse_path.exists()  # it did not even open the warehouse
    finally:
        holder.stdin.close()
        holder.wait()

    # Released (the holder exited): the sensor requests the run and the step runs.
    with DagsterInstance.ephemeral() as instance:
        assert isinstance(landing_files_sensor(build_sensor_context(instance=instance, resources={"tessera": tessera})),
                          RunRequest)
    assert materialize([raw_web], resources={"tessera": tessera}).success
    assert run_lock.holder(run_lock.lock_path(project.dagster_home)) is None  # the step's lock ended with its run


def test_sensor_tick_marks_a_dead_processes_run_failed_and_frees_its_slot(project):
    tessera = TesseraResource(config_path=str(project.root / "cdp.yaml"))
    write(project.landing_dir / "web" / "events_2025-01.jsonl", web_line(1) + "\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid whose process is gone
    with DagsterInstance.from_config(str(project.dagster_home)) as instance:
        run = instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id="deadbeef-0000-4000-8000-000000000000",
                                          status=DagsterRunStatus.STARTED,
                                          tags={TAG_PID: str(dead.pid), "tessera/host": os.uname().nodename}))
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(WAREHOUSE_POOL)
        assert storage.claim_concurrency_slot(WAREHOUSE_POOL, run.run_id, "identity__resolution").is_claimed

        res = landing_files_sensor(build_sensor_context(instance=instance, resources={"tessera": tessera}))
        assert isinstance(res, RunRequest)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert not storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots


def test_a_writer_waits_out_a_short_reader_and_names_a_long_one(tmp_path, monkeypatch):
    """`cdp serve` reads the warehouse for under a second after each publish; a run's step that
    opens it then must wait, not fail. A holder that stays is reported as busy."""
    from core import warehouse

    path = tmp_path / "w.duckdb"
    warehouse.connect(path).close()
    holder = [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
              "print('open', flush=True); time.sleep(float(sys.argv[2]))", str(path)]
    reader = subprocess.Popen([*holder, "1.0"], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "open"
    started = time.monotonic()
    warehouse.connect(path).close()  # waited for the reader, then wrote
    assert time.monotonic() - started > 0.3
    reader.wait()

    monkeypatch.setattr(warehouse, "WRITER_WAIT_SECONDS", 0.5)
    stayer = subprocess.Popen([*holder, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert stayer.stdout.readline().strip() == "open"
        with pytest.raises(warehouse.WarehouseBusy, match="open by another process"):
            warehouse.connect(path)
    finally:
        stayer.kill()
        stayer.wait()
