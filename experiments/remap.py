"""Assignments follow identity: when identity merges or splits persons, each current person keeps
one arm (the rule below), read from the published `marts.identity_changes` through the warehouse.

`experiments.exposures` is the log of what the hash decided: one row per experiment and person
id at its first exposure, appended and never rewritten (the SRM check counts it).
`experiments.assignments` holds each CURRENT person's arm; this module keeps it in step with
identity, applying every identity run exactly once (`experiments.identity_runs`), in order, and
before the run's new exposures (which are of the ids identity has just made):

- split (Y split_from X): Y's records were exposed as part of X, so Y inherits X's arm and
  exposure time (when X was exposed before the split; a Y already exposed as itself keeps its own).
- merge (A merged_into B): the surviving person keeps the arm of the EARLIEST exposure among
  the ids merged (ties: the survivor's own), its time, and both ids' exposures count for it.
  When the merged ids had different arms the person is flagged `arm_conflict` and stays in the
  analysis in that earliest arm (intent to treat), counted per arm in the results.
  Why not drop them: whether a merged person has a conflict depends on the arms' shares (with
  a 10/90 holdout, 18% of two-id persons conflict and only 1 in 82 of the rest are holdout), so
  leaving conflicts out would make merged persons - who are not typical customers - scarcer in
  the small arm than its share: a bias in any direction. The earliest id's arm came from the
  hash alone, so every arm keeps its share of them; the cost is a lift diluted toward zero by
  the conflicted few, never a false one.
- erased: the person's assignment goes (their exposures leave the log through `cdp forget`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from core.warehouse import fetch_all, table_exists

SCHEMA = "experiments"
CHANGES = "marts.identity_changes"
REMAPPED = ("merged_into", "split_from", "erased")


def pending_runs(con: duckdb.DuckDBPyConnection, as_of: datetime) -> list[str]:
    """Identity runs visible at as_of and not applied yet, oldest first."""
    if not table_exists(con, "marts", "identity_changes"):
        return []
    return [r[0] for r in fetch_all(con, f"""
        SELECT run_id FROM {CHANGES} WHERE changed_at <= CAST(? AS TIMESTAMP)
          AND run_id NOT IN (SELECT run_id FROM {SCHEMA}.identity_runs)
        GROUP BY run_id ORDER BY min(changed_at), run_id""", [as_of])]


def apply_identity_changes(con: duckdb.DuckDBPyConnection, as_of: datetime) -> dict[str, int]:
    """Bring experiments.assignments in step with the identity runs not applied yet. Returns
    the assignment rows split off, merged away and erased."""
    counts = {"split": 0, "merged": 0, "erased": 0, "runs": 0}
    for run_id in pending_runs(con, as_of):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE remap_changes AS
                        SELECT person_id, change, other_person_id, changed_at FROM {CHANGES}
                        WHERE run_id = ? AND change IN {REMAPPED}""", [run_id])
        # Splits first: they copy the old person as it was before this run (it may merge below).
        counts["split"] += _count(con, f"""
            INSERT INTO {SCHEMA}.assignments
            SELECT a.experiment, c.person_id, a.arm, a.holdout, a.exposed_at, a.exposed_ids, a.arm_conflict
            FROM remap_changes c JOIN {SCHEMA}.assignments a ON a.person_id = c.other_person_id
            WHERE c.change = 'split_from' AND a.exposed_at <= c.changed_at
              AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.assignments b
                              WHERE b.experiment = a.experiment AND b.person_id = c.person_id)""")
        # Merges: each survivor with the ids merged into it, per experiment, becomes one row.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE remap_merged AS
            WITH m AS (SELECT person_id, other_person_id AS survivor FROM remap_changes WHERE change = 'merged_into'),
            involved AS (
                SELECT a.*, coalesce(m.survivor, a.person_id) AS survivor, m.survivor IS NULL AS is_survivor
                FROM {SCHEMA}.assignments a LEFT JOIN m USING (person_id)
                WHERE a.person_id IN (SELECT person_id FROM m) OR a.person_id IN (SELECT survivor FROM m))
            SELECT experiment, survivor AS person_id,
                   arg_min(arm, (exposed_at, NOT is_survivor, person_id)) AS arm,
                   arg_min(holdout, (exposed_at, NOT is_survivor, person_id)) AS holdout,
                   min(exposed_at) AS exposed_at, CAST(sum(exposed_ids) AS INTEGER) AS exposed_ids,
                   bool_or(arm_conflict) OR count(DISTINCT arm) > 1 AS arm_conflict,
                   list(person_id) AS replaced
            FROM involved GROUP BY experiment, survivor""")
        counts["merged"] += _count(con, f"""
            DELETE FROM {SCHEMA}.assignments WHERE EXISTS (
                SELECT 1 FROM (SELECT experiment, unnest(replaced) AS person_id FROM remap_merged) r
                WHERE r.experiment = assignments.experiment AND r.person_id = assignments.person_id)""")
        con.execute(f"""INSERT INTO {SCHEMA}.assignments
                        SELECT experiment, person_id, arm, holdout, exposed_at, exposed_ids, arm_conflict
                        FROM remap_merged""")
        counts["merged"] -= _count(con, "SELECT count(*) FROM remap_merged")
        counts["erased"] += _count(con, f"""
            DELETE FROM {SCHEMA}.assignments
            WHERE person_id IN (SELECT person_id FROM remap_changes WHERE change = 'erased')""")
        con.execute(f"INSERT INTO {SCHEMA}.identity_runs VALUES (?, CAST(? AS TIMESTAMP))", [run_id, as_of])
        counts["runs"] += 1
    for t in ("remap_changes", "remap_merged"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return counts


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    """Rows a DML statement changed (DuckDB returns the count as its result), or a count(*)."""
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0
