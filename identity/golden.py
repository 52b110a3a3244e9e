"""Golden record: one row per person, each field chosen by its survivorship rule, with the
source of the chosen value.

Strategies (``identity.survivorship.<field>``): ``most_recent`` (the record seen last),
``most_frequent`` (the value most records agree on), ``source_priority`` (the first source
in ``source_priority`` that has a value). Ties fall back to recency, then source priority,
then the value itself, so the result is deterministic. Values are compared normalised (the
canonical first name, so Bob and Robert agree); the chosen value is shown as most of its
records write it, then as written most recently. The address block (line 1, city,
postcode) is taken from one record, chosen by the ``address_line1`` rule, so a person never
gets one address's street with another's postcode.
"""

from __future__ import annotations

import duckdb

from core.settings.identity import IdentitySettings, SurvivorshipRule

_PROPER = "upper(left({x}, 1)) || lower(substr({x}, 2))"
# field -> (key expression for agreement, display expression)
FIELDS = {
    "first_name": ("r.first_name_canon", _PROPER.format(x="r.first_name_display")),
    "last_name": ("r.last_name", _PROPER.format(x="r.last_name_display")),
    "email": ("r.email_canon", "r.email"),
    "phone": ("r.phone", "r.phone"),
    "date_of_birth": ("r.date_of_birth", "CAST(r.date_of_birth AS VARCHAR)"),
}


def _order(rule: SurvivorshipRule, srank: str) -> str:
    if rule.strategy == "most_frequent":
        return f"freq DESC, latest DESC NULLS LAST, {srank}, k"
    if rule.strategy == "source_priority":
        return f"{srank}, latest DESC NULLS LAST, freq DESC, k"
    return f"latest DESC NULLS LAST, freq DESC, {srank}, k"


def _srank(rule: SurvivorshipRule, col: str = "source") -> str:
    if not rule.source_priority:
        return "0"
    whens = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(rule.source_priority))
    return f"min(CASE {col} {whens} ELSE {len(rule.source_priority)} END)"


def build_golden(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, schema: str = "identity",
                 clusters: str = "id_clusters", persons: str = "id_person") -> int:
    """``<schema>.golden`` from ``<schema>.records``, ``clusters(rid, cluster_id)`` and
    ``persons(cluster_id, person_id)``. The work is keyed by the integer cluster id and the
    person id joined on at the end (grouping by the 13-character person id cost twice as much)."""
    # the cluster and the columns survivorship reads, joined once, of the records that hold any of
    # them (most receipts carry only a loyalty id or a card: they count in `records` and `sources`)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_golden_in AS
        SELECT c.cluster_id, r.source, r.last_seen_at, r.first_name_canon, r.first_name_display, r.last_name,
               r.last_name_display, r.email_canon, r.email, r.phone, r.date_of_birth, r.address, r.postcode,
               r.address_line1_display, r.city_display, r.postcode_display
        FROM {schema}.records r JOIN {clusters} c USING (rid)
        WHERE coalesce(r.first_name_canon, r.last_name, r.email_canon, r.phone, r.address, r.postcode) IS NOT NULL
           OR r.date_of_birth IS NOT NULL""")
    parts = []
    for name, (key, display) in FIELDS.items():
        rule = settings.survivorship[name]
        row_rank = _srank(rule).replace("min(", "(", 1)
        # the value (k) by the field's rule; then, of the ways that value was written (d), the one most
        # records use, then the most recent, then by source priority and by the text itself
        parts.append(f"""
        {name}_v AS (
            SELECT cluster_id, d, src FROM (
                SELECT *, sum(d_freq) OVER w AS freq, max(d_latest) OVER w AS latest, min(d_srank) OVER w AS srank
                FROM (SELECT cluster_id, k, d, count(*) AS d_freq, max(last_seen_at) AS d_latest, min(row_srank) AS d_srank,
                             first(source ORDER BY last_seen_at DESC NULLS LAST, row_srank, source) AS src
                      FROM (SELECT cluster_id, source, last_seen_at, {key} AS k, {display} AS d, {row_rank} AS row_srank
                            FROM id_golden_in r WHERE {key} IS NOT NULL)
                      GROUP BY cluster_id, k, d)
                WINDOW w AS (PARTITION BY cluster_id, k))
            QUALIFY row_number() OVER (PARTITION BY cluster_id ORDER BY {_order(rule, 'srank')},
                                                                       d_freq DESC, d_latest DESC NULLS LAST, d_srank, d) = 1)""")
    arule = settings.survivorship["address_line1"]
    parts.append(f"""
        address_v AS (
            SELECT cluster_id, address_line1_display AS a, city_display AS c, postcode_display AS p, source AS src FROM (
                SELECT r.cluster_id, r.source, r.address, r.address_line1_display, r.city_display, r.postcode_display,
                       1 AS freq, r.last_seen_at AS latest, r.address AS k,
                       {_srank(arule, 'r.source').replace('min(', '(', 1)} AS srank
                FROM id_golden_in r
                WHERE r.address IS NOT NULL OR r.postcode IS NOT NULL)
            QUALIFY row_number() OVER (PARTITION BY cluster_id ORDER BY (address IS NULL), {_order(arule, 'srank')},
                                      source, address_line1_display, city_display, postcode_display) = 1)""")
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.golden AS
        WITH {', '.join(parts)},
        persons AS (SELECT c.cluster_id, count(*) AS records, list(DISTINCT r.source ORDER BY r.source) AS sources
                    FROM {clusters} c JOIN {schema}.records r USING (rid) GROUP BY c.cluster_id)
        SELECT ip.person_id,
               f.d AS first_name, f.src AS first_name_source,
               l.d AS last_name, l.src AS last_name_source,
               e.d AS email, e.src AS email_source,
               ph.d AS phone, ph.src AS phone_source,
               a.a AS address_line1, a.c AS city, a.p AS postcode, a.src AS address_source,
               CAST(dob.d AS DATE) AS date_of_birth, dob.src AS date_of_birth_source,
               p.records, p.sources
        FROM persons p JOIN {persons} ip USING (cluster_id)
        LEFT JOIN first_name_v f USING (cluster_id) LEFT JOIN last_name_v l USING (cluster_id)
        LEFT JOIN email_v e USING (cluster_id) LEFT JOIN phone_v ph USING (cluster_id)
        LEFT JOIN address_v a USING (cluster_id) LEFT JOIN date_of_birth_v dob USING (cluster_id)
        ORDER BY ip.person_id""")
    con.execute("DROP TABLE IF EXISTS id_golden_in")
    return con.sql(f"SELECT count(*) FROM {schema}.golden").fetchall()[0][0]
