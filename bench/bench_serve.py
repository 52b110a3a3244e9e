"""`cdp serve`: collector throughput with durability on, /v1/decide latency at a fixed request
rate, and event-to-decision freshness, against a published snapshot of N customers.

    python -m bench.bench_serve [--customers N] [--seconds S] [--rate R] [--nice -15] [--decide-repeats K]
                                [--workers N] [--worker-socket shared|reuseport] [--server uvicorn|granian]

``--nice -15`` (root only) runs the server and the load generator at raised priority: on this
shared machine, a stand-in for a dedicated one (the other sessions' work waits instead of ours).
Each phase reports the machine's load average when it started, the CPU seconds the server, the
clients and every other process on the machine used during it, and the server's CPU per event
or per decision (what a core buys, whatever the wall clock says).

The server is `cdp serve` in its own process; the load comes from this process's worker
processes on 127.0.0.1 (plain keep-alive HTTP clients, pre-serialised bodies). Reported with
the CPU seconds the server and the clients used, since both share this machine's cores.
Targets (issue 22): >= 5,000 events/s; /v1/decide p99 <= 20 ms at >= 500 requests/s.
Cart intent is scored live: one customer in ten has a batch cart scored by a cart-intent model
fitted here (scoring.cart.train_and_score on synthetic carts) and published in the snapshot
by the publish step's serve_* tables, which the server loads at start (serve/cart_model.py;
it never opens the warehouse); `decide_reasons` samples what the decisions were computed from.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

from bench.bench_serve_cart_model import _carts
from bench.common import OUT
from core.settings.scoring import CartIntentSettings
from publish.snapshot import publish, serve_tables
from scoring.cart import train_and_score
from scoring.model_store import save

WRITE_KEY, READ_KEY = "bench_write_key", "bench_read_key"
PORT = 18787
W = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(), "Content-Type": "application/json"}
R = {"Authorization": f"Bearer {READ_KEY}", "Content-Type": "application/json"}


def _cart_model(con, n_carts: int) -> dict:
    """The cart-intent model the server scores live with: fitted by scoring.cart.train_and_score
    on synthetic int_cart_features rows, saved with the score rows of the snapshot's carts in
    `con` where the publish step finds them (publish.snapshot.serve_tables); the snapshot's
    cart_intent table is its predictions (same model_version)."""
    rng = np.random.default_rng(5)
    cutoff = pd.Timestamp("2026-11-22")
    frames = [_carts(rng, 3_000, cutoff - pd.Timedelta(days=7 * w), "history", w * 10_000_000) for w in range(1, 13)]
    persons = [r[0] for r in con.execute("SELECT person_id FROM cart_intent ORDER BY person_id").fetchall()]
    score = _carts(rng, len(persons), cutoff, "score", 0)
    score["person_id"], score["cart_id"] = persons, ["c-" + p for p in persons]
    features = pd.concat([*frames, score], ignore_index=True)
    gaps = rng.uniform(1, 150, 500)
    t0 = time.process_time()
    result = train_and_score(features, gaps, CartIntentSettings())
    fit_cpu = time.process_time() - t0
    con.execute("CREATE SCHEMA IF NOT EXISTS intermediate")
    con.register("f", features)
    con.execute("CREATE TABLE intermediate.int_cart_features AS SELECT * FROM f")
    con.register("g", pd.DataFrame({"return_gap_hours": gaps}))
    con.execute("CREATE TABLE intermediate.int_carts AS SELECT return_gap_hours FROM g")
    save(con, result.model)
    con.register("pred", result.predictions)
    con.execute("""CREATE OR REPLACE TABLE cart_intent AS SELECT person_id, cart_id, cart_value, purchase_probability,
        intent_group, expected_return_hours, model_version, TIMESTAMP '2026-11-22' AS as_of FROM pred""")
    return {"algorithm": result.model.algorithm, "training_rows": result.model.training_rows,
            "fit_cpu_s": round(fit_cpu, 1), "scored_carts": len(persons)}


def _snapshot(published: Path, n: int, cart_model: bool = True) -> dict:
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE customers AS SELECT 'P' || lpad(i::VARCHAR, 7, '0') AS person_id,
        'First' || i AS first_name, TIMESTAMP '2026-11-22' AS as_of FROM range({n}) t(i)""")
    con.execute("""CREATE TABLE identity_graph AS SELECT 'web' AS source, 'anonymous_id' AS entity,
        'anon-' || substr(person_id, 2) AS source_record_id, person_id, as_of FROM customers""")
    con.execute("""CREATE TABLE consent AS SELECT person_id, 'email_marketing' AS channel,
        CASE WHEN hash(person_id) % 5 = 0 THEN 'denied' ELSE 'granted' END AS status, as_of FROM customers""")
    con.execute("""CREATE TABLE cart_intent AS SELECT person_id, 'c-' || person_id AS cart_id,
        (hash(person_id) % 300)::DOUBLE AS cart_value, (hash(person_id) % 1000) / 1000.0 AS purchase_probability,
        CASE WHEN (hash(person_id) % 1000) / 1000.0 >= 0.3 THEN 'likely'
             WHEN (hash(person_id) % 1000) / 1000.0 < 0.05 THEN 'unlikely' ELSE 'on_the_fence' END AS intent_group,
        24.0::DOUBLE AS expected_return_hours, 'bench' AS model_version, as_of FROM customers WHERE hash(person_id) % 10 = 0""")
    con.execute("""CREATE TABLE next_best_offer AS SELECT person_id,
        CASE WHEN hash(person_id) % 10 = 0 THEN 'holdout' ELSE 'cross_sell' END AS offer,
        CASE WHEN hash(person_id) % 10 = 0 THEN 'none' ELSE 'email' END AS channel, 1.0 AS expected_value,
        'cross_sell_favourite_category' AS reason_codes, hash(person_id) % 10 = 0 AS holdout, 'nbo' AS experiment,
        'treatment' AS arm, as_of FROM customers""")
    model = _cart_model(con, n // 10) if cart_model else {}
    names = ["customers", "identity_graph", "consent", "cart_intent", "next_best_offer"]
    publish(con, {t: f"main.{t}" for t in names}, published, "bench0001", gate={"passed": True},
            serve=serve_tables(con))
    con.close()
    return model


def _cpu_s(pid: int) -> float:
    return sum(_user_sys_s(pid))


def _tree(pid: int) -> list[int]:
    """The process and its descendants (the supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for t in Path(f"/proc/{p}/task").iterdir()
                     for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def _user_sys_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process and its descendants (a dead worker's are lost
    unless it was waited for; none dies in a bench run)."""
    user = sys_ = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        sys_ += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, sys_


def _rss_mb(pid: int) -> int:
    return round(int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024)


def _each_worker(workers: int) -> list[dict]:
    """/health of every worker: new connections until each has answered one."""
    found: dict[int, dict] = {}
    held = []
    for _ in range(500):
        conn = http.client.HTTPConnection("127.0.0.1", PORT)
        conn.request("GET", "/health")
        h = json.loads(conn.getresponse().read())
        found.setdefault(h.get("worker", 0), h)
        held.append(conn)  # open, so the next connection may land elsewhere
        if len(found) >= workers:
            break
    for c in held:
        c.close()
    return [found[w] for w in sorted(found)]


def _raise_priority(nice: int) -> None:
    """Nice this process and its children. With the kernel's autogroups (sched_autogroup_enabled)
    a process's nice only ranks it within its session's group, and the groups of other sessions
    share the cores equally: so start a session of our own (a new autogroup holding only this
    bench, its server and its clients) and nice that group too."""
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (all cores, /proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall, load average at the start, and CPU seconds of the server, the clients and the rest
    of the machine over one phase."""

    def __init__(self, server_pid: int):
        self.pid = server_pid
        self.load = os.getloadavg()[0]
        self.busy0, self.server0, self.self0 = _machine_busy_s(), _user_sys_s(server_pid), time.process_time()
        self.wall0 = time.perf_counter()

    def done(self, client_cpu: float) -> dict:
        wall = time.perf_counter() - self.wall0
        user, sys_ = (a - b for a, b in zip(_user_sys_s(self.pid), self.server0))
        server = user + sys_
        clients = client_cpu + (time.process_time() - self.self0)
        others = max(0.0, _machine_busy_s() - self.busy0 - server - clients)
        return {"wall_s": round(wall, 1), "load_avg_1m_at_start": round(self.load, 1),
                "server_cpu_s": round(server, 2), "server_sys_cpu_s": round(sys_, 2), "client_cpu_s": round(clients, 1),
                "other_processes_cpu_s": round(others, 1), "machine_cores": os.cpu_count()}


def _collector_worker(seconds: float, batch: int, connections: int, wid: int, out: mp.Queue) -> None:
    """``connections`` keep-alive connections (threads), each posting back to back: batches of
    ``batch`` events to /v1/batch (as the SDKs flush), or with ``batch`` 0 one event per
    /v1/track call. Bodies come from a template (the client's own JSON encoding is not measured)."""
    import threading

    counts = [0] * connections
    t_end = time.time() + seconds
    one = ('{"type":"track","event":"Product Viewed","anonymousId":"anon-%07d","messageId":"w%d-%d-%d-%d-'
           + str(batch) + '",'
           '"properties":{"sku":"SKU-%d","price":9.5},"context":{"page":{"path":"/p"}},'
           '"timestamp":"2026-11-25T10:00:00Z"}')
    path, per_request = ("/v1/batch", batch) if batch else ("/v1/track", 1)

    def loop(c: int) -> None:
        conn, n = http.client.HTTPConnection("127.0.0.1", PORT), 0
        while time.time() < t_end:
            events = [one % ((n * per_request + i) % 100000, wid, c, n, i, i % 50) for i in range(per_request)]
            body = ('{"batch":[' + ",".join(events) + "]}" if batch else events[0]).encode()
            n += 1
            conn.request("POST", path, body=body, headers=W)
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                counts[c] += per_request

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((sum(counts), time.process_time()))


def _decide_worker(rate: float, seconds: float, n_customers: int, wid: int, out: mp.Queue) -> None:
    """Open loop: requests are due at fixed times; latency counts from when one was due, so
    a server that falls behind is charged for the wait (no coordinated omission)."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    lat, start, i = [], time.perf_counter() + 0.2, 0
    while True:
        due = start + i / rate
        if due - start > seconds:
            break
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        pid = f"anon-{(i * 7919 + wid * 104729) % n_customers:07d}"
        conn.request("POST", "/v1/decide", body=json.dumps({"anonymousId": pid}).encode(), headers=R)
        r = conn.getresponse()
        r.read()
        lat.append((time.perf_counter() - due) * 1000 if r.status == 200 else float("inf"))
        i += 1
    out.put((lat, time.process_time()))


def _run_workers(target, args_of, n: int) -> tuple[list, float]:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=target, args=(*args_of(w), w, q)) for w in range(n)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return [r[0] for r in results], sum(r[1] for r in results)


def _post(path: str, body: dict, headers: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    conn.request("POST" if body is not None else "GET", path, body=json.dumps(body).encode() if body is not None else None,
                 headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data or b"{}")


def main(customers: int = 100_000, seconds: float = 10.0, rate: float = 500.0, nice: int | None = None,
         decide_repeats: int = 1, workers: int = 1, worker_socket: str = "reuseport", server: str = "uvicorn",
         published_from: Path | None = None) -> dict:
    if nice is not None:  # the server and the client processes inherit it
        _raise_priority(nice)
    root = OUT / "serve"
    shutil.rmtree(root, ignore_errors=True)
    (root / "landing").mkdir(parents=True)
    cfg = {"version": 1, "project": "bench",
           "sources": [{"name": "web", "kind": "web", "entities": {"events": {"path": "web/events_*.jsonl"}}}],
           "serve": {"write_keys_env": ["BENCH_WRITE_KEY"], "read_keys_env": ["BENCH_READ_KEY"], "port": PORT,
                     "rate_limit_per_second": 1e6, "rate_limit_burst": 1_000_000, "workers": workers,
                     "worker_socket": worker_socket}}
    (root / "cdp.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    if published_from:  # a snapshot an earlier run built (bench data: copied, never modified)
        shutil.copytree(published_from, root / "published")
        cart_model = {"copied_from_earlier_run": True}
    else:
        cart_model = _snapshot(root / "published", customers)
    snapshot_s = time.perf_counter() - t0
    env = {**os.environ, "BENCH_WRITE_KEY": WRITE_KEY, "BENCH_READ_KEY": READ_KEY}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cdp.cli", "serve", "--config", str(root / "cdp.yaml")]
    if server != "uvicorn":
        cmd = [sys.executable, "-m", "bench.serve_granian", str(root / "cdp.yaml")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            try:
                if _post("/health", None, {})[0] == 200:
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode()[-3000:]) from None
                time.sleep(0.1)
        _each_worker(workers)  # every worker up (each loads the snapshot)
        startup_s = time.perf_counter() - t0
        startup_cpu_s = _cpu_s(proc.pid)
        rss_mb = {str(p): _rss_mb(p) for p in _tree(proc.pid)}

        # 1. collector, durability on: batches of 100 (the SDKs' default flush size), then one
        # event per /v1/track call; 2 client processes x 8 keep-alive connections each
        collector = {}
        for name, batch in (("batch_100", 100), ("track_single", 0)):
            h0 = {k: sum(x[k] for x in _each_worker(workers)) for k in ("log_commits", "log_commit_seconds")}
            phase = Phase(proc.pid)
            sent, client_cpu = _run_workers(_collector_worker, lambda w, b=batch: (seconds, b, 8), 2)
            load_wall = time.perf_counter() - phase.wall0
            # the phase ends when the live state has applied every acknowledged event (in every
            # worker: each applies every worker's events): its CPU is part of an event's cost
            events = sum(sent)
            while True:
                hs = _each_worker(workers)
                written = sum(h["events_accepted"] for h in hs)  # (a re-delivered messageId is not)
                if min(h["events_applied_live"] for h in hs) >= written or time.perf_counter() - phase.wall0 > 120:
                    break
                time.sleep(0.05)
            h = {k: sum(x[k] for x in hs) for k in ("log_commits", "log_commit_seconds")}
            res = phase.done(client_cpu)
            collector[name] = {"events_per_s": round(events / load_wall), "events": events,
                               "live_state_caught_up_after_s": round(res["wall_s"] - load_wall, 2),
                               "log_group_commits": h["log_commits"] - h0["log_commits"],
                               "events_per_group_commit": round(events / max(1, h["log_commits"] - h0["log_commits"]), 1),
                               "ms_per_group_commit": round((h["log_commit_seconds"] - h0["log_commit_seconds"]) * 1000
                                                            / max(1, h["log_commits"] - h0["log_commits"]), 2),
                               "requests": events // (batch or 1),
                               "server_cpu_us_per_event": round(res["server_cpu_s"] / max(1, events) * 1e6, 1),
                               "events_per_server_cpu_s": round(events / max(1e-9, res["server_cpu_s"])), **res}

        # 2. freshness: an add-to-cart, then the decision that sees it
        fresh = []
        for i in range(20):
            anon = f"anon-{i * 4999 % customers:07d}"
            t = time.perf_counter()
            _post("/v1/track", {"type": "track", "event": "Product Added", "anonymousId": anon,
                                "messageId": f"fresh-{i}", "properties": {"sku": "S", "price": 10, "cart_id": f"fc-{i}"}}, W)
            while True:
                _, d = _post("/v1/decide", {"anonymousId": anon}, R)
                if (d.get("cart_intent") or {}).get("cart_id") == f"fc-{i}":
                    break
            fresh.append((time.perf_counter() - t) * 1000)
        fresh.sort()

        # what the decisions were computed from (the live model, once loaded)
        reasons: dict[str, int] = {}
        for i in range(0, customers, max(1, customers // 200)):
            intent = _post("/v1/decide", {"anonymousId": f"anon-{i:07d}"}, R)[1].get("cart_intent") or {}
            key = f"{intent.get('reason')}/{intent.get('features')}" if intent else "no_cart"
            reasons[key] = reasons.get(key, 0) + 1

        # 3. /v1/decide at a fixed rate from 2 client processes, `decide_repeats` phases in a row
        # (on a shared machine one phase's p99 is one draw of the other sessions' load)
        decide_phases = []
        for _ in range(decide_repeats):
            phase = Phase(proc.pid)
            lats, client_cpu = _run_workers(_decide_worker, lambda w: (rate / 2, seconds, customers), 2)
            res = phase.done(client_cpu)
            lat = sorted(x for part in lats for x in part)
            ok = [x for x in lat if x != float("inf")]
            pct = lambda q, ok=ok: round(ok[min(len(ok) - 1, int(q * len(ok)))], 2) if ok else None  # noqa: E731
            decide_phases.append({
                "target_rate": rate, "achieved_rate": round(len(lat) / seconds), "requests": len(lat),
                "errors": len(lat) - len(ok), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                "max_ms": round(ok[-1], 2) if ok else None,
                "server_cpu_ms_per_decision": round(res["server_cpu_s"] / max(1, len(lat)) * 1000, 3), **res})
        decide_res = decide_phases[0] if decide_repeats == 1 else {
            "p99_ms_each_phase": [d["p99_ms"] for d in decide_phases], "phases": decide_phases}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    landed = sum(1 for p in (root / "landing" / "web").glob("events_serve-*.jsonl"))
    lines = sum(sum(1 for _ in open(p, "rb")) for p in (root / "landing" / "web").glob("events_serve-*.jsonl"))
    return {
        "customers": customers, "cart_model": cart_model, "decide_reasons": reasons,
        "snapshot_build_s": round(snapshot_s, 1), "server_startup_s": round(startup_s, 1),
        "server_startup_cpu_s": round(startup_cpu_s, 1),
        "server": server, "workers": workers, "worker_socket": worker_socket if workers > 1 else None,
        "server_rss_mb_after_start_per_process": rss_mb, "cpu_cores": os.cpu_count(),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "autogroup": Path("/proc/self/autogroup").read_text().strip() if Path("/proc/self/autogroup").exists() else None, "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
        "collector": collector, "landed_files": landed, "landed_events": lines,
        "freshness_ms": {"p50": round(fresh[len(fresh) // 2], 1), "max": round(fresh[-1], 1)},
        "decide": decide_res,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--nice", type=int, default=None,
                    help="niceness for the server and the load generator (negative needs root), e.g. -15")
    ap.add_argument("--decide-repeats", type=int, default=1, help="run the /v1/decide phase this many times")
    ap.add_argument("--workers", type=int, default=1, help="cdp serve worker processes (serve.workers)")
    ap.add_argument("--worker-socket", choices=("reuseport", "shared"), default="reuseport")
    ap.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                    help="HTTP server for the app (granian: bench/serve_granian.py, one worker)")
    ap.add_argument("--published-from", type=Path, default=None,
                    help="copy this published/ folder of an earlier run (same --customers) instead of building one")
    a = ap.parse_args()
    print(json.dumps(main(a.customers, a.seconds, a.rate, a.nice, a.decide_repeats, a.workers, a.worker_socket,
                          a.server, a.published_from), indent=2))
