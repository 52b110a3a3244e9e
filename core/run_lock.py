"""One pipeline run at a time per project: an ``fcntl.flock`` on a file in the Dagster home.

The kernel releases the lock when its process exits, however it exits (kill -9 included), so
the lock cannot go stale. The file also records who holds it (run id, pid, host, since when),
which is only believed while the lock is actually held.

Locks from ``flock`` belong to an open file, so two opens in one process exclude each other;
this module keeps the lock(s) this process holds in ``_HELD`` so the steps of a run that
``cdp run`` locked see the lock as theirs.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "tessera_run.lock"


class RunInProgress(RuntimeError):
    """Another process holds the project's run lock."""

    def __init__(self, holder: "Holder | None"):
        self.holder = holder
        super().__init__(describe(holder))


@dataclass(frozen=True)
class Holder:
    run_id: str
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    trigger: str

    @property
    def short_id(self) -> str:
        return self.run_id[:8]


def describe(holder: Holder | None) -> str:
    if holder is None or not holder.pid:
        return "another run is in progress (it is starting; its details are not written yet)"
    since = holder.since.replace("T", " ").replace("+00:00", " UTC")
    if not holder.run_id:  # e.g. a sensor tick clearing stale runs, for a moment
        return f"{holder.trigger} holds the project's run lock since {since} (pid {holder.pid}); retry shortly"
    return (f"run {holder.short_id} is in progress since {since} (pid {holder.pid} on {holder.host}, "
            f"{holder.trigger}); wait for it to finish, then retry")


def lock_path(dagster_home: Path) -> Path:
    return Path(dagster_home) / LOCK_FILE


def process_started_at(pid: int) -> float | None:
    """When a local process started (seconds since the epoch), from /proc; None if it is gone
    or this is not Linux. Used to tell a live process from a later one given the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks since boot
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_alive(pid: int, started_at: float | None = None) -> bool:
    """Is this local pid running, and (when its start time is known) the same process?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    if started_at is None:
        return True
    actual = process_started_at(pid)
    # /proc's start time has clock-tick resolution; a process started later reused the pid.
    return actual is None or abs(actual - started_at) < 2.0


_HELD: dict[str, tuple[int, Holder]] = {}


def _key(path: Path) -> str:
    return os.path.realpath(path)


def held_here(path: Path) -> Holder | None:
    """The holder record if this process holds the lock, else None."""
    held = _HELD.get(_key(path))
    return held[1] if held else None


def _read(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        return Holder(**json.loads(raw))
    except (ValueError, TypeError):
        return None  # empty (the holder has not written yet) or not ours


def holder(path: Path) -> Holder | None:
    """Who holds the lock now (this process included), or None when nobody does."""
    mine = held_here(path)
    if mine:
        return mine
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or Holder("", 0, "?", "", "starting")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire(path: Path, run_id: str, trigger: str) -> Holder:
    """Take the lock without waiting and record the holder; RunInProgress if another has it.
    Re-entrant within a process: the steps of a run whose process holds the lock pass."""
    mine = held_here(path)
    if mine:
        return mine
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            raise RunInProgress(_read(fd)) from None
        finally:
            os.close(fd)
    record = Holder(run_id=run_id, pid=os.getpid(), host=socket.gethostname(),
                    since=datetime.now(timezone.utc).isoformat(timespec="seconds"), trigger=trigger)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record.__dict__).encode(), 0)
    _HELD[_key(path)] = (fd, record)
    return record


def release(path: Path) -> None:
    held = _HELD.pop(_key(path), None)
    if held:
        fd = held[0]
        os.ftruncate(fd, 0)  # nobody reads a finished run as the holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

