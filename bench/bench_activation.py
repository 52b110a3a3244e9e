"""Activation: send 100,000 profile changes through a Klaviyo sync to the local Klaviyo-shaped
server, and compare with that server's own capacity measured in the same run (a raw client
posting the same import jobs, pre-serialised, with no diffing, state or logging).

    python -m bench.bench_activation [--profiles N]

The server runs in this process (a thread), as in the tests; both measurements share that
handicap, so the ratio is what the sync logic costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import duckdb
import requests

from activation.local_servers import LocalKlaviyo
from bench.common import OUT
from core.config import config_from_dict
from publish.snapshot import publish

PROFILES = 100_000
API_KEY_ENV = "BENCH_KLAVIYO_KEY"


def _publish_snapshot(root: Path, n: int) -> None:
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE customers AS SELECT 'P' || lpad(i::VARCHAR, 7, '0') AS person_id,
        'First' || i AS first_name, 'Last' || i AS last_name, 'person' || i || '@example.com' AS email,
        '+4477' || lpad(i::VARCHAR, 8, '0') AS phone, DATE '2026-11-22' AS as_of FROM range({n}) t(i)""")
    con.execute("""CREATE TABLE customer_traits AS SELECT person_id,
        ['new', 'active', 'lapsing'][1 + (hash(person_id) % 3)::INT] AS lifecycle_stage,
        (hash(person_id) % 20)::INT AS order_count, as_of FROM customers""")
    con.execute("CREATE TABLE segment_membership AS SELECT 'everyone' AS segment, person_id, as_of FROM customers")
    con.execute("""CREATE TABLE consent AS SELECT person_id, 'email_marketing' AS channel, 'granted' AS status,
        as_of AS since, 'bench' AS source, as_of FROM customers""")
    con.execute("""CREATE TABLE identity_changes AS SELECT 'r' AS run_id, person_id, 'new' AS change,
        NULL::VARCHAR AS other_person_id, as_of AS changed_at, as_of FROM customers LIMIT 0""")
    names = ["customers", "customer_traits", "segment_membership", "consent", "identity_changes"]
    publish(con, {t: f"main.{t}" for t in names}, root / "published", "bench", gate={"passed": True})
    con.close()


def _sync_config(root: Path, url: str):
    return config_from_dict({"paths": {"published": "published"}, "syncs": [{
        "name": "bench_klaviyo", "source": {"segment": "everyone"},
        "destination": {"type": "klaviyo", "base_url": url, "api_key_env": API_KEY_ENV, "list_id": "LIST1",
                        "job_poll_interval_s": 0.0},
        "fields": {"first_name": "first_name", "last_name": "last_name", "lifecycle_stage": "lifecycle_stage",
                   "order_count": "order_count"},
        "mode": "mirror", "consent": {"channel": "email_marketing"},
    }]}, root)


def _raw_capacity(n: int) -> dict:
    """Same endpoint, same job sizes, bodies built before the clock starts: POST the job, GET its status."""
    profiles = [json.dumps({"type": "profile", "attributes": {
        "email": f"person{i}@example.com", "first_name": f"First{i}", "last_name": f"Last{i}",
        "properties": {"lifecycle_stage": "active", "order_count": i % 20}}}, separators=(",", ":")) for i in range(n)]
    bodies = [('{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":[%s]}},'
               '"relationships":{"lists":{"data":[{"type":"list","id":"LIST1"}]}}}}'
               % ",".join(profiles[i:i + 10_000])).encode() for i in range(0, n, 10_000)]
    headers = {"Authorization": "Klaviyo-API-Key pk_bench", "revision": "2024-10-15",
               "content-type": "application/vnd.api+json"}
    with LocalKlaviyo(api_key="pk_bench") as server, requests.Session() as s:
        t0 = time.perf_counter()
        reqs = 0
        for body in bodies:
            r = s.post(f"{server.url}/api/profile-bulk-import-jobs/", data=body, headers=headers)
            r.raise_for_status()
            s.get(f"{server.url}/api/profile-bulk-import-jobs/{r.json()['data']['id']}/", headers=headers).raise_for_status()
            reqs += 2
        secs = time.perf_counter() - t0
        assert sum(server.deliveries.values()) == n
    return {"seconds": secs, "requests": reqs}


def main(customers: int = PROFILES) -> dict:
    from activation.sync import run_sync

    n = min(customers, PROFILES)
    root = OUT / "activation"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    _publish_snapshot(root, n)
    publish_s = time.perf_counter() - t0

    raw = _raw_capacity(n)

    os.environ[API_KEY_ENV] = "pk_bench"
    with LocalKlaviyo(api_key="pk_bench") as server:
        cfg = _sync_config(root, server.url)
        report = run_sync(cfg, "bench_klaviyo")
        assert report.ok and report.sent == n, report
        assert len(server.deliveries) == n and set(server.deliveries.values()) == {1}  # each exactly once
        again = run_sync(cfg, "bench_klaviyo")
        assert again.requests == 0 and again.sent == 0

    sync_rows_s = n / report.seconds
    raw_rows_s = n / raw["seconds"]
    return {
        "profiles": n,
        "snapshot_publish_s": round(publish_s, 1),
        "sync_s": report.seconds,
        "sync_rows_per_s": round(sync_rows_s),
        "sync_requests": report.requests,
        "sync_requests_per_s": round(report.requests / report.seconds, 1),
        "server_capacity_s": round(raw["seconds"], 2),
        "server_capacity_rows_per_s": round(raw_rows_s),
        "server_capacity_requests_per_s": round(raw["requests"] / raw["seconds"], 1),
        "sync_vs_capacity": round(sync_rows_s / raw_rows_s, 2),
        "noop_rerun_s": again.seconds,
        "noop_rerun_requests": again.requests,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profiles", type=int, default=PROFILES)
    for k, v in main(ap.parse_args().profiles).items():
        print(f"{k:<32} {v}")
