"""Experiment assignments follow identity's merges, splits and erasures (experiments/remap.py),
read from the published identity_changes through the warehouse."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from core.settings.experiments import Experiment
from experiments.assignment import assign
from experiments.pipeline import ensure_tables, run_experiments

EXP = Experiment(name="merge_test", window_days=7, start="2025-01-01", planned_days=28,
                 arms=[{"name": "control", "share": 0.5, "holdout": True}, {"name": "treatment", "share": 0.5}])
DAY1, DAY3, DAY5, DAY15 = (datetime(2025, 1, d, 23, 59) for d in (1, 3, 5, 15))


def ids_in(arm: str, prefix: str, n: int) -> list[str]:
    """n person ids the experiment's hash puts in `arm`."""
    candidates = [f"{prefix}{i:04d}" for i in range(200)]
    return [p for p, a in zip(candidates, assign(candidates, EXP)) if a == arm][:n]


def warehouse(path, persons: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts; CREATE SCHEMA intermediate")
    con.execute("CREATE TABLE marts.customers AS SELECT unnest(?::VARCHAR[]) AS person_id", [persons])
    con.execute("CREATE TABLE intermediate.int_segment_membership (segment VARCHAR, person_id VARCHAR)")
    con.execute("CREATE TABLE intermediate.int_orders (order_key VARCHAR, person_id VARCHAR, ordered_at TIMESTAMP, "
                "order_total DOUBLE)")
    con.execute("CREATE TABLE marts.identity_changes (run_id VARCHAR, person_id VARCHAR, change VARCHAR, "
                "other_person_id VARCHAR, changed_at TIMESTAMP, as_of TIMESTAMP)")
    return con


def assignments(con) -> dict[str, tuple]:
    rows = con.execute("SELECT person_id, arm, exposed_at, exposed_ids, arm_conflict FROM experiments.assignments "
                       "WHERE experiment = 'merge_test'").fetchall()
    assert len(rows) == len({r[0] for r in rows}), "one assignment per person"
    return {r[0]: r[1:] for r in rows}


def identity_run(con, run_id: str, at: datetime, changes: list[tuple[str, str, str | None]], orders_to: dict[str, str]):
    """What an identity run and the dbt rebuild leave behind: the published changes, the
    customers, and the orders under their current person."""
    con.executemany("INSERT INTO marts.identity_changes VALUES (?, ?, ?, ?, ?, ?)",
                    [[run_id, p, c, o, at, at] for p, c, o in changes])
    for p, c, _ in changes:
        if c in ("merged_into", "erased"):
            con.execute("DELETE FROM marts.customers WHERE person_id = ?", [p])
        elif c == "split_from":
            con.execute("INSERT INTO marts.customers VALUES (?)", [p])
    for old, new in orders_to.items():
        con.execute("UPDATE intermediate.int_orders SET person_id = ? WHERE person_id = ?", [new, old])


def test_merges_splits_and_erasures_remap_assignments(tmp_path):
    control, treated = ids_in("control", "P", 4), ids_in("treatment", "P", 5)
    c_keep, x_split, e_erased, c_other = control
    t_late, t_early, t_a, t_b, t_tie = treated
    late_control = ids_in("control", "N", 1)[0]
    day1 = [p for p in control + treated if p != t_late]
    con = warehouse(tmp_path / "w.duckdb", day1)
    run_experiments(con, [EXP], DAY1)
    # two more people arrive on day 3: a treated id, and a control id that will survive a merge
    con.executemany("INSERT INTO marts.customers VALUES (?)", [[t_late], [late_control]])
    run_experiments(con, [EXP], DAY3)
    # the treated late id buys on day 4 (after the control person's exposure, inside its window)
    con.execute("INSERT INTO intermediate.int_orders VALUES ('O1', ?, TIMESTAMP '2025-01-04 10:00', 50)", [t_late])
    before = assignments(con)
    assert before[t_late][0] == "treatment" and before[c_keep][0] == "control"

    identity_run(con, "r2", datetime(2025, 1, 5, 9), [
        (t_late, "merged_into", c_keep),          # a treated id (day 3) into a control person (day 1)
        (t_early, "merged_into", late_control),   # a treated id (day 1) into a control person (day 3)
        (t_a, "merged_into", t_b),                # same arm: no conflict
        (t_tie, "merged_into", c_other),          # both exposed on day 1: the survivor's arm
        ("Y0001", "split_from", x_split),         # split off an exposed person
        (e_erased, "erased", None),
    ], orders_to={t_late: c_keep})
    results = run_experiments(con, [EXP], DAY5)
    after = assignments(con)

    # the surviving person keeps the earliest exposure's arm; both ids' exposures count for it
    assert t_late not in after and after[c_keep] == ("control", DAY1, 2, True)
    assert t_early not in after and after[late_control] == ("treatment", DAY1, 2, True)
    assert t_a not in after and after[t_b] == ("treatment", DAY1, 2, False)
    assert t_tie not in after and after[c_other] == ("control", DAY1, 2, True)
    # a person split off inherits the arm and exposure time; nobody is hashed again
    assert after["Y0001"] == (before[x_split][0], DAY1, 1, False)
    assert e_erased not in after
    assert set(after) == {c_keep, x_split, c_other, late_control, t_b, "Y0001"}
    # the log of what the hash decided is untouched (the SRM check counts it)
    log = dict(con.execute("SELECT person_id, arm FROM experiments.exposures").fetchall())
    assert log == {p: before[p][0] for p in before} and "Y0001" not in log
    assert dict(zip(results["arm"], results["exposed"])) == {"control": 5, "treatment": 5}

    # each identity run is applied once: a re-run, and the next day, change nothing
    run_experiments(con, [EXP], DAY5)
    assert assignments(con) == after
    # conflicts are analysed in their arm and counted; the merged id's order counts for the survivor
    final = run_experiments(con, [EXP], DAY15).set_index("arm")
    assert final.loc["control", "arm_conflicts"] == 2 and final.loc["treatment", "arm_conflicts"] == 1
    assert final["n"].sum() == len(after)
    assert final.loc["control", "outcome_mean"] * final.loc["control", "n"] == pytest.approx(1.0)
    assert final.loc["treatment", "outcome_mean"] == 0


def test_split_after_an_exposure_and_unseen_ids(tmp_path):
    # Y split off X before X was exposed: Y is its own person and gets its own hash
    x = ids_in("treatment", "P", 1)[0]
    con = warehouse(tmp_path / "w.duckdb", [x])
    identity_run(con, "r1", datetime(2024, 12, 30), [("Y0002", "split_from", x)], {})
    run_experiments(con, [EXP], DAY1)
    a = assignments(con)
    assert a["Y0002"][0] == assign(["Y0002"], EXP)[0] and a["Y0002"][2] == 1
    assert con.execute("SELECT count(*) FROM experiments.identity_runs").fetchall()[0][0] == 1


def test_a_warehouse_from_before_remapping_keeps_its_exposures(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA experiments")
    con.execute("""CREATE TABLE experiments.assignments (experiment VARCHAR NOT NULL, person_id VARCHAR NOT NULL,
                   arm VARCHAR NOT NULL, holdout BOOLEAN NOT NULL, exposed_at TIMESTAMP NOT NULL,
                   PRIMARY KEY (experiment, person_id))""")
    con.execute("INSERT INTO experiments.assignments VALUES ('e', 'P1', 'control', true, TIMESTAMP '2025-01-01')")
    ensure_tables(con)
    assert con.execute("SELECT person_id, arm FROM experiments.exposures").fetchall() == [("P1", "control")]
    assert con.execute("SELECT person_id, arm, exposed_ids, arm_conflict FROM experiments.assignments").fetchall() \
        == [("P1", "control", 1, False)]
    ensure_tables(con)  # idempotent
    assert con.execute("SELECT count(*) FROM experiments.assignments").fetchall()[0][0] == 1
