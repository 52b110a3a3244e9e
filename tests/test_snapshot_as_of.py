"""One snapshot, one as_of (#26): publish refuses tables built at different as_of times and
records the one they share. Every whole `cdp run` in the suite publishes through this check, so a
run whose dbt invocations or stages took different "now"s would fail there too."""

import duckdb
import pytest

from core.snapshots import CURRENT, SNAPSHOTS, PublishError, read_manifest
from publish.snapshot import publish

AS_OF = "2025-06-30 23:59:59"


def _warehouse(path):
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts")
    con.execute(f"CREATE TABLE marts.customers AS SELECT 'p' || i AS person_id, TIMESTAMP '{AS_OF}' AS as_of FROM range(3) t(i)")
    con.execute(f"CREATE TABLE marts.churn_scores AS SELECT 'p1' AS person_id, 0.2 AS p_churn, TIMESTAMP '{AS_OF}' AS as_of")
    # empty, and without an as_of column: neither has a time to disagree with
    con.execute("CREATE TABLE marts.cart_intent (person_id VARCHAR, as_of TIMESTAMP)")
    con.execute("CREATE TABLE marts.segment_membership_history AS SELECT 'p1' AS person_id, TIMESTAMP '2025-01-01' AS entered_at")
    return con


TABLES = {name: f"marts.{name}" for name in ("customers", "churn_scores", "cart_intent", "segment_membership_history")}


def test_a_snapshot_carries_one_as_of_and_a_table_from_another_time_is_refused(tmp_path):
    con = _warehouse(tmp_path / "warehouse.duckdb")
    published = tmp_path / "published"

    snap = publish(con, TABLES, published, run_id="run1", gate={"passed": True})
    assert snap.as_of == AS_OF
    assert read_manifest(published)["history"][0]["as_of"] == AS_OF
    with duckdb.connect(str(published / CURRENT), read_only=True) as out:
        found = {t: out.execute(f"SELECT DISTINCT strftime(as_of, '%Y-%m-%d %H:%M:%S') FROM {t}").fetchall()
                 for t in ("customers", "churn_scores")}
    assert found == {"customers": [(AS_OF,)], "churn_scores": [(AS_OF,)]}

    # churn scores left from the day before (a model not rebuilt in this run): not one moment
    con.execute("UPDATE marts.churn_scores SET as_of = TIMESTAMP '2025-06-29 23:59:59'")
    with pytest.raises(PublishError) as err:
        publish(con, TABLES, published, run_id="run2", gate={"passed": True})
    message = str(err.value)
    assert "2025-06-29 23:59:59: churn_scores" in message and f"{AS_OF}: customers" in message
    assert "nothing was published" in message
    assert read_manifest(published)["current"] == "run1"
    assert not (published / SNAPSHOTS / "run2.duckdb").exists()

    # two as_of values inside one table are refused too
    con.execute(f"UPDATE marts.churn_scores SET as_of = TIMESTAMP '{AS_OF}'")
    con.execute("INSERT INTO marts.customers VALUES ('p9', TIMESTAMP '2025-07-01 00:00:00')")
    with pytest.raises(PublishError, match="2025-07-01 00:00:00: customers"):
        publish(con, TABLES, published, run_id="run3", gate={"passed": True})
    con.close()
