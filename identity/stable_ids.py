"""Stable person ids that survive reruns, new data, merges and splits.

- A new cluster's id comes from its content: ``P`` + 12 hex of md5(its smallest record_key)
  (salted on the rare collision), so a full rebuild from the same data gives the same ids.
- On later runs ids are inherited by record overlap with the previous run
  (``identity.id_history``): each old id is *kept* by the new cluster holding most of its
  records (ties: the smaller cluster id).
  - merge: a cluster keeping several old ids keeps the one with most records (ties: the
    smaller id), the others are recorded ``merged_into`` it;
  - split: the largest part keeps the id; every other part gets a new id recorded
    ``split_from`` it;
  - an old id with no records left is ``erased``.
- ``identity.id_history`` is append-only: a row per record whenever its person_id is new or
  different (what each record's id was in each run is the latest row at or before that run).
"""

from __future__ import annotations

import hashlib

import duckdb


def ensure_tables(con: duckdb.DuckDBPyConnection, schema: str = "identity") -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {schema}.runs (
        run_id VARCHAR PRIMARY KEY, seq BIGINT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, as_of TIMESTAMPTZ,
        records BIGINT, persons BIGINT, model_path VARCHAR, metrics JSON)""")
    # (zstd for the near-unique keys: cheaper to write and smaller than the default, see pipeline.ZSTD_COLUMNS)
    con.execute(f"""CREATE TABLE IF NOT EXISTS {schema}.id_history (
        run_id VARCHAR, run_seq BIGINT, record_key VARCHAR USING COMPRESSION zstd,
        person_id VARCHAR USING COMPRESSION zstd)""")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {schema}.changes (
        run_id VARCHAR, person_id VARCHAR, change VARCHAR, other_person_id VARCHAR, records BIGINT,
        changed_at TIMESTAMPTZ)""")


def content_id(record_key: str, salt: int = 0) -> str:
    raw = record_key if not salt else f"{record_key}#{salt}"
    return "P" + hashlib.md5(raw.encode()).hexdigest()[:12].upper()


def assign_ids(con: duckdb.DuckDBPyConnection, run_id: str, run_seq: int, schema: str = "identity",
               clusters: str = "id_clusters", write: bool = True, records: str | None = None) -> dict[str, int]:
    """Map ``clusters(rid, cluster_id)`` to person ids: temp table ``id_person(cluster_id, person_id)``
    and temp table ``id_run_changes``; with ``write``, appends to id_history and changes.
    ``records``: the records table (default ``<schema>.records``)."""
    ensure_tables(con, schema)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_prev AS
        SELECT record_key, arg_max(person_id, run_seq) AS person_id FROM {schema}.id_history
        WHERE run_seq < {run_seq} GROUP BY record_key""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_cur AS
        SELECT r.record_key, c.cluster_id FROM {clusters} c JOIN {records or schema + '.records'} r USING (rid)""")
    # overlap of new clusters with old ids; each old id kept by its biggest overlap
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_overlap AS
        SELECT c.cluster_id, p.person_id, count(*) AS n FROM id_cur c JOIN id_prev p USING (record_key) GROUP BY ALL""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_keeper AS
        SELECT person_id, cluster_id, n FROM id_overlap
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY n DESC, cluster_id) = 1""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_survivor AS
        SELECT cluster_id, person_id FROM id_keeper
        QUALIFY row_number() OVER (PARTITION BY cluster_id ORDER BY n DESC, person_id) = 1""")
    # clusters that keep nothing: new ids from content, in SQL; the rare id already taken (by an
    # earlier run, a survivor or a cluster whose first record sorts earlier) is salted in Python
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_fresh AS
        WITH f AS (SELECT cluster_id, min(record_key) AS first_key FROM id_cur
                   WHERE cluster_id NOT IN (SELECT cluster_id FROM id_survivor) GROUP BY cluster_id),
        split AS (SELECT cluster_id, first(person_id ORDER BY n DESC, person_id) AS split_from FROM id_overlap GROUP BY cluster_id)
        SELECT f.cluster_id, f.first_key, 'P' || upper(left(md5(f.first_key), 12)) AS person_id, s.split_from
        FROM f LEFT JOIN split s USING (cluster_id)""")
    clashes = con.execute(f"""
        SELECT cluster_id, first_key FROM (
            SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY first_key) AS k FROM id_fresh)
        WHERE k > 1 OR person_id IN (SELECT person_id FROM {schema}.id_history)
              OR person_id IN (SELECT person_id FROM id_survivor)
        ORDER BY first_key""").fetchall()
    if clashes:
        clash_ids = [c for c, _ in clashes]
        used = {r[0] for r in con.execute(f"""
            SELECT person_id FROM {schema}.id_history UNION SELECT person_id FROM id_survivor
            UNION SELECT person_id FROM id_fresh WHERE cluster_id NOT IN (SELECT unnest(?::BIGINT[]))""",
            [clash_ids]).fetchall()}
        salted = []
        for _, first_key in clashes:
            salt = 0
            pid = content_id(first_key)
            while pid in used:
                salt += 1
                pid = content_id(first_key, salt)
            used.add(pid)
            salted.append(pid)
        con.execute("""UPDATE id_fresh SET person_id = s.pid
                       FROM (SELECT unnest(?::BIGINT[]) AS cluster_id, unnest(?::VARCHAR[]) AS pid) s
                       WHERE id_fresh.cluster_id = s.cluster_id""", [clash_ids, salted])
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_person AS
        SELECT cluster_id, person_id FROM id_survivor UNION ALL SELECT cluster_id, person_id FROM id_fresh""")
    sizes = "(SELECT cluster_id, count(*) AS n FROM id_cur GROUP BY cluster_id)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_run_changes AS
        SELECT f.person_id, CASE WHEN f.split_from IS NULL THEN 'new' ELSE 'split_from' END AS change,
               f.split_from AS other_person_id, s.n AS records
        FROM id_fresh f JOIN {sizes} s USING (cluster_id)
        UNION ALL
        SELECT k.person_id, 'merged_into', sv.person_id, k.n
        FROM id_keeper k JOIN id_survivor sv USING (cluster_id) WHERE k.person_id <> sv.person_id
        UNION ALL
        SELECT p.person_id, 'erased', NULL, count(*) FROM id_prev p
        WHERE p.person_id NOT IN (SELECT person_id FROM id_keeper) GROUP BY p.person_id""")
    counts = dict(con.sql("SELECT change, count(*) FROM id_run_changes GROUP BY ALL").fetchall())
    if write:
        write_history(con, run_id, run_seq, schema)
    for t in ("id_overlap", "id_keeper", "id_survivor", "id_fresh"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return {k: int(v) for k, v in counts.items()}


def write_history(con: duckdb.DuckDBPyConnection, run_id: str, run_seq: int, schema: str = "identity",
                  changed_at=None) -> None:
    """Append the run's changes, and a history row for every record whose person_id is new or
    different (reads the temp tables ``assign_ids`` left: id_cur, id_person, id_prev, id_run_changes).
    ``changed_at``: the run's as_of (a backtest's changes are stamped with its as_of, not the wall
    clock); now when not given."""
    con.execute(f"""INSERT INTO {schema}.changes
                    SELECT '{run_id}', person_id, change, other_person_id, records, coalesce(?::TIMESTAMPTZ, now())
                    FROM id_run_changes""", [changed_at])
    con.execute(f"""
        INSERT INTO {schema}.id_history
        SELECT '{run_id}', {run_seq}, c.record_key, p.person_id
        FROM id_cur c JOIN id_person p USING (cluster_id) LEFT JOIN id_prev o USING (record_key)
        WHERE o.person_id IS DISTINCT FROM p.person_id""")
