"""Running the app under uvicorn: one process, or ``serve.workers`` worker processes on one port.

One process: uvicorn serves the app; graceful shutdown on SIGTERM / Ctrl-C (in-flight requests
finish, the open log segment is landed); access logs without paths (a profile's path holds a
person's id).

N workers: this process is a supervisor. It forks the workers (each builds its own app: its own
log folder and group commit, its own live state following every worker's log, its own copy of
the snapshot; worker 0 alone runs the cart-abandonment trigger) and either opens the listening
socket itself, every worker accepting from it (``worker_socket: shared``), or lets each worker
open its own with SO_REUSEPORT, the kernel spreading connections across them (``reuseport``).
A worker that dies (kill -9 included) is started again with the same number, which lands what
its log holds; SIGTERM / SIGINT to the supervisor stops every worker gracefully.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing as mp
import os
import signal
import socket
import time

import uvicorn

from core.config import Config, ConfigError
from serve.app import Server, build_app

log = logging.getLogger("tessera.serve.workers")
UVICORN = {"access_log": False, "timeout_graceful_shutdown": 10, "proxy_headers": True, "server_header": False}
RESTART_BACKOFF_S = 0.5


def run(config: Config, host: str | None = None, port: int | None = None, log_level: str = "info",
        workers: int | None = None) -> None:
    host, port = host or config.serve.host, port or config.serve.port
    workers = workers or config.serve.workers
    if workers == 1:
        uvicorn.run(build_app(config), host=host, port=port, log_level=log_level, **UVICORN)
        return
    Server(config)  # a bad serve section or an unset key fails here, once, not in a restart loop
    Supervisor(config, host, port, workers, config.serve.worker_socket, log_level).run()


def _listen(host: str, port: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _stop_with_parent(supervisor: int) -> None:
    """A worker gets SIGTERM (a graceful stop) when the supervisor dies, kill -9 included, so no
    orphaned worker keeps the port and its log folder (Linux: prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(config: Config, worker: int, workers: int, host: str, port: int, sock: socket.socket | None,
                 log_level: str, supervisor: int) -> None:
    # the supervisor's handlers are not ours: uvicorn installs its own for a graceful stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _stop_with_parent(supervisor)
    if sock is None:
        sock = _listen(host, port, reuseport=True)
    app = build_app(config, worker=worker, workers=workers)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **UVICORN))
    server.run(sockets=[sock])


class Supervisor:
    def __init__(self, config: Config, host: str, port: int, workers: int, mode: str, log_level: str):
        self.config, self.host, self.port, self.workers, self.mode = config, host, port, workers, mode
        self.log_level = log_level
        self.ctx = mp.get_context("fork")  # nothing heavy is loaded yet: each worker builds its own app
        self.procs: dict[int, mp.Process] = {}
        self.started: dict[int, float] = {}
        self.quick_exits = 0
        self.stopping = False
        self.failed: str | None = None

    def _start(self, worker: int) -> None:
        p = self.ctx.Process(target=_worker_main, name=f"cdp-serve-worker-{worker}",
                             args=(self.config, worker, self.workers, self.host, self.port, self.sock, self.log_level,
                                   os.getpid()))
        p.start()
        self.procs[worker] = p
        self.started[worker] = time.monotonic()

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> None:
        # the supervisor's own messages (workers log as a single process does, through uvicorn)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
            log.addHandler(handler)
            log.setLevel(self.log_level.upper())
            log.propagate = False
        # shared: one socket, opened here before the fork; reuseport: each worker opens its own
        self.sock = _listen(self.host, self.port, reuseport=False) if self.mode == "shared" else None
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("cdp serve: %d workers on %s:%d (%s socket)", self.workers, self.host, self.port, self.mode)
        for w in range(self.workers):
            self._start(w)
        try:
            while not self.stopping:
                for w, p in list(self.procs.items()):
                    if not p.is_alive() and not self.stopping:
                        # a worker that cannot start (its log folder held by another server...)
                        # is not restarted forever
                        quick = time.monotonic() - self.started[w] < 10
                        self.quick_exits = self.quick_exits + 1 if quick else 0
                        if self.quick_exits >= 3:
                            self.failed = f"worker {w} exited at start three times in a row (its error is above)"
                            self.stopping = True
                            break
                        log.warning("worker %d exited (%s); starting it again", w, p.exitcode)
                        time.sleep(RESTART_BACKOFF_S)
                        if not self.stopping:
                            self._start(w)
                time.sleep(0.1)
        finally:
            for p in self.procs.values():
                if p.is_alive():
                    os.kill(p.pid, signal.SIGTERM)
            deadline = time.time() + 60
            for p in self.procs.values():
                p.join(timeout=max(0.1, deadline - time.time()))
                if p.is_alive():
                    log.error("worker %s did not stop in time; killed", p.name)
                    p.kill()
            if self.sock is not None:
                self.sock.close()
        if self.failed:
            raise ConfigError(f"cdp serve: {self.failed}; stopped")
