"""`kill -9` of `cdp serve` under load: after a restart and the next ingestion, every event it
acknowledged is loaded once, and nothing is loaded twice."""

from __future__ import annotations

import base64
import itertools
import threading
import time

import requests

from core.config import load_config
from tests.serve_world import WRITE_KEY, ingest_web, start_process, stop_process, write_project

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def _batch(ids: list[str]) -> dict:
    return {"batch": [{"type": "track", "event": "Product Viewed", "anonymousId": f"a{int(i.split('-')[1]) % 97}",
                       "messageId": i, "properties": {"sku": "S1"}, "timestamp": "2026-11-20T10:00:00Z"}
                      for i in ids]}


def test_kill_9_under_load_loses_no_acknowledged_event_and_duplicates_none(tmp_path):
    cfg_path = write_project(tmp_path / "proj", rotate_seconds=0.3)
    config = load_config(cfg_path)
    url = f"http://127.0.0.1:{config.serve.port}"
    counter = itertools.count()
    acked: set[str] = set()
    unacked: list[list[str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            ids = [f"m-{next(counter)}" for _ in range(40)]
            try:
                ok = session.post(url + "/v1/batch", json=_batch(ids), headers=AUTH, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                (acked.update(ids) if ok else unacked.append(ids))
            if not ok:
                return

    proc = start_process(cfg_path)
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # long enough for several rotations into landing files
    stop_process(proc, hard=True)  # kill -9, mid-request for the loaders
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) > 500 and unacked, "the load must be running when the server is killed"

    proc = start_process(cfg_path)
    try:
        first = ingest_web(config)  # a batch run while the collector runs again
        session = requests.Session()
        for ids in unacked:  # the SDKs retry what was not acknowledged...
            assert session.post(url + "/v1/batch", json=_batch(ids), headers=AUTH).status_code == 200
        resent = sorted(acked)[:200]  # ...and may re-send what was (an answer lost on the way)
        assert session.post(url + "/v1/batch", json=_batch(resent), headers=AUTH).status_code == 200
    finally:
        stop_process(proc)  # graceful: the open segment lands
    rows = ingest_web(config)
    loaded = [r[0] for r in rows]
    sent = acked | {i for ids in unacked for i in ids}
    assert len(first) > 0
    assert acked <= set(loaded), f"{len(acked - set(loaded))} acknowledged events lost"
    assert len(loaded) == len(set(loaded)), f"{len(loaded) - len(set(loaded))} events loaded twice"
    assert set(loaded) == sent
