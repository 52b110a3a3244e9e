"""``cdp identity plan``: what a change to the identity config would do, before it is applied.

The proposed settings are resolved into a scratch schema (``identity_plan``) with the
*current run's trained model* (so only the config change differs, not a retrained model),
without recording a run or id history; its clusters are then compared with the current
``identity.graph``:

- ``merges``: proposed persons that gather records of 2+ current persons;
- ``splits``: current persons whose records land in 2+ proposed persons;
- ``records_moved``: records whose proposed person is not the one the current person
  keeps (the proposed cluster holding most of that person's records);
- examples of each (person ids only, never personal data).

The scratch schema is dropped afterwards; nothing in ``identity`` changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from core.config import load_config
from core.settings.identity import IdentitySettings, settings_of
from core.warehouse import open_warehouse
from core.yamlfile import YamlFileError, load_yaml
from identity.db import value
from identity.pipeline import resolve

PLAN_SCHEMA = "identity_plan"


def current_model(con: duckdb.DuckDBPyConnection) -> str | None:
    rows = con.sql("SELECT model_path FROM identity.runs WHERE model_path IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchall()
    return rows[0][0] if rows and Path(rows[0][0]).is_file() else None


def plan(config, con: duckdb.DuckDBPyConnection, proposed: IdentitySettings | dict,
         examples: int = 10) -> dict:
    """Compare the current identity graph with what ``proposed`` settings would give."""

    proposed = proposed if isinstance(proposed, IdentitySettings) else IdentitySettings.model_validate(proposed)
    if not value(con, "SELECT count(*) FROM information_schema.tables WHERE table_schema='identity' AND table_name='graph'"):
        return {"error": "no identity graph yet: run the identity stage first (`cdp run`)"}
    model = current_model(con)
    con.execute(f"DROP SCHEMA IF EXISTS {PLAN_SCHEMA} CASCADE")
    try:
        con.execute(f"CREATE SCHEMA {PLAN_SCHEMA}")
        # the plan inherits ids from the current graph's history, like a real run would
        con.execute(f"CREATE TABLE {PLAN_SCHEMA}.id_history AS SELECT * FROM identity.id_history")
        con.execute(f"CREATE TABLE {PLAN_SCHEMA}.runs AS SELECT * FROM identity.runs")
        result = resolve(config, con, run_id="plan", settings=proposed, schema=PLAN_SCHEMA,
                         model=Path(model) if model else None, write_history=False)
        out = diff(con, "identity", PLAN_SCHEMA, examples)
        out["proposed"] = {"persons": result.persons, "largest_cluster": result.largest_cluster,
                           "held_clusters": result.held_clusters, "refused_by_reason": result.refused_by_reason}
        out["current"] = _current_summary(con)
        out["model_reused"] = model
        out["settings_changed"] = _changed(settings_of(config), proposed)
        return out
    finally:
        con.execute(f"DROP SCHEMA IF EXISTS {PLAN_SCHEMA} CASCADE")


def diff(con: duckdb.DuckDBPyConnection, current: str, proposed: str, examples: int = 10) -> dict:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_plan_j AS
        SELECT c.record_key, c.person_id AS cur, p.person_id AS new
        FROM {current}.graph c FULL JOIN {proposed}.graph p USING (record_key)""")
    merges = con.sql("""SELECT new, list(DISTINCT cur ORDER BY cur) FROM id_plan_j WHERE new IS NOT NULL AND cur IS NOT NULL
                        GROUP BY new HAVING count(DISTINCT cur) > 1 ORDER BY new""").fetchall()
    splits = con.sql("""SELECT cur, list(DISTINCT new ORDER BY new) FROM id_plan_j WHERE new IS NOT NULL AND cur IS NOT NULL
                        GROUP BY cur HAVING count(DISTINCT new) > 1 ORDER BY cur""").fetchall()
    moved = con.sql("""
        WITH k AS (SELECT cur, new, count(*) n FROM id_plan_j WHERE cur IS NOT NULL AND new IS NOT NULL GROUP BY ALL),
        keep AS (SELECT cur, arg_max(new, n) AS new FROM k GROUP BY cur)
        SELECT count(*) FROM id_plan_j j JOIN keep USING (cur) WHERE j.new IS NOT NULL AND j.new <> keep.new""").fetchall()[0][0]
    ids_changed = con.sql("""SELECT count(DISTINCT cur) FROM id_plan_j WHERE cur IS NOT NULL AND cur NOT IN
                             (SELECT new FROM id_plan_j WHERE new IS NOT NULL)""").fetchall()[0][0]
    con.execute("DROP TABLE IF EXISTS id_plan_j")
    return {
        "merges": len(merges), "splits": len(splits), "records_moved": int(moved),
        "current_ids_that_would_disappear": int(ids_changed),
        "merge_examples": [{"proposed_person_id": n, "current_person_ids": c} for n, c in merges[:examples]],
        "split_examples": [{"current_person_id": c, "proposed_person_ids": n} for c, n in splits[:examples]],
    }


def _current_summary(con) -> dict:
    r = con.sql("SELECT count(DISTINCT person_id), count(*) FROM identity.graph").fetchall()[0]
    return {"persons": int(r[0]), "records": int(r[1])}


def _changed(old: IdentitySettings, new: IdentitySettings) -> dict:
    a, b = old.model_dump(), new.model_dump()
    out = {}

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out[path] = {"current": x, "proposed": y}

    walk(a, b, "")
    return out


def plan_from_files(config_path: str | None, proposed_path: str) -> dict:
    """For the CLI: ``cdp identity plan --config cdp.yaml --proposed new.yaml`` (the proposed file
    is either a whole cdp.yaml or just an ``identity:`` mapping)."""
    config = load_config(config_path)
    try:
        data = load_yaml(proposed_path) or {}
    except YamlFileError as e:
        raise ValueError(str(e)) from None
    proposed = data.get("identity", data) if isinstance(data, dict) else {}
    with open_warehouse(config.warehouse_path) as con:
        return json.loads(json.dumps(plan(config, con, proposed), default=str))
