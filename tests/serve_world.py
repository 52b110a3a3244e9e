"""Helpers for the `cdp serve` tests: a project with a web source and the serve section, the
server on 127.0.0.1 (in a thread, or as a `cdp serve` process that can be killed), a small
published snapshot, a webhook receiver that checks signatures, and loading what was landed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa
import requests
import uvicorn
import yaml

from activation.destinations.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from core.config import Config, load_config
from core.warehouse import connect
from ingestion.loader import ingest
from publish.snapshot import publish, serve_tables
from serve.app import build_app

WRITE_KEY, READ_KEY, HOOK_SECRET = "wk_test_123", "rk_test_456", "hook-secret"
os.environ.update({"TESSERA_WRITE_KEY": WRITE_KEY, "TESSERA_READ_KEY": READ_KEY, "TESSERA_HOOK_SECRET": HOOK_SECRET})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_project(root: Path, **serve) -> Path:
    """cdp.yaml with one web source and a serve section; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "landing").mkdir(exist_ok=True)
    cfg = {"version": 1, "project": "servetest",
           "sources": [{"name": "web", "kind": "web", "entities": {"events": {"path": "web/events_*.jsonl"}}}],
           "serve": {"write_keys_env": ["TESSERA_WRITE_KEY"], "read_keys_env": ["TESSERA_READ_KEY"],
                     "port": free_port(), **serve}}
    path = root / "cdp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class ServerThread:
    """The app under uvicorn in this process, on 127.0.0.1 (stopping it is a graceful shutdown)."""

    def __init__(self, config: Config):
        self.config = config
        self.app = build_app(config)
        self.port = config.serve.port
        self.uv = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                access_log=False))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server(self):
        return self.app.state.server

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout=30)


def wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"cdp serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=0.5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up")


def start_process(config_path: Path, workers: int | None = None) -> subprocess.Popen:
    """`cdp serve` as its own process (killable with SIGKILL); with ``workers``, the supervisor
    (ready once every worker answers)."""
    extra = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "serve", "--config", str(config_path), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    url = f"http://127.0.0.1:{load_config(config_path).serve.port}"
    wait_ready(url, proc=proc)
    if workers:
        for s in worker_sessions(url, workers).values():
            s.close()
    return proc


def worker_sessions(url: str, workers: int, timeout: float = 60.0) -> dict[int, requests.Session]:
    """A keep-alive session to each worker (its connection stays with the worker that accepted
    it): new connections until every worker has answered one."""
    found: dict[int, requests.Session] = {}
    spare: list[requests.Session] = []
    deadline = time.time() + timeout
    while len(found) < workers:
        if time.time() > deadline:
            raise TimeoutError(f"only workers {sorted(found)} answered")
        s = requests.Session()
        try:
            w = s.get(url + "/health", timeout=2).json()["worker"]
        except requests.RequestException:
            time.sleep(0.1)
            continue
        if w in found:
            spare.append(s)  # held open, so the next connection is not this one again
        else:
            found[w] = s
    for s in spare:
        s.close()
    return dict(sorted(found.items()))


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The supervisor's worker processes."""
    return [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]


def stop_process(proc: subprocess.Popen, hard: bool = False) -> None:
    proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    proc.wait(timeout=30)


def ingest_web(config: Config) -> list[tuple]:
    """Load the landing folder (ingestion only) into the project's warehouse; the web rows."""
    con = connect(config.warehouse_path)
    try:
        ingest(config, con)
        return con.execute('SELECT "messageId", type, event, "userId", "anonymousId", _file FROM raw.web_events '
                           'ORDER BY _file, _row').fetchall()
    finally:
        con.close()


@contextmanager
def hold_warehouse(path: Path):
    """A writer in another process holding the warehouse open (as a running `cdp run` does):
    DuckDB lets no other process open the file, even read-only, until it exits."""
    code = ("import sys, duckdb; con = duckdb.connect(sys.argv[1]); con.execute('SELECT 1'); "
            "print('holding', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def publish_world(published_dir: Path, *, persons: dict[str, dict], run_id: str = "run0001",
                  model_version: str = "cart_intent-test", serve_from: Path | None = None) -> str:
    """A snapshot with the tables `cdp serve` reads. persons: person_id -> {anon, user, consent
    (channel -> status), cart: (cart_id, value, probability, group) | None, offer: (offer, channel,
    holdout) | None}. serve_from: a warehouse whose saved cart model and cart features the
    publish step's serve_* tables are taken from (publish.snapshot.serve_tables)."""
    con = duckdb.connect()

    def table(name, cols: dict[str, pa.Array]):
        con.register(f"_{name}", pa.table(cols))
        con.execute(f"CREATE TABLE {name} AS SELECT *, TIMESTAMP '2026-11-22' AS as_of FROM _{name}")

    pids = sorted(persons)
    s = lambda xs: pa.array(xs, pa.string())  # noqa: E731
    ids = [(p, kind, persons[p][kind]) for p in pids for kind in ("anon", "user") if persons[p].get(kind)]
    table("identity_graph", {"source": s(["web"] * len(ids)),
                             "entity": s(["anonymous_id" if k == "anon" else "user_id" for _, k, _ in ids]),
                             "source_record_id": s([v for _, _, v in ids]), "person_id": s([p for p, _, _ in ids])})
    table("customers", {"person_id": s(pids), "first_name": s([f"Name{i}" for i in range(len(pids))])})
    table("customer_traits", {"person_id": s(pids), "order_count": pa.array([3] * len(pids), pa.int64())})
    table("segment_membership", {"segment": s(["vip"] * len(pids)), "person_id": s(pids)})
    consent = [(p, c, st) for p in pids for c, st in (persons[p].get("consent") or {}).items()]
    table("consent", {"person_id": s([c[0] for c in consent]), "channel": s([c[1] for c in consent]),
                      "status": s([c[2] for c in consent])})
    carts = [(p, *persons[p]["cart"]) for p in pids if persons[p].get("cart")]
    table("cart_intent", {"person_id": s([c[0] for c in carts]), "cart_id": s([c[1] for c in carts]),
                          "cart_value": pa.array([float(c[2]) for c in carts], pa.float64()),
                          "purchase_probability": pa.array([float(c[3]) for c in carts], pa.float64()),
                          "intent_group": s([c[4] for c in carts]),
                          "expected_return_hours": pa.array([24.0] * len(carts), pa.float64()),
                          "model_version": s([model_version] * len(carts))})
    offers = [(p, *persons[p]["offer"]) for p in pids if persons[p].get("offer")]
    table("next_best_offer", {"person_id": s([o[0] for o in offers]), "offer": s([o[1] for o in offers]),
                              "channel": s([o[2] for o in offers]),
                              "expected_value": pa.array([1.0] * len(offers), pa.float64()),
                              "reason_codes": s(["open_cart"] * len(offers)),
                              "holdout": pa.array([bool(o[3]) for o in offers], pa.bool_()),
                              "experiment": s(["nbo"] * len(offers)), "arm": s(["treatment"] * len(offers))})
    table("recommendations", {"person_id": s(pids), "rank": pa.array([1] * len(pids), pa.int64()),
                              "sku": s(["SKU-1"] * len(pids)), "score": pa.array([0.5] * len(pids), pa.float64()),
                              "reason": s(["als"] * len(pids))})
    names = ["identity_graph", "customers", "customer_traits", "segment_membership", "consent", "cart_intent",
             "next_best_offer", "recommendations"]
    extra = {}
    if serve_from is not None:  # the warehouse's tables, copied here as the publish step finds them
        con.execute(f"ATTACH '{serve_from}' AS wh (READ_ONLY)")
        present = {tuple(r) for r in con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                                  "WHERE database_name = 'wh'").fetchall()}
        for schema, table in (("scoring", "saved_models"), ("intermediate", "int_cart_features"),
                              ("intermediate", "int_carts"), ("intermediate", "int_person_history")):
            if table == "int_person_history" and (schema, table) not in present:
                continue
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"CREATE TABLE {schema}.{table} AS SELECT * FROM wh.{schema}.{table}")
        con.execute("DETACH wh")
        extra = serve_tables(con)
    publish(con, {n: f"main.{n}" for n in names}, published_dir, run_id, gate={"passed": True}, serve=extra)
    con.close()
    return run_id


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1 that refuses a bad signature (401) and records events."""

    def __init__(self, secret: str = HOOK_SECRET):
        self.events: list[dict] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                ts = self.headers.get(TIMESTAMP_HEADER) or ""
                if self.headers.get(SIGNATURE_HEADER) != sign(secret, ts, body):
                    receiver.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.events.extend({**e, "received": time.time()} for e in json.loads(body)["events"])
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
