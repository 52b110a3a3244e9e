"""Crash-only runs: one run at a time per project, and nothing a killed run leaves behind
can stop the next one.

- The project lock (core/run_lock.py) is held for a whole `cdp run`; the landing-files sensor
  and the daily schedule skip while it is held; a warehouse-writing step of any other run
  (e.g. launched from the UI) takes it for the rest of its run, or fails fast naming the
  holder (TesseraResource).
- Before a run starts, runs left STARTED/STARTING/QUEUED/CANCELING by a process that is gone
  are marked failed and their `tessera_warehouse` pool slots freed: Dagster frees a run's
  slots only when the run's own process ends it, so a kill -9 kept the slot forever and every
  later run waited on it without a word.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.events import DagsterEventType
from dagster._core.utils import make_new_run_id

from core import run_lock
from core.config import Config
from dagster_project.instance import ensure_dagster_home

log = logging.getLogger("tessera.runs")

# Who owns a run's process, recorded in its tags when it starts (see owner_tags).
TAG_PID = "tessera/pid"
TAG_HOST = "tessera/host"
TAG_PROCESS_STARTED = "tessera/process_started"

UNFINISHED = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.QUEUED,
              DagsterRunStatus.CANCELING]


def lock_path(config: Config) -> Path:
    return run_lock.lock_path(config.dagster_home)


def owner_tags() -> dict[str, str]:
    """This process as a run's owner: pid, host and process start time (the start time tells
    this process from a later one that reuses its pid)."""
    started = run_lock.process_started_at(os.getpid())
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(),
            **({TAG_PROCESS_STARTED: f"{started:.2f}"} if started is not None else {})}


def _owner(instance: DagsterInstance, record) -> tuple[int | None, float | None, str | None, bool]:
    """(pid, process start time, host, tagged by us) of a run's process, as far as known."""
    tags = record.dagster_run.tags
    if TAG_PID in tags:
        started = tags.get(TAG_PROCESS_STARTED)
        return int(tags[TAG_PID]), float(started) if started else None, tags.get(TAG_HOST), True
    # Runs launched by Dagster (UI, daemon): the pid of the process that started the run.
    starts = instance.get_records_for_run(record.dagster_run.run_id, of_type=DagsterEventType.RUN_START,
                                          limit=1, ascending=False).records
    event = starts[0].event_log_entry.dagster_event if starts else None
    return (event.pid if event else None), None, socket.gethostname(), False


def _gone(instance: DagsterInstance, record) -> int | None:
    """The pid of a run's process if that process is gone, else None (alive, or unknown)."""
    pid, started, host, tagged = _owner(instance, record)
    if pid is None:
        return None
    if host != socket.gethostname():
        # Another machine's process cannot be checked; a `cdp run` holds the project lock for its
        # whole life, and the caller holds it now, so a tagged run's process is gone.
        return pid if tagged else None
    if not run_lock.process_alive(pid, started):
        return pid
    if started is None and record.start_time:
        # A live process that started after the run did is a later one that reused the pid.
        actual = run_lock.process_started_at(pid)
        if actual is not None and actual > record.start_time + 1:
            return pid
    return None


def recover_stale_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs whose process is gone and free their pool slots; free
    slots still held by finished runs. Call while holding the project lock. Returns one line
    per run recovered (also logged on `tessera.runs`)."""
    lines: list[str] = []
    for record in instance.get_run_records(RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        if run.status == DagsterRunStatus.QUEUED and TAG_PID not in run.tags:
            continue  # waiting in the daemon's queue: nobody's process yet, nothing held
        pid = _gone(instance, record)
        if pid is None:
            continue
        instance.report_run_failed(
            run, f"the process running it (pid {pid}) is gone; marked failed by the next run's start")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        lines.append(f"run {run.run_id[:8]} was left {run.status.value} by a process that is gone (pid {pid}); "
                     "marked failed and its warehouse slot freed")
    # Slots (or queued claims) of runs that ended without freeing them, e.g. marked failed by hand.
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding: set[str] = set()
        for key in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(key)
            holding |= info.active_run_ids | {s.run_id for s in info.pending_steps}
        for run_id in sorted(holding):
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                lines.append(f"run {run_id[:8]} had ended ({run.status.value if run else 'deleted'}) but still "
                             "held a warehouse slot; freed")
    for line in lines:
        log.warning(line)
    return lines


def in_progress(config: Config) -> str | None:
    """Why a new run must not start now (the run holding the project lock), or None."""
    holder = run_lock.holder(lock_path(config))
    return run_lock.describe(holder) if holder else None


def prepare_requested_run(config: Config, instance: DagsterInstance) -> str | None:
    """For the sensor and the schedule: the reason to skip if a run holds the project lock;
    otherwise recover stale runs (briefly holding the lock) so the requested run can start."""
    reason = in_progress(config)
    if reason:
        return reason
    path = lock_path(config)
    try:
        run_lock.acquire(path, run_id="", trigger="a sensor/schedule tick checking for stale runs")
    except run_lock.RunInProgress as e:
        return str(e)
    try:
        recover_stale_runs(instance)
    finally:
        run_lock.release(path)
    return None


@dataclass(frozen=True)
class Claim:
    """A run that may start: its id, and its owner tags to add to the run."""

    run_id: str
    tags: dict[str, str]


@contextmanager
def project_run(config: Config, trigger: str) -> Iterator[Claim]:
    """Hold the project lock for a whole in-process run (RunInProgress if another run holds it),
    after marking failed and unblocking the runs a dead process left behind."""
    path = lock_path(config)
    run_id = make_new_run_id()
    run_lock.acquire(path, run_id=run_id, trigger=trigger)
    try:
        # The instance from the project's own Dagster home, whatever the environment says.
        with DagsterInstance.from_config(str(ensure_dagster_home(config.dagster_home, config.engine))) as instance:
            recover_stale_runs(instance)
        yield Claim(run_id, owner_tags())
    finally:
        run_lock.release(path)
