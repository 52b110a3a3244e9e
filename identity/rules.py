"""Deterministic edges, in SQL.

Links between records that need no model:

- ``anonymous_id``: a web device and the account (userId) seen on the same event.
- ``alias``: a Segment ``alias`` call: the id the person had (``previousId``: a device's
  anonymousId or an earlier userId) and their ``userId``. (``group`` calls link nobody: people
  of one account are different people.)
- ``order_ref``: a web order (``order_completed``) and the POS receipt of the same order.
- ``link_tracking_id``: an email click's tracking id and the web page view that carries it
  (``tid=`` in the url) link the subscriber to that web device.
- ``loyalty_id`` / ``user_id`` / ``subscriber_id``: the same id within one source instance.
- ``email``: the same canonical email.
- ``phone``: the same E.164 number, and (``requires: [first_name]``) compatible first names.
- ``manual_merge``: a user's force-merge pair (``cdp identity merge``), before every other edge.

Equal values are linked as a star (every record to the group's smallest record), so a value
shared by n records makes n-1 edges, not n². A rule that ``requires`` fields groups by the
value *and* those fields: records of one group are linked, group anchors of one value are
linked to each other (the clustering then checks the names are compatible), and records
lacking the required fields are *attach* edges: they join only if every group holding the
value ended up in one cluster (a shared household landline attaches nobody).

Receipts with a single identifier ("satellites") take no part here: after clustering they
follow the profile records that hold the same value (see clustering.attach_satellites).
"""

from __future__ import annotations

import duckdb

from core.settings.identity import IdentitySettings
from identity.db import has_table

# identifier -> (value expression, partition expression) over identity.records
GROUP_RULES = {
    "loyalty_id": ("loyalty_id", "source, loyalty_id"),
    "user_id": ("user_id", "source, user_id"),
    "subscriber_id": ("subscriber_id", "source, subscriber_id"),
    "email": ("email_canon", "email_canon"),
    "phone": ("phone", "phone"),
}
REQUIRED_COLUMNS = {"first_name": "first_name_canon", "last_name": "last_name"}
MAX_GROUPS_PER_VALUE = 8  # a value held under more distinct names than this links nothing


MANUAL_MERGE = "manual_merge"
MANUAL_PRIORITY = -1  # (configured priorities are >= 0)


def build_deterministic_edges(con: duckdb.DuckDBPyConnection, settings: IdentitySettings,
                              schema: str = "identity", raw: str = "raw") -> int:
    """Create ``<schema>.det_edges(rid_l, rid_r, rule, priority, phase)`` from ``<schema>.records`` and
    the raw tables in ``raw`` (records.source_schema); returns its size."""
    parts: list[str] = []
    ctes: list[str] = []
    rec = f"{schema}.records"
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'").fetchall()}

    def prio(name: str) -> int:
        return settings.rule(name).priority

    if settings.rule("anonymous_id").link and "web_events" in tables:
        parts.append(f"""
            SELECT a.rid AS x, u.rid AS y, 'anonymous_id' AS rule, {prio('anonymous_id')} AS priority, 'link' AS phase
            FROM (SELECT DISTINCT _source, anonymousId, userId FROM {raw}.web_events
                  WHERE anonymousId IS NOT NULL AND userId IS NOT NULL) e
            JOIN {rec} a ON a.entity = 'anonymous_id' AND a.source = e._source AND a.source_record_id = e.anonymousId
            JOIN {rec} u ON u.entity = 'user_id' AND u.source = e._source AND u.source_record_id = e.userId""")
    if settings.rule("alias").link and "web_events" in tables:
        # (the previous id's records of either kind: the spec allows both). An alias storm (one
        # id aliased to many: a shared kiosk login, a buggy SDK) links nothing: an id named in
        # alias calls with more than max_per_profile - 1 other ids is dropped from every call.
        cap = (settings.rule("alias").max_per_profile or 1_000_000) - 1
        ctes.append(f"""alias_calls AS MATERIALIZED (
            SELECT DISTINCT _source, trim(previousId) AS previousId, userId FROM {raw}.web_events
            WHERE type = 'alias' AND nullif(trim(previousId), '') IS NOT NULL AND userId IS NOT NULL
              AND trim(previousId) <> userId)""")
        ctes.append(f"""alias_storm AS MATERIALIZED (
            SELECT _source, id FROM (SELECT _source, previousId AS id, userId AS other FROM alias_calls
                                     UNION SELECT _source, userId, previousId FROM alias_calls)
            GROUP BY ALL HAVING count(DISTINCT other) > {cap})""")
        parts.append(f"""
            SELECT p.rid, u.rid, 'alias', {prio('alias')}, 'link'
            FROM (SELECT * FROM alias_calls c
                  WHERE NOT EXISTS (SELECT 1 FROM alias_storm s WHERE s._source = c._source
                                    AND s.id IN (c.previousId, c.userId))) e
            JOIN {rec} u ON u.entity = 'user_id' AND u.source = e._source AND u.source_record_id = e.userId
            JOIN {rec} p ON p.entity IN ('anonymous_id', 'user_id') AND p.source = e._source
                        AND p.source_record_id = e.previousId""")
    if settings.rule("link_tracking_id").link and {"web_events", "email_events"} <= tables:
        parts.append(f"""
            SELECT s.rid, a.rid, 'link_tracking_id', {prio('link_tracking_id')}, 'link'
            FROM (SELECT DISTINCT _source, subscriber_id, link_tracking_id FROM {raw}.email_events
                  WHERE event_type = 'click' AND link_tracking_id IS NOT NULL) c
            JOIN (SELECT DISTINCT _source, anonymousId,
                         regexp_extract(context->>'$.page.url', '[?&]tid=([^&#]+)', 1) AS tid
                  FROM {raw}.web_events
                  -- (a plain text search first: extracting the url parses every event's JSON)
                  WHERE type = 'page' AND anonymousId IS NOT NULL AND contains(CAST(context AS VARCHAR), 'tid=')
                    AND contains(context->>'$.page.url', 'tid=')) w
              ON w.tid = c.link_tracking_id
            JOIN {rec} s ON s.entity = 'subscribers' AND s.source = c._source AND s.source_record_id = c.subscriber_id
            JOIN {rec} a ON a.entity = 'anonymous_id' AND a.source = w._source AND a.source_record_id = w.anonymousId""")
    if settings.rule("order_ref").link and {"web_events", "pos_transactions"} <= tables:
        # a web order fulfilled through the store system: the receipt's order_ref is the web order_id
        # (the orders read once; two equi-joins, not one join with OR: an OR condition makes DuckDB
        # compare every pair)
        ctes.append(f"""web_orders AS MATERIALIZED (
            SELECT DISTINCT _source, anonymousId, userId, properties->>'$.order_id' AS order_id
            FROM {raw}.web_events WHERE event = 'order_completed' AND properties->>'$.order_id' IS NOT NULL)""")
        for entity, column in (("anonymous_id", "anonymousId"), ("user_id", "userId")):
            parts.append(f"""
            SELECT t.rid, w.rid, 'order_ref', {prio('order_ref')}, 'link'
            FROM web_orders o
            JOIN {rec} t ON t.entity = 'transactions' AND t.order_ref = o.order_id
            JOIN {rec} w ON w.entity = '{entity}' AND w.source = o._source AND w.source_record_id = o.{column}""")
    if has_table(con, schema, "manual_merges"):
        # a user's force-merge (identity/overrides.py): before every other edge
        parts.append(f"""SELECT rid_a, rid_b, '{MANUAL_MERGE}', {MANUAL_PRIORITY}, 'link' FROM {schema}.manual_merges""")
    for name, (value, partition) in GROUP_RULES.items():
        rule = settings.rule(name)
        if not rule.link:
            continue
        base = f"SELECT * FROM {rec} WHERE NOT is_satellite AND {value} IS NOT NULL"
        if not rule.requires:
            parts.append(f"""
                SELECT anchor, rid, '{name}', {rule.priority}, 'link' FROM (
                    SELECT rid, min(rid) OVER (PARTITION BY {partition}) AS anchor FROM ({base})
                ) WHERE rid <> anchor""")
            continue
        req = [REQUIRED_COLUMNS[f] for f in rule.requires]
        has_req = " AND ".join(f"{c} IS NOT NULL" for c in req)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE id_req_{name} AS
            SELECT rid, ({has_req}) AS named,
                   min(rid) OVER (PARTITION BY {partition}, ({has_req}),
                                  {', '.join(f'CASE WHEN {has_req} THEN {c} END' for c in req)}) AS anchor,
                   {partition} AS v
            FROM ({base})""")
        parts.append(f"""
            SELECT anchor, rid, '{name}', {rule.priority}, 'link' FROM id_req_{name} WHERE rid <> anchor""")
        # anchors of different named groups of one value: linked, the clustering checks names
        parts.append(f"""
            WITH g AS (SELECT DISTINCT v, anchor FROM id_req_{name} WHERE named),
                 ok AS (SELECT v FROM g GROUP BY v HAVING count(*) BETWEEN 2 AND {MAX_GROUPS_PER_VALUE})
            SELECT a.anchor, b.anchor, '{name}', {rule.priority}, 'link'
            FROM g a JOIN g b ON a.v = b.v AND a.anchor < b.anchor WHERE a.v IN (SELECT v FROM ok)""")
        # records without the required fields attach to the value's named groups (if unambiguous)
        parts.append(f"""
            WITH g AS (SELECT DISTINCT v, anchor FROM id_req_{name} WHERE named),
                 u AS (SELECT DISTINCT v, anchor FROM id_req_{name} WHERE NOT named)
            SELECT u.anchor, g.anchor, '{name}', {rule.priority}, 'attach' FROM u JOIN g ON g.v = u.v""")
    if not parts:
        con.execute(f"CREATE OR REPLACE TABLE {schema}.det_edges (rid_l BIGINT, rid_r BIGINT, rule VARCHAR, "
                    "priority INTEGER, phase VARCHAR)")
        return 0
    union = " UNION ALL ".join(f"({p})" for p in parts)
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.det_edges AS
        {'WITH ' + ', '.join(ctes) if ctes else ''}
        SELECT CASE WHEN phase = 'attach' THEN x ELSE least(x, y) END AS rid_l,
               CASE WHEN phase = 'attach' THEN y ELSE greatest(x, y) END AS rid_r, rule, priority, phase FROM ({union}) e(x, y, rule, priority, phase)
        WHERE x <> y
        QUALIFY row_number() OVER (PARTITION BY least(x, y), greatest(x, y)
                                   ORDER BY phase = 'attach', priority, rule) = 1""")
    for name in GROUP_RULES:
        con.execute(f"DROP TABLE IF EXISTS id_req_{name}")
    return con.execute(f"SELECT count(*) FROM {schema}.det_edges").fetchall()[0][0]
