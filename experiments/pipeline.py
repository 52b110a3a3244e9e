"""The experiments stage against the warehouse (schema `experiments`):

  exposures    appended: one row per experiment and person id at its first exposure (a run at or
               after the start that finds them in the population), with the arm the hash gave;
               never rewritten. The SRM check counts it.
  assignments  each current person's arm: the exposures, kept in step with identity's merges and
               splits (experiments/remap.py: earliest exposure's arm; conflicts flagged). What
               scoring, syncs and the analysis read (published as marts.experiment_assignments).
  identity_runs  the identity runs already applied to assignments (each is applied once).
  looks        appended: one row per arm each day the results are computed (alpha spending needs
               every look that was taken, and each arm's z then).
  results      replaced: one row per experiment and arm (published as marts.experiment_results).

Runs after dbt's core models (customers, int_orders, int_segment_membership, identity_changes)
and before scoring, which reads the offers experiment's assignments for next-best-offer's holdout.
"""

from __future__ import annotations

import logging
from datetime import datetime

import duckdb
import pandas as pd

from core.settings.experiments import Experiment
from core.warehouse import fetch_all, table_exists, transaction
from experiments.analysis import Look, analyse
from experiments.assignment import assign
from experiments.remap import apply_identity_changes

log = logging.getLogger("tessera.experiments")
SCHEMA = "experiments"

RESULT_COLUMNS = {
    "experiment": "VARCHAR", "arm": "VARCHAR", "is_control": "BOOLEAN", "holdout": "BOOLEAN", "metric": "VARCHAR",
    "window_days": "INTEGER", "exposed": "BIGINT", "n": "BIGINT", "outcome_mean": "DOUBLE", "abs_lift": "DOUBLE",
    "abs_lift_low": "DOUBLE", "abs_lift_high": "DOUBLE", "rel_lift": "DOUBLE", "rel_lift_low": "DOUBLE",
    "rel_lift_high": "DOUBLE", "prob_beats_control": "DOUBLE", "z": "DOUBLE", "sequential_boundary": "DOUBLE",
    "sequential_significant": "BOOLEAN", "decision": "VARCHAR", "srm_p_value": "DOUBLE", "srm_flag": "BOOLEAN",
    "mde_absolute": "DOUBLE", "mde_relative": "DOUBLE", "spending_fraction": "DOUBLE", "alpha_spent": "DOUBLE",
    "looks": "INTEGER", "arm_conflicts": "BIGINT", "interval_method": "VARCHAR", "posterior_method": "VARCHAR", "as_of": "TIMESTAMP",
}


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Created empty when missing, so the dbt marts over them build before any experiment exists."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    if (table_exists(con, SCHEMA, "assignments") and not table_exists(con, SCHEMA, "exposures")
            and "arm_conflict" not in _columns(con, "assignments")):
        # A warehouse from before assignments followed identity: its assignments were the log.
        con.execute(f"ALTER TABLE {SCHEMA}.assignments RENAME TO exposures")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.exposures (
        experiment VARCHAR NOT NULL, person_id VARCHAR NOT NULL, arm VARCHAR NOT NULL, holdout BOOLEAN NOT NULL,
        exposed_at TIMESTAMP NOT NULL, PRIMARY KEY (experiment, person_id))""")
    # No primary key here: merges delete and re-insert a survivor's key in one transaction, which
    # a DuckDB index may refuse; remap.py keeps (experiment, person_id) unique (a test checks).
    created = not table_exists(con, SCHEMA, "assignments")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.assignments (
        experiment VARCHAR NOT NULL, person_id VARCHAR NOT NULL, arm VARCHAR NOT NULL, holdout BOOLEAN NOT NULL,
        exposed_at TIMESTAMP NOT NULL, exposed_ids INTEGER NOT NULL, arm_conflict BOOLEAN NOT NULL)""")
    if created:
        con.execute(f"INSERT INTO {SCHEMA}.assignments SELECT experiment, person_id, arm, holdout, exposed_at, 1, false "
                    f"FROM {SCHEMA}.exposures")
    con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.identity_runs (run_id VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.looks (
        experiment VARCHAR NOT NULL, looked_at TIMESTAMP NOT NULL, spending_fraction DOUBLE, information DOUBLE,
        arm VARCHAR NOT NULL, z DOUBLE)""")
    if table_exists(con, SCHEMA, "results") and _columns(con, "results") != list(RESULT_COLUMNS):
        con.execute(f"DROP TABLE {SCHEMA}.results")  # an older version's columns; replaced on every run anyway
    cols = ", ".join(f"{c} {t}" for c, t in RESULT_COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.results ({cols})")


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in fetch_all(con, "SELECT column_name FROM information_schema.columns "
                                         "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                                    [SCHEMA, table])]


def population(con: duckdb.DuckDBPyConnection, experiment: Experiment) -> list[str]:
    if experiment.population == "all":
        return [r[0] for r in fetch_all(con, "SELECT person_id FROM marts.customers")]
    if not table_exists(con, "intermediate", "int_segment_membership"):
        raise ValueError(f"experiments[{experiment.name}]: intermediate.int_segment_membership is missing; "
                         f"build the dbt core models first (`cdp run --only marts`)")
    return [r[0] for r in fetch_all(con, "SELECT DISTINCT person_id FROM intermediate.int_segment_membership "
                                         "WHERE segment = ?", [experiment.population])]


def expose(con: duckdb.DuckDBPyConnection, experiment: Experiment, as_of: datetime) -> int:
    """Expose the population's persons without an assignment (after identity's changes are
    applied, so a merged or split person is not exposed again): log and assign them."""
    if as_of.date() < experiment.start:
        return 0
    known = {r[0] for r in fetch_all(con, f"SELECT person_id FROM {SCHEMA}.assignments WHERE experiment = ?",
                                     [experiment.name])}
    new = sorted(set(population(con, experiment)) - known)
    if not new:
        return 0
    arms = assign(new, experiment)
    frame = pd.DataFrame({"experiment": experiment.name, "person_id": new, "arm": arms,
                          "holdout": [a in experiment.holdout_arms for a in arms], "exposed_at": as_of})
    con.register("new_exposures", frame)
    try:
        # ON CONFLICT: an id logged once keeps its first exposure (an erased id's log rows go with it).
        con.execute(f"INSERT INTO {SCHEMA}.exposures SELECT experiment, person_id, arm, holdout, "
                    f"CAST(exposed_at AS TIMESTAMP) FROM new_exposures ON CONFLICT DO NOTHING")
        con.execute(f"INSERT INTO {SCHEMA}.assignments SELECT experiment, person_id, arm, holdout, "
                    f"CAST(exposed_at AS TIMESTAMP), 1, false FROM new_exposures")
    finally:
        con.unregister("new_exposures")
    return len(new)


def outcomes(con: duckdb.DuckDBPyConnection, experiment: Experiment, as_of: datetime) -> pd.DataFrame:
    """arm, y per assigned current person whose outcome window has closed by as_of (an id that
    is no longer a customer, e.g. merged away by an identity run not visible yet, is left out
    rather than counted as someone who never bought)."""
    w = int(experiment.window_days)
    frame = con.execute(f"""
        WITH exposed AS (
            SELECT person_id, arm, exposed_at FROM {SCHEMA}.assignments
            WHERE experiment = ? AND exposed_at + INTERVAL {w} DAY <= CAST(? AS TIMESTAMP)
              AND person_id IN (SELECT person_id FROM marts.customers)),
        bought AS (
            SELECT e.person_id, count(o.order_key) AS orders, coalesce(sum(o.order_total), 0) AS revenue
            FROM exposed e LEFT JOIN intermediate.int_orders o
              ON o.person_id = e.person_id AND o.ordered_at > e.exposed_at
             AND o.ordered_at <= e.exposed_at + INTERVAL {w} DAY
            GROUP BY e.person_id)
        SELECT e.arm, b.orders, CAST(b.revenue AS DOUBLE) AS revenue
        FROM exposed e JOIN bought b USING (person_id)""", [experiment.name, as_of]).df()
    metric = experiment.metric
    if metric == "conversion":
        frame["y"] = (frame["orders"] > 0).astype(float)
    elif metric == "churn":
        frame["y"] = (frame["orders"] == 0).astype(float)
    elif metric == "revenue_per_person":
        frame["y"] = frame["revenue"]
    else:  # aov: among those who ordered
        frame = frame[frame["orders"] > 0].copy()
        frame["y"] = frame["revenue"] / frame["orders"]
    return frame[["arm", "y"]]


def _looks_before(con, experiment: Experiment, as_of: datetime) -> list[Look]:
    rows = fetch_all(con, f"""SELECT looked_at, any_value(spending_fraction), any_value(information),
                                     list(struct_pack(arm := arm, z := z)) FROM {SCHEMA}.looks
                              WHERE experiment = ? AND looked_at < CAST(? AS TIMESTAMP)
                              GROUP BY looked_at ORDER BY looked_at""", [experiment.name, as_of])
    return [Look(r[1], r[2], tuple((d["arm"], d["z"]) for d in r[3] if d["z"] is not None)) for r in rows]


def analyse_experiment(con: duckdb.DuckDBPyConnection, experiment: Experiment, as_of: datetime) -> list[dict]:
    # The SRM check tests the hash: the ids it assigned, before identity merged or split any.
    exposed = dict(fetch_all(con, f"SELECT arm, count(*) FROM {SCHEMA}.exposures WHERE experiment = ? "
                                  f"GROUP BY arm", [experiment.name]))
    conflicts = dict(fetch_all(con, f"SELECT arm, count(*) FROM {SCHEMA}.assignments WHERE experiment = ? "
                                    f"AND arm_conflict GROUP BY arm", [experiment.name]))
    frame = outcomes(con, experiment, as_of)
    # Alpha is spent by calendar time over the planned duration: fixed in advance, never the data.
    elapsed = (as_of.date() - experiment.start).days + 1
    this = Look(min(1.0, max(0.0, elapsed / experiment.planned_days)), float(len(frame)))
    earlier = _looks_before(con, experiment, as_of)
    # A re-run at the same as_of is the same look, not another one.
    already = fetch_all(con, f"SELECT 1 FROM {SCHEMA}.looks WHERE experiment = ? AND looked_at = CAST(? AS TIMESTAMP)",
                        [experiment.name, as_of])
    # A look with nobody analysed yet spends nothing: it cannot reject.
    looks = [lk for lk in earlier if lk.information > 0] + ([this] if this.information > 0 else [])
    rows = analyse(experiment, frame, exposed, looks, conflicts)
    if this.information > 0 and not already:
        con.executemany(f"INSERT INTO {SCHEMA}.looks VALUES (?, CAST(? AS TIMESTAMP), ?, ?, ?, ?)",
                        [[experiment.name, as_of, this.spending_fraction, this.information, r["arm"], r["z"]]
                         for r in rows])
    return [{**r, "as_of": as_of} for r in rows]


def run_experiments(con: duckdb.DuckDBPyConnection, experiments: list[Experiment], as_of: datetime,
                    progress=log.info) -> pd.DataFrame:
    as_of = as_of.replace(tzinfo=None)  # the warehouse keeps naive UTC
    ensure_tables(con)
    rows: list[dict] = []
    with transaction(con):
        remapped = apply_identity_changes(con, as_of)
        if remapped["split"] or remapped["merged"] or remapped["erased"]:
            progress(f"experiments: identity changes applied to assignments: {remapped['merged']:,} merged away, "
                     f"{remapped['split']:,} split off (inheriting the arm), {remapped['erased']:,} erased")
        for experiment in experiments:
            added = expose(con, experiment, as_of)
            if as_of.date() < experiment.start:
                progress(f"experiments: {experiment.name} starts {experiment.start}; nobody exposed yet")
                continue
            rows += analyse_experiment(con, experiment, as_of)
            progress(f"experiments: {experiment.name}: {added:,} newly exposed")
        results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        con.register("results_frame", results)
        try:
            con.execute(f"DELETE FROM {SCHEMA}.results")
            casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in RESULT_COLUMNS.items())
            con.execute(f"INSERT INTO {SCHEMA}.results SELECT {casts} FROM results_frame")
        finally:
            con.unregister("results_frame")
    return results
