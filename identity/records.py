"""``identity.records``: one row per source record, with normalised identifiers.

Built straight from ``raw.*`` in DuckDB SQL (one statement per entity, vectorised):

| entity | grain | source_record_id |
|---|---|---|
| loyalty_members | a member row of one ``_source`` (latest load wins) | loyalty_id |
| subscribers | an email-tool subscriber | subscriber_id |
| tickets | a support ticket | ticket_id |
| transactions | a POS receipt carrying a loyalty id, an email, a phone or a card token | transaction_id |
| anonymous_id | a web browser/device; person traits of its events aggregated (latest wins) | anonymousId |
| user_id | a logged-in web account; person traits of its events aggregated | userId |

``record_key`` = ``source|entity|source_record_id`` (it maps to the generator's ground truth
``(source, entity, record_id)``); ``rid`` is a dense integer id ordered by record_key, used
by Splink and the clustering. Blocked values of each identifier (settings.rules) are
nulled here, so junk never links anything.
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb

from core.normalise import blocked_sql, install_macros, phone_fallback_table
from core.settings.identity import IdentitySettings

RECORD_COLUMNS = (
    "record_key", "rid", "source", "entity", "source_record_id",
    "first_name", "first_name_canon", "last_name", "email", "email_canon", "email_local", "phone",
    "address", "postcode", "postcode_outward", "date_of_birth", "loyalty_id", "user_id", "anonymous_id",
    "subscriber_id", "first_name_display", "last_name_display", "address_line1_display", "city_display",
    "postcode_display", "first_seen_at", "last_seen_at", "order_ref", "card_token", "is_satellite",
)

_RAW_ENTITIES = {
    "loyalty_members": "pos_loyalty_members",
    "subscribers": "email_subscribers",
    "tickets": "support_tickets",
    "transactions": "pos_transactions",
    "web": "web_events",
}


# Each raw table's data time: in a backtest (an as_of) the rows after it are invisible to identity.
# A loyalty member with no enrolment date stays visible (unknown is not "later").
AS_OF_COLUMNS = {
    "web_events": "timestamp",
    "email_events": "occurred_at",
    "email_subscribers": "created_at",
    "pos_transactions": "occurred_at",
    "pos_loyalty_members": "enrolled_at",
    "support_tickets": "created_at",
}
AS_OF_SCHEMA = "raw_as_of"


def source_schema(con: duckdb.DuckDBPyConnection, as_of: datetime | None, catalog: str) -> str:
    """The schema identity reads its raw tables from: ``raw``, or with an ``as_of`` views over
    raw.* in ``catalog`` holding only the rows up to it (DuckDB cannot shadow ``raw`` with an
    attached catalog, so every query names its source schema)."""
    if as_of is None:
        return "raw"
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    db = con.sql("SELECT current_database()").fetchall()[0][0].replace('"', '""')
    schema = f"{catalog}.{AS_OF_SCHEMA}"
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    cutoff = as_of.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    for table in raw_tables(con):
        column = AS_OF_COLUMNS.get(table)
        keep = "TRUE" if column is None else f'("{column}" <= TIMESTAMPTZ \'{cutoff}\'' + (
            f' OR "{column}" IS NULL)' if table == "pos_loyalty_members" else ")")
        con.execute(f'CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM "{db}".raw.{table} WHERE {keep}')
    return schema


def raw_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'"
    ).fetchall()
    return {r[0] for r in rows}


def _source_filter(sources: list[str] | None) -> str:
    if not sources:
        return "TRUE"
    return "_source IN (" + ", ".join("'" + s.replace("'", "''") + "'" for s in sources) + ")"


def staged_sql(present: set[str], sources: list[str] | None, raw: str = "raw") -> str:
    """The UNION of every entity's records, identifiers as written (before normalisation)."""
    f = _source_filter(sources)
    parts = []
    if "pos_loyalty_members" in present:
        parts.append(f"""
        SELECT _source AS source, 'loyalty_members' AS entity, loyalty_id AS source_record_id,
               first_name, last_name, email, phone, address_line1, city, postcode,
               CAST(date_of_birth AS VARCHAR) AS dob, loyalty_id, NULL AS user_id, NULL AS anonymous_id,
               NULL AS subscriber_id, enrolled_at AS first_seen_at, enrolled_at AS last_seen_at,
               NULL AS order_ref, NULL AS card_token
        FROM {raw}.pos_loyalty_members WHERE {f} AND loyalty_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY _source, loyalty_id ORDER BY _loaded_at DESC, _file DESC, _row DESC) = 1""")
    if "email_subscribers" in present:
        parts.append(f"""
        SELECT _source, 'subscribers', subscriber_id, first_name, last_name, email, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, subscriber_id, created_at, coalesce(updated_at, created_at), NULL, NULL
        FROM {raw}.email_subscribers WHERE {f} AND subscriber_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY _source, subscriber_id ORDER BY _loaded_at DESC, _file DESC, _row DESC) = 1""")
    if "support_tickets" in present:
        parts.append(f"""
        SELECT _source, 'tickets', ticket_id,
               regexp_extract(trim(requester_name), '^(\\S+)', 1),
               CASE WHEN regexp_matches(trim(requester_name), '\\s') THEN regexp_extract(trim(requester_name), '(\\S+)$', 1) END,
               requester_email, requester_phone, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               created_at, coalesce(resolved_at, created_at), NULL, NULL
        FROM {raw}.support_tickets WHERE {f} AND ticket_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY _source, ticket_id ORDER BY _loaded_at DESC, _file DESC, _row DESC) = 1""")
    if "pos_transactions" in present:
        parts.append(f"""
        SELECT _source, 'transactions', transaction_id, NULL, NULL, email, phone, NULL, NULL, NULL, NULL,
               nullif(trim(loyalty_id), ''), NULL, NULL, NULL, occurred_at, occurred_at, nullif(trim(order_ref), ''),
               nullif(trim(card_token), '')
        FROM {raw}.pos_transactions
        WHERE {f} AND transaction_id IS NOT NULL
          AND coalesce(nullif(trim(loyalty_id), ''), nullif(trim(email), ''), nullif(trim(phone), ''),
                       nullif(trim(card_token), '')) IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY _source, transaction_id ORDER BY _loaded_at DESC, _file DESC, _row DESC) = 1""")
    if "web_events" in present:
        for key, entity in (("anonymousId", "anonymous_id"), ("userId", "user_id")):
            uid = "NULL" if entity == "anonymous_id" else f"s.{key}"
            aid = f"s.{key}" if entity == "anonymous_id" else "NULL"
            parts.append(f"""
        SELECT s._source, '{entity}', s.{key}, t.t_first, t.t_last, t.t_email, t.t_phone,
               t.t_street, t.t_city, t.t_postcode, NULL, NULL, {uid}, {aid}, NULL, s.first_seen_at, s.last_seen_at,
               NULL, NULL
        FROM (SELECT _source, {key}, min(first_at) AS first_seen_at, max(last_at) AS last_seen_at FROM web_seen
              WHERE {key} IS NOT NULL GROUP BY ALL) s
        LEFT JOIN (SELECT _source, {key},
                          arg_max(t_first, timestamp) FILTER (WHERE t_first IS NOT NULL) AS t_first,
                          arg_max(t_last, timestamp) FILTER (WHERE t_last IS NOT NULL) AS t_last,
                          arg_max(t_email, timestamp) FILTER (WHERE t_email IS NOT NULL) AS t_email,
                          arg_max(t_phone, timestamp) FILTER (WHERE t_phone IS NOT NULL) AS t_phone,
                          arg_max(t_street, timestamp) FILTER (WHERE t_street IS NOT NULL) AS t_street,
                          arg_max(t_city, timestamp) FILTER (WHERE t_city IS NOT NULL) AS t_city,
                          arg_max(t_postcode, timestamp) FILTER (WHERE t_postcode IS NOT NULL) AS t_postcode
                   FROM web_identify WHERE {key} IS NOT NULL GROUP BY ALL) t USING (_source, {key})""")
    if not parts:
        return ""
    return " UNION ALL ".join(parts)


def _phones_sql(present: set[str], sources: list[str] | None, raw: str = "raw") -> str:
    """Every phone as written, from each source table (rows a later load replaced included: the
    map only needs to cover the staged values, and the staging's dedup would cost a second pass)."""
    f = _source_filter(sources)
    cols = {"pos_loyalty_members": "phone", "support_tickets": "requester_phone", "pos_transactions": "phone"}
    parts = [f"SELECT {c} AS phone FROM {raw}.{t} WHERE {f}" for t, c in cols.items() if t in present]
    if "web_events" in present:
        parts.append("SELECT t_phone FROM web_identify")
    return "(SELECT phone, id_digits(phone) AS phone_digits FROM (" + " UNION ".join(parts or ["SELECT NULL AS phone"]) + "))"


def build_records(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, schema: str = "identity",
                  sources: list[str] | None = None, raw: str = "raw") -> int:
    """(Re)build ``<schema>.records`` from the raw tables in ``raw`` (see source_schema); returns its row count."""
    install_macros(con)
    present = raw_tables(con) & set(_RAW_ENTITIES.values())
    sources = sources if sources is not None else settings.sources
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    if "web_events" in present:
        # a device's or account's first and last event, and the person traits its events carried:
        # identify calls, and the context.traits RudderStack's SDKs send with every call (the
        # loader merged both into `traits`, keys canonical; see core.segment_spec)
        # (two small tables: every event's row carried through the grouping cost twice as much)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE web_seen AS
            SELECT _source, anonymousId, userId, min(timestamp) AS first_at, max(timestamp) AS last_at
            FROM {raw}.web_events WHERE {_source_filter(sources)} GROUP BY ALL""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE web_identify AS
            SELECT _source, anonymousId, userId, timestamp, nullif(trim(t[1]), '') AS t_first,
                   nullif(trim(t[2]), '') AS t_last, nullif(trim(t[3]), '') AS t_email, nullif(trim(t[4]), '') AS t_phone,
                   nullif(trim(t[5]), '') AS t_street, nullif(trim(t[6]), '') AS t_city,
                   nullif(trim(t[7]), '') AS t_postcode
            FROM (SELECT *, json_extract_string(traits, ['$.first_name', '$.last_name', '$.email', '$.phone',
                                                         '$.address_line1', '$.city', '$.postcode']) AS t
                  FROM {raw}.web_events WHERE traits IS NOT NULL AND {_source_filter(sources)})""")
    union = staged_sql(present, sources, raw)
    if not union:
        con.execute(f"CREATE OR REPLACE TABLE {schema}.records AS SELECT * FROM ({empty_records_sql()})")
        return 0
    # Each step computes its columns in a subquery, read by the next: a macro's argument is
    # substituted wherever it is used, so nesting normalisation inside the blocked-value checks
    # would recompute it many times per row. (Materialising the staged rows cost 0.8 s of 6.)
    staged = f"(SELECT *, id_digits(phone) AS phone_digits FROM ({union}))"

    region = settings.default_phone_region
    fast = region == "GB"
    phone_fallback_table(con, _phones_sql(present, sources, raw), "phone", region, fast)
    phone_expr = "coalesce(id_phone_gb_digits(s.phone_digits), pm.e164)" if fast else "pm.e164"
    unblocked = f"""
        SELECT s.source, s.entity, s.source_record_id,
               id_norm_name(s.first_name) AS first_name, id_norm_name(s.last_name) AS last_name,
               id_norm_email(s.email) AS email, {phone_expr} AS phone,
               id_address(s.address_line1) AS address, id_postcode(s.postcode) AS postcode, s.dob,
               nullif(trim(s.loyalty_id), '') AS loyalty_id, nullif(trim(s.user_id), '') AS user_id,
               nullif(trim(s.anonymous_id), '') AS anonymous_id,
               nullif(trim(s.subscriber_id), '') AS subscriber_id,
               nullif(trim(s.first_name), '') AS first_name_display, nullif(trim(s.last_name), '') AS last_name_display,
               nullif(trim(s.address_line1), '') AS address_line1_display, nullif(trim(s.city), '') AS city_display,
               s.postcode AS postcode_raw, s.first_seen_at, s.last_seen_at, s.order_ref, s.card_token
        FROM {staged} s LEFT JOIN id_phone_map pm ON pm.raw = s.phone"""

    r = settings.rule
    blocked = {name: blocked_sql(column, r(name).blocked_values, r(name).blocked_patterns)
               for name, column in (("first_name", "first_name"), ("last_name", "last_name"), ("email", "email"),
                                    ("phone", "phone"), ("postcode", "postcode"), ("date_of_birth", "dob"),
                                    ("loyalty_id", "loyalty_id"), ("user_id", "user_id"),
                                    ("anonymous_id", "anonymous_id"), ("card_token", "card_token"))}
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_norm AS
        SELECT source, entity, source_record_id,
               {blocked['first_name']} AS first_name, {blocked['last_name']} AS last_name,
               {blocked['email']} AS email, {blocked['phone']} AS phone, address, {blocked['postcode']} AS postcode,
               TRY_CAST({blocked['date_of_birth']} AS DATE) AS date_of_birth,
               {blocked['loyalty_id']} AS loyalty_id, {blocked['user_id']} AS user_id,
               {blocked['anonymous_id']} AS anonymous_id, subscriber_id,
               first_name_display, last_name_display, address_line1_display, city_display,
               postcode_raw, first_seen_at, last_seen_at, order_ref, {blocked['card_token']} AS card_token
        FROM ({unblocked})""")  # (a subquery: each normalised value is computed once, then checked)
    # rid numbers the records in key order: only the keys and each row's position are sorted, then
    # joined back on the position (a window over whole rows sorted every column along: 1.7 s of
    # operator time at 1.27M records, this 0.5 s). The table is then written in rid order: the
    # copy to the warehouse, Splink's input and the clustering's lookups were slower on an
    # unordered table than the sort costs.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_rid AS
        SELECT rowid AS pos, CAST(row_number() OVER (ORDER BY source, entity, source_record_id) AS BIGINT) AS rid
        FROM id_norm n
        WHERE n.entity <> 'transactions' OR coalesce(n.loyalty_id, n.email, n.phone, n.card_token) IS NOT NULL""")
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.records AS
        WITH n AS (
            SELECT n.*, k.rid, coalesce(nk.canon, n.first_name) AS first_name_canon,
                   id_email_canon(n.email) AS email_canon
            FROM id_norm n JOIN id_rid k ON k.pos = n.rowid LEFT JOIN id_nicknames nk ON nk.name = n.first_name
        )
        SELECT n.source || '|' || n.entity || '|' || n.source_record_id AS record_key, n.rid,
               n.source, n.entity, n.source_record_id,
               first_name, first_name_canon, last_name, email, email_canon,
               split_part(email_canon, '@', 1) AS email_local, phone, address, postcode,
               CASE WHEN length(postcode) > 3 THEN left(postcode, length(postcode) - 3) END AS postcode_outward,
               CASE WHEN date_of_birth BETWEEN DATE '1900-01-02' AND current_date THEN date_of_birth END AS date_of_birth,
               loyalty_id, user_id, anonymous_id, subscriber_id,
               first_name_display, last_name_display, address_line1_display, city_display,
               CASE WHEN length(postcode) > 3 THEN left(postcode, length(postcode) - 3) || ' ' || right(postcode, 3)
                    ELSE postcode END AS postcode_display,
               first_seen_at, last_seen_at, order_ref, card_token,
               -- a receipt with a single identifier, or only the card that paid (and no web order), only
               -- follows the records holding that value
               (n.entity = 'transactions' AND order_ref IS NULL AND (CAST(loyalty_id IS NOT NULL AS INT) + CAST(email IS NOT NULL AS INT)
                    + CAST(phone IS NOT NULL AS INT)) <= 1) AS is_satellite
        FROM n ORDER BY rid""")
    for t in ("id_norm", "id_rid", "web_seen", "web_identify", "id_phone_map"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return con.execute(f"SELECT count(*) FROM {schema}.records").fetchall()[0][0]


def empty_records_sql() -> str:
    return """
        SELECT NULL::VARCHAR record_key, NULL::BIGINT rid, NULL::VARCHAR source, NULL::VARCHAR entity,
          NULL::VARCHAR source_record_id, NULL::VARCHAR first_name, NULL::VARCHAR first_name_canon,
          NULL::VARCHAR last_name, NULL::VARCHAR email, NULL::VARCHAR email_canon, NULL::VARCHAR email_local,
          NULL::VARCHAR phone, NULL::VARCHAR address, NULL::VARCHAR postcode, NULL::VARCHAR postcode_outward,
          NULL::DATE date_of_birth, NULL::VARCHAR loyalty_id, NULL::VARCHAR user_id, NULL::VARCHAR anonymous_id,
          NULL::VARCHAR subscriber_id, NULL::VARCHAR first_name_display, NULL::VARCHAR last_name_display,
          NULL::VARCHAR address_line1_display, NULL::VARCHAR city_display, NULL::VARCHAR postcode_display,
          NULL::TIMESTAMPTZ first_seen_at, NULL::TIMESTAMPTZ last_seen_at, NULL::VARCHAR order_ref,
          NULL::VARCHAR card_token, NULL::BOOLEAN is_satellite
        WHERE FALSE"""
