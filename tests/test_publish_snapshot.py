"""Published snapshots: atomic replacement, readers undisturbed, keep-N, rollback."""

import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from core.snapshots import CURRENT, PublishError, open_current, read_manifest
from publish.snapshot import publish, rollback


def _warehouse(tmp_path: Path, persons: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    con.execute(f"CREATE OR REPLACE TABLE marts.customers AS SELECT 'P' || i AS person_id, {persons} AS version FROM range({persons}) t(i)")
    return con


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_keep_n_and_rollback(tmp_path):
    pub = tmp_path / "published"
    for n in range(1, 5):
        con = _warehouse(tmp_path, persons=n * 10)
        publish(con, {"customers": "marts.customers"}, pub, run_id=f"r{n}", gate={"passed": True}, keep=3)
        con.close()
    m = read_manifest(pub)
    assert m["current"] == "r4"
    assert [h["run_id"] for h in m["history"]] == ["r4", "r3", "r2"]
    assert sorted(p.name for p in (pub / "snapshots").glob("*.duckdb")) == ["r2.duckdb", "r3.duckdb", "r4.duckdb"]
    with open_current(pub) as ro:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 40

    assert rollback(pub) == "r3"
    with open_current(pub) as ro:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 30
    assert rollback(pub, to_run="r2") == "r2"
    with open_current(pub) as ro:
        assert ro.execute("SELECT max(version) FROM customers").fetchall()[0][0] == 20
    with pytest.raises(PublishError, match="not among the kept snapshots"):
        rollback(pub, to_run="r1")
    with pytest.raises(PublishError, match="no earlier kept snapshot"):
        rollback(pub)


def test_current_file_is_untouched_until_the_switch(tmp_path):
    pub = tmp_path / "published"
    con = _warehouse(tmp_path, 5)
    publish(con, {"customers": "marts.customers"}, pub, run_id="a", gate={})
    before = _digest(pub / CURRENT)
    # A failed write (a source table that does not exist) must leave the current snapshot as it was.
    with pytest.raises(duckdb.Error):
        publish(con, {"customers": "marts.customers", "oops": "marts.missing"}, pub, run_id="b", gate={})
    assert _digest(pub / CURRENT) == before
    assert read_manifest(pub)["current"] == "a"
    assert [p.name for p in (pub / "snapshots").iterdir()] == ["a.duckdb"]  # no partial file left


READER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    seen = set()
    deadline = time.time() + float(sys.argv[2])
    print("ready", flush=True)
    while time.time() < deadline:
        # Each read must see one consistent snapshot: every row carries the same version,
        # and the row count matches that version.
        rows = con.execute("SELECT count(*), min(version), max(version) FROM customers").fetchall()[0]
        assert rows[1] == rows[2] == rows[0], rows
        seen.add(rows[0])
    print(sorted(seen), flush=True)
    """
)


def test_reader_keeps_one_consistent_snapshot_while_another_process_publishes(tmp_path):
    pub = tmp_path / "published"
    con = _warehouse(tmp_path, 100)
    publish(con, {"customers": "marts.customers"}, pub, run_id="v100", gate={})
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(pub / CURRENT), "4"], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline().strip() == "ready"
    for n in (200, 300, 400):
        con.execute(f"CREATE OR REPLACE TABLE marts.customers AS SELECT 'P' || i AS person_id, {n} AS version FROM range({n}) t(i)")
        publish(con, {"customers": "marts.customers"}, pub, run_id=f"v{n}", gate={})
        time.sleep(0.3)
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0, out
    # The reader opened before the publishes and kept reading its snapshot undisturbed.
    assert out.strip() == "[100]"
    with open_current(pub) as ro:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 400
