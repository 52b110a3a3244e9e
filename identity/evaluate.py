"""Evaluation of the identity graph against ground truth (the generator's
``<landing>/ground_truth/record_person.csv``: source, entity, record_id, person_id, identifiable).

Metrics over the records present in both the graph and the truth (by default only the
identifiable ones: a record with no usable identifier cannot be linked by anyone):

- pairwise precision / recall / F1 over record pairs placed together;
- B-cubed precision / recall / F1 (per record: share of its predicted cluster that is truly
  its person, and share of its person found in its cluster);
- over-merged clusters (holding records of 2+ true persons) and under-merged persons (spread
  over 2+ clusters);
- the same pairwise numbers without POS receipts (``excluding_transactions``): receipts are
  numerous and mostly trivially linked, so they flatter the overall figures;
- recall on *linkable* pairs (``pairwise_recall_linkable``): a true pair counts as linkable
  when its two records are joined, inside that person's own records, by a chain of records
  sharing an exact normalised value: an identifier (canonical email, E.164 phone, loyalty id
  of one source, login user id, subscriber id, a deterministic web/email/order link) or the
  full name (canonical first name + surname). A pair with no such chain has nothing in
  common that any resolver could use (e.g. a receipt whose only phone appears nowhere else,
  a web login that never sent a trait), so it is an upper bound, and labelled as such.
  ``pairwise_recall_linkable_by_identifiers`` is the same with identifiers only (no names).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from core.settings.identity import IdentitySettings
from core.warehouse import open_warehouse
from identity.db import table_exists


def truth_path(config) -> Path:
    return config.landing_dir / "ground_truth" / "record_person.csv"


def load_truth(con: duckdb.DuckDBPyConnection, path: Path, table: str = "id_truth") -> None:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT source || '|' || entity || '|' || record_id AS record_key, person_id AS true_id,
               CAST(identifiable AS BOOLEAN) AS identifiable, entity
        FROM read_csv('{str(path).replace("'", "''")}', header = true, all_varchar = true)""")


def pair_metrics(con: duckdb.DuckDBPyConnection, joined: str) -> dict:
    """``joined`` is a relation (record_key, pred, truth). Pairwise and B-cubed metrics."""
    r = con.sql(f"""
        WITH j AS ({joined}),
        cell AS (SELECT pred, truth, count(*) AS n FROM j GROUP BY ALL),
        pc AS (SELECT pred, sum(n) AS n FROM cell GROUP BY pred),
        tc AS (SELECT truth, sum(n) AS n FROM cell GROUP BY truth)
        SELECT
            (SELECT sum(n * (n - 1) / 2) FROM cell) AS tp,
            (SELECT sum(n * (n - 1) / 2) FROM pc) AS pred_pairs,
            (SELECT sum(n * (n - 1) / 2) FROM tc) AS true_pairs,
            (SELECT sum(c.n * c.n / p.n) FROM cell c JOIN pc p USING (pred)) AS b3p_sum,
            (SELECT sum(c.n * c.n / t.n) FROM cell c JOIN tc t USING (truth)) AS b3r_sum,
            (SELECT sum(n) FROM cell) AS records,
            (SELECT count(*) FROM (SELECT pred FROM cell GROUP BY pred HAVING count(*) > 1)) AS over_merged,
            (SELECT count(*) FROM (SELECT truth FROM cell GROUP BY truth HAVING count(*) > 1)) AS under_merged,
            (SELECT count(*) FROM pc) AS clusters, (SELECT count(*) FROM tc) AS persons
    """).fetchall()[0]
    tp, pp, tpairs, b3p, b3r, n, over, under, clusters, persons = [float(x or 0) for x in r]
    precision = tp / pp if pp else 1.0
    recall = tp / tpairs if tpairs else 1.0
    bp = b3p / n if n else 1.0
    br = b3r / n if n else 1.0
    return {
        "records": int(n), "predicted_clusters": int(clusters), "true_persons": int(persons),
        "pairwise_precision": round(precision, 6), "pairwise_recall": round(recall, 6),
        "pairwise_f1": round(2 * precision * recall / (precision + recall), 6) if precision + recall else 0.0,
        "true_positive_pairs": int(tp), "predicted_pairs": int(pp), "true_pairs": int(tpairs),
        "bcubed_precision": round(bp, 6), "bcubed_recall": round(br, 6),
        "bcubed_f1": round(2 * bp * br / (bp + br), 6) if bp + br else 0.0,
        "over_merged_clusters": int(over), "under_merged_persons": int(under),
    }


def evaluate(con: duckdb.DuckDBPyConnection, truth_csv: Path, schema: str = "identity",
             identifiable_only: bool = True) -> dict:
    load_truth(con, truth_csv)
    only = "AND t.identifiable" if identifiable_only else ""
    base = f"""SELECT g.record_key, g.person_id AS pred, t.true_id AS truth, t.entity
               FROM {schema}.graph g JOIN id_truth t USING (record_key) WHERE TRUE {only}"""
    out = pair_metrics(con, base)
    out["excluding_transactions"] = pair_metrics(con, f"SELECT * FROM ({base}) WHERE entity <> 'transactions'")
    missing = con.sql(f"""SELECT count(*) FROM id_truth t WHERE t.identifiable
                         AND t.record_key NOT IN (SELECT record_key FROM {schema}.graph)""").fetchall()[0][0]
    out["truth_records_not_in_graph"] = int(missing)
    out.update(linkable_recall(con, schema, only))
    out["unique_id_conflicts"] = unique_id_conflicts(con, schema)
    return out


def linkable_recall(con: duckdb.DuckDBPyConnection, schema: str = "identity", only: str = "AND t.identifiable") -> dict:
    """Recall on the true pairs that shared data could link at all (see the module docstring):
    ``..._by_identifiers`` counts chains of identifiers only, ``pairwise_recall_linkable`` also
    exact full names (a weaker ceiling: a full name alone is shared by different people too)."""
    import numpy as np
    import pyarrow as pa
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rec = f"{schema}.records"
    n = con.execute(f"SELECT coalesce(max(rid), 0) + 1 FROM {rec}").fetchall()[0][0]
    out: dict = {}
    for suffix, names in (("_by_identifiers", False), ("", True)):
        name_values = f"""UNION ALL SELECT rid, 'n' || first_name_canon || ' ' || last_name FROM {rec}
                          WHERE first_name_canon IS NOT NULL AND last_name IS NOT NULL""" if names else ""
        # exact shared values, each as a star (every record to the smallest record holding the value)
        edges = con.sql(f"""
            WITH v AS (
                SELECT rid, 'e' || email_canon AS v FROM {rec} WHERE email_canon IS NOT NULL
                UNION ALL SELECT rid, 'p' || phone FROM {rec} WHERE phone IS NOT NULL
                UNION ALL SELECT rid, 'l' || source || '|' || loyalty_id FROM {rec} WHERE loyalty_id IS NOT NULL
                UNION ALL SELECT rid, 'u' || source || '|' || user_id FROM {rec} WHERE user_id IS NOT NULL
                UNION ALL SELECT rid, 's' || source || '|' || subscriber_id FROM {rec} WHERE subscriber_id IS NOT NULL
                {name_values}),
            e AS (SELECT rid AS a, min(rid) OVER (PARTITION BY v) AS b FROM v
                  UNION ALL SELECT rid_l, rid_r FROM {schema}.edges WHERE method LIKE 'deterministic:%')
            SELECT e.a, e.b FROM e JOIN {rec} ra ON ra.rid = e.a JOIN {rec} rb ON rb.rid = e.b
            JOIN id_truth ta ON ta.record_key = ra.record_key JOIN id_truth tb ON tb.record_key = rb.record_key
            WHERE e.a <> e.b AND ta.true_id = tb.true_id""").to_arrow_table()
        a = edges.column("a").to_numpy().astype(np.int64)
        b = edges.column("b").to_numpy().astype(np.int64)
        comp = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)[1]
        con.register("_id_linkable", pa.table({"rid": np.arange(n, dtype=np.int64), "comp": comp}))
        r = con.execute(f"""
            WITH j AS (SELECT g.person_id AS pred, c.comp FROM {schema}.graph g JOIN id_truth t USING (record_key)
                       JOIN _id_linkable c USING (rid) WHERE TRUE {only}),
            lc AS (SELECT comp, count(*) AS n FROM j GROUP BY comp),
            hit AS (SELECT pred, comp, count(*) AS n FROM j GROUP BY ALL)
            SELECT (SELECT sum(n * (n - 1) / 2) FROM lc), (SELECT sum(n * (n - 1) / 2) FROM hit)""").fetchall()[0]
        con.unregister("_id_linkable")
        linkable, found = float(r[0] or 0), float(r[1] or 0)
        out[f"linkable_true_pairs{suffix}"] = int(linkable)
        out[f"pairwise_recall_linkable{suffix}"] = round(found / linkable, 6) if linkable else 1.0
    return out


def unique_id_conflicts(con: duckdb.DuckDBPyConnection, schema: str = "identity", settings=None) -> int:
    """Persons holding two different values (of one source) of an identifier the config
    declares ``unique`` (by default loyalty ids and login user ids); none when none is."""

    settings = settings or IdentitySettings()
    # (not a conflict: a person a user merged by hand, or login ids an alias call joined)
    asserted = {"loyalty_id": "('deterministic:manual_merge')",
                "user_id": "('deterministic:manual_merge', 'deterministic:alias')"}
    parts = [f"""SELECT g.person_id FROM {schema}.records r JOIN {schema}.graph g USING (rid)
                 WHERE r.{col} IS NOT NULL AND r.entity <> 'transactions'
                   AND g.person_id NOT IN (SELECT g2.person_id FROM {schema}.edges e JOIN {schema}.graph g2 ON g2.rid = e.rid_l
                                           WHERE e.decision = 'accepted' AND e.method IN {asserted[name]})
                 GROUP BY g.person_id, r.source HAVING count(DISTINCT r.{col}) > 1"""
             for name, col in (("loyalty_id", "loyalty_id"), ("user_id", "user_id")) if settings.rule(name).unique]
    if not parts:
        return 0
    return int(con.sql(f"SELECT count(DISTINCT person_id) FROM ({' UNION ALL '.join(parts)})").fetchall()[0][0])


def evaluate_config(config, con: duckdb.DuckDBPyConnection | None = None) -> dict:
    """What ``cdp evaluate identity --json`` prints."""

    path = truth_path(config)
    if not path.is_file():
        return {"error": f"no ground truth at {path} (only generated data has one)"}

    def run(c):
        if not table_exists(c, "identity", "graph"):
            return {"error": "no identity graph yet: run the identity stage first"}
        return evaluate(c, path)

    if con is not None:
        return run(con)
    with open_warehouse(config.warehouse_path, read_only=True) as c:
        return run(c)
