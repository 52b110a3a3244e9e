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


CRASHING_PUBLISH = textwrap.dedent("""
    import os, sys
    import duckdb
    import publish.snapshot as snap

    pub, crash_at = sys.argv[1], sys.argv[2]
    from pathlib import Path
    pub = Path(pub)
    con = duckdb.connect(str(pub.parent / "w.duckdb"))
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    for n in (1, 2):
        con.execute(f"CREATE OR REPLACE TABLE marts.customers AS SELECT {n} AS version")
        snap.publish(con, {"customers": "marts.customers"}, pub, run_id=f"r{n}", gate={})
    real_switch = snap.switch_current

    def die_before(*a):
        os._exit(9)  # as kill -9: no cleanup, no finally

    def die_after(*a):
        real_switch(*a)
        os._exit(9)

    snap.switch_current = die_before if crash_at == "before_switch" else die_after
    con.execute("CREATE OR REPLACE TABLE marts.customers AS SELECT 3 AS version")
    snap.publish(con, {"customers": "marts.customers"}, pub, run_id="r3", gate={})
""")


@pytest.mark.parametrize("crash_at, live, rolled_back_to", [("before_switch", "r2", "r1"), ("after_switch", "r3", "r2")])
def test_a_crash_at_the_switch_leaves_manifest_and_current_in_agreement(tmp_path, crash_at, live, rolled_back_to):
    pub = tmp_path / "published"
    proc = subprocess.run([sys.executable, "-c", CRASHING_PUBLISH, str(pub), crash_at], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    with open_current(pub) as ro:
        shown = ro.execute("SELECT version FROM customers").fetchall()[0][0]
    assert f"r{shown}" == live
    assert read_manifest(pub)["current"] == live  # the manifest tells what readers see
    assert rollback(pub) == rolled_back_to  # "previous" is the run before the live one
    with open_current(pub) as ro:
        assert f"r{ro.execute('SELECT version FROM customers').fetchall()[0][0]}" == rolled_back_to


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/hostname')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "COPY customers TO '{tmp}/out.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE x AS SELECT 1",
])
def test_the_one_snapshot_reader_is_sealed(tmp_path, sql):
    # core.snapshots.open_snapshot is how `cdp query`, syncs, the report, the gate's drift
    # baseline and erasure's scan open a snapshot.
    pub = tmp_path / "published"
    con = _warehouse(tmp_path, 3)
    publish(con, {"customers": "marts.customers"}, pub, run_id="a", gate={})
    con.close()
    with open_current(pub) as ro:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 3
        with pytest.raises(duckdb.Error):
            ro.execute(sql.format(tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_two_readers_of_one_snapshot_in_one_process_are_both_sealed_and_in_utc(tmp_path):
    # DuckDB shares one database between connections to a file in a process, and with it the
    # locked configuration: the second reader must neither fail nor come unsealed.
    pub = tmp_path / "published"
    con = _warehouse(tmp_path, 3)
    publish(con, {"customers": "marts.customers"}, pub, run_id="a", gate={})
    con.close()
    with open_current(pub) as first, open_current(pub) as second:
        for ro in (first, second):
            assert ro.execute("SELECT current_setting('TimeZone')").fetchall()[0][0] == "UTC"
            with pytest.raises(duckdb.Error):
                ro.execute("SELECT * FROM read_text('/etc/hostname')")
