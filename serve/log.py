"""The collector's durable append log, rotated into landing files the batch ingestion loads.

An event is acknowledged only after its line is in the log and the log is fsync'd. Writes from
concurrent requests are committed together (group commit: one write + one fsync for every
request waiting), which is what makes durability affordable at thousands of events a second.

Rotation closes the open segment (``<spool>/log/<seq>.jsonl``) and renames it into the web
source's landing folder under a name its glob matches (``web/events_serve-<time>-<seq>.jsonl``).
A rename is atomic: the loader sees the whole file or none of it, and its manifest loads each
file once. After a crash the segment left in the spool is rotated at the next start, with a torn
last line (written, never fsync'd, so never acknowledged) cut off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("tessera.serve")

LANDED_TAG = "serve-"


def log_dir_name(worker: int) -> str:
    """Worker 0's log folder is the one a single-process server always used."""
    return "log" if worker == 0 else f"log-{worker}"


def worker_of_log_dir(name: str) -> int | None:
    if name == "log":
        return 0
    rest = name.removeprefix("log-")
    return int(rest) if rest != name and rest.isdigit() else None


class LogBusy(RuntimeError):
    """Another process holds this log folder (a worker of a running `cdp serve`)."""


def landing_name(glob: str, stamp: str) -> str:
    """The source's glob with its one ``*`` replaced: a name the batch loader will pick up."""
    if glob.count("*") != 1 or any(c in glob for c in "?["):
        raise ValueError(f"the web events path {glob!r} needs exactly one '*' (and no ? or [) for the collector "
                         "to name its landing files")
    return glob.replace("*", LANDED_TAG + stamp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Append JSON lines durably; rotate them into ``landing_dir / landing_name(glob, ...)``."""

    def __init__(self, spool: Path, landing_dir: Path, glob: str, rotate_bytes: int, rotate_seconds: float,
                 worker: int = 0):
        self.dir = spool / log_dir_name(worker)
        self.dir.mkdir(parents=True, exist_ok=True)
        # one writer per folder, for as long as this process lives (the kernel drops the lock
        # with the process, kill -9 included)
        self._lock = open(self.dir / ".lock", "a+b")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise LogBusy(f"{self.dir} is in use by another cdp serve process (worker {worker})") from None
        # landing names carry the worker (worker 0: none, as a single process names them), so
        # two workers never write one landing file
        self.tag = "" if worker == 0 else f"w{worker}-"
        self.landing_dir = landing_dir
        self.glob = glob
        landing_name(glob, "check")  # fail at start, not at the first rotation
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self._queue: queue.Queue = queue.Queue()
        self._seq = max((int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit()), default=0)
        self.recovered = self._recover()
        self._file = None
        self._size = 0
        self._opened_at = 0.0
        self.rotated: list[Path] = []
        self.committed_lines = 0
        self.commits = 0            # group commits (one write + one fdatasync each)
        self.commit_seconds = 0.0   # wall time inside them
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="event-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> list[bytes]:
        """Segments a crash left behind: cut a torn tail, land them. Returns their lines, so
        the collector remembers their messageIds (a client re-sending one is not duplicated)."""
        lines: list[bytes] = []
        for seg in sorted(self.dir.glob("*.jsonl"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
            data = seg.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):
                log.warning("log segment %s: a torn last line (never acknowledged) was dropped", seg.name)
                with open(seg, "r+b") as f:
                    f.truncate(cut)
                    os.fsync(f.fileno())
            lines.extend(data[:cut].splitlines())
            self._land(seg)
        return lines

    def _land(self, seg: Path) -> Path | None:
        if seg.stat().st_size == 0:
            seg.unlink()
            return None
        stamp = self.tag + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + f"-{int(seg.stem):06d}"
        target = self.landing_dir / landing_name(self.glob, stamp)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(seg, target)
        except OSError:  # another file system: copy, fsync, then rename within the landing folder
            tmp = target.with_name("." + target.name + ".tmp")
            tmp.write_bytes(seg.read_bytes())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            seg.unlink()
        _fsync_dir(target.parent)
        _fsync_dir(self.dir)
        log.info("rotated log segment %s into landing file %s", seg.name, target.name)
        return target

    # ------------------------------------------------------------------ writing
    def append(self, lines: list[bytes]) -> Future:
        """Queue lines (each ending in a newline); the future resolves once they are fsync'd."""
        fut: Future = Future()
        if self._closing:
            fut.set_exception(RuntimeError("the event log is closed"))
        else:
            self._queue.put((b"".join(lines), len(lines), fut))
        return fut

    def rotate(self) -> Future:
        """Ask for a rotation now (tests, shutdown); resolves with the landed path or None."""
        fut: Future = Future()
        self._queue.put(("rotate", 0, fut))
        return fut

    def close(self) -> None:
        """Commit what is queued, land the open segment, stop the writer."""
        self._closing = True
        done: Future = Future()
        self._queue.put(("close", 0, done))
        done.result(timeout=60)
        self._thread.join(timeout=60)
        self._lock.close()

    def _open(self) -> None:
        self._seq += 1
        path = self.dir / f"{self._seq}.jsonl"
        self._file = open(path, "ab", buffering=0)
        _fsync_dir(self.dir)
        self._size = 0
        self._opened_at = time.monotonic()

    def _rotate_now(self) -> Path | None:
        if self._file is None:
            return None
        path = Path(self._file.name)
        self._file.close()
        self._file = None
        landed = self._land(path)
        if landed is not None:
            self.rotated.append(landed)
        return landed

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=min(1.0, self.rotate_seconds))
            except queue.Empty:
                first = None
            items = [first] if first is not None else []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [i for i in items if not isinstance(i[0], str)]
            if writes:
                try:
                    if self._file is None:
                        self._open()
                    data = b"".join(w[0] for w in writes)
                    t0 = time.perf_counter()
                    self._file.write(data)
                    os.fdatasync(self._file.fileno())
                    self.commit_seconds += time.perf_counter() - t0
                    self.commits += 1
                    self._size += len(data)
                    self.committed_lines += sum(w[1] for w in writes)
                    for w in writes:
                        w[2].set_result(None)
                except Exception as e:  # a failed write acknowledges nothing
                    log.error("event log write failed: %s", type(e).__name__)
                    for w in writes:
                        w[2].set_exception(e)
            commands = [i for i in items if isinstance(i[0], str)]
            due = self._file is not None and (self._size >= self.rotate_bytes
                                              or time.monotonic() - self._opened_at >= self.rotate_seconds)
            if due or commands:
                try:
                    landed = self._rotate_now()
                except Exception as e:
                    log.error("log rotation failed: %s", type(e).__name__)
                    landed = None
                for c in commands:
                    c[2].set_result(landed)
                if any(c[0] == "close" for c in commands):
                    return


class LogFollower:
    """Reads the other workers' log segments as they grow: the complete lines past what was
    read, handed to ``on_lines``. A segment is followed through its rotation by its open file:
    the writer closes a segment before renaming it into the landing folder, so once its name is
    gone from the log folder what the open file holds is final; it is read to its end and
    closed. Lines are read as soon as written (before their fsync has returned): a worker
    killed with -9 leaves them in the file (the page cache outlives the process), and its next
    start lands them."""

    def __init__(self, spool: Path, own_worker: int, on_lines):
        self.spool = spool
        self.own = own_worker
        self.on_lines = on_lines
        self._open: dict[Path, list] = {}  # segment -> [file, partial last line]

    def poll(self) -> int:
        for d in self.spool.glob("log*"):
            w = worker_of_log_dir(d.name)
            if w is None or w == self.own or not d.is_dir():
                continue
            for seg in d.glob("*.jsonl"):
                if seg not in self._open:
                    try:
                        self._open[seg] = [open(seg, "rb"), b""]
                    except FileNotFoundError:  # landed between the listing and the open: the
                        continue               # replay of landed files at a start covers it
        n = 0
        for seg, st in sorted(self._open.items(), key=lambda kv: (kv[0].parent.name, _seq(kv[0]))):
            gone = not seg.exists()
            data = st[0].read()
            if data:
                buf = st[1] + data
                cut = buf.rfind(b"\n") + 1
                st[1] = buf[cut:]
                if cut:
                    lines = buf[:cut].splitlines()
                    n += len(lines)
                    self.on_lines(lines)
            if gone:
                st[0].close()
                del self._open[seg]
        return n

    def close(self) -> None:
        for st in self._open.values():
            st[0].close()
        self._open.clear()


def _seq(p: Path) -> int:
    return int(p.stem) if p.stem.isdigit() else -1
