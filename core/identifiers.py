"""Salted hashes of identifiers, computed the same way in SQL (warehouse, loader) and in Python
(requests), and the SQL that tells whether a row carries an erased identifier.

A key is ``<kind>:<value>``, hashed as ``sha256(salt || '|' || key)``:

- ``email``: trimmed, lower-case (and, as a second key, the canonical form without +tags
  and Gmail dots — what identity matches on);
- ``phone``: E.164 (UK shapes in SQL, as identity does; other numbers by their digits);
- ids local to one source system are scoped by it: ``loyalty_id:pos:L123``,
  ``subscriber_id``, ``user_id``, ``anonymous_id``, ``transaction_id``, ``ticket_id``,
  ``card_token`` (the processor's token as the store system reports it);
- ``person_id``: a Tessera person id (only to match a `cdp forget --person-id`).

Erased hashes live in ``privacy.erased_identifiers``. Names are never keys: they are not
unique (namesakes), so rows are found by the identifiers above.
"""

from __future__ import annotations

import hashlib

import duckdb

from core.normalise import email_canonical, install_macros, norm_email, phone_e164

ERASED_TABLE = "privacy.erased_identifiers"
SCOPED_KINDS = ("loyalty_id", "subscriber_id", "user_id", "anonymous_id", "transaction_id", "ticket_id", "card_token")
KINDS = ("email", "phone", *SCOPED_KINDS, "person_id")

# Where a web event can carry an email or a phone: identify traits, the traits Segment copies
# into every event's context, and properties (a form's or an order's email).
WEB_EVENT_CONTACT_PATHS = ("traits->>'$.{}'", "context->>'$.traits.{}'", "properties->>'$.{}'")

# raw table -> (kind, column) pairs that identify a person in its rows. `column` is a contract
# field name; JSON paths are written as field->>'$.path'. Every identifier kind in every place a
# row can carry one: a row keyed by any of them is dropped at load once that key is erased.
ROW_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "web_events": (("anonymous_id", "anonymousId"), ("user_id", "userId"),
                   *((kind, path.format(kind)) for path in WEB_EVENT_CONTACT_PATHS for kind in ("email", "phone")),
                   # an alias call's previous id is either kind (Segment spec)
                   ("anonymous_id", "previousId"), ("user_id", "previousId")),
    "email_subscribers": (("subscriber_id", "subscriber_id"), ("email", "email")),
    "email_events": (("subscriber_id", "subscriber_id"), ("email", "email")),
    "pos_transactions": (("transaction_id", "transaction_id"), ("loyalty_id", "loyalty_id"),
                         ("email", "email"), ("phone", "phone"), ("card_token", "card_token")),
    "pos_line_items": (("transaction_id", "transaction_id"),),
    "pos_loyalty_members": (("loyalty_id", "loyalty_id"), ("email", "email"), ("phone", "phone")),
    "support_tickets": (("ticket_id", "ticket_id"), ("email", "requester_email"), ("phone", "requester_phone")),
}

# identity.records entity -> the scoped kind of its source_record_id
RECORD_ENTITY_KIND = {
    "loyalty_members": "loyalty_id", "subscribers": "subscriber_id", "tickets": "ticket_id",
    "transactions": "transaction_id", "anonymous_id": "anonymous_id", "user_id": "user_id",
}

# Identifier columns of tables derived from raw (dbt staging and intermediate tables, others'
# outputs), by column name; scoped ids need the table's `source` (or `_source`) column.
DERIVED_COLUMN_KINDS = {
    "email": "email", "requester_email": "email", "phone": "phone", "requester_phone": "phone",
    "subscriber_id": "subscriber_id", "anonymous_id": "anonymous_id", "anonymousId": "anonymous_id",
    "user_id": "user_id", "userId": "user_id", "loyalty_id": "loyalty_id", "ticket_id": "ticket_id",
    "transaction_id": "transaction_id", "pos_transaction_id": "transaction_id", "card_token": "card_token",
}

EMAIL_TOKEN_RE = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+"
PHONE_TOKEN_RE = r"\+?\(?[0-9][0-9 ()\-]{7,18}[0-9]"
ID_TOKEN_RE = r"[A-Za-z0-9_.\-]+"


# --------------------------------------------------------------------------- python
def key_hash(salt: str, kind: str, value: str) -> str:
    return hashlib.sha256(f"{salt}|{kind}:{value}".encode()).hexdigest()


def request_keys(kind: str, value: str, phone_region: str = "GB") -> list[tuple[str, str]]:
    """The (kind, normalised value) keys a `cdp forget` / `cdp export-subject` identifier stands for."""
    value = (value or "").strip()
    if kind == "email":
        e = norm_email(value)
        if not e or "@" not in e:
            raise ValueError("--email: not an email address")
        return sorted({("email", e), ("email", email_canonical(e))})
    if kind == "phone":
        p = phone_e164(value, phone_region)
        if not p:
            raise ValueError(f"--phone: not a possible phone number (region {phone_region} assumed for national numbers)")
        return [("phone", p)]
    if kind == "person_id":
        if not value:
            raise ValueError("--person-id: empty")
        return [("person_id", value)]
    raise ValueError(f"unknown identifier kind {kind!r}")


# --------------------------------------------------------------------------- SQL
def install(con: duckdb.DuckDBPyConnection, salt: str) -> None:
    """Temp macros on this connection: identity's normalisers and ``pv_hash(kind, value)``.
    The salt sits in a temp table, never in SQL text (which error messages may quote)."""
    install_macros(con)
    con.execute("CREATE OR REPLACE TEMP TABLE pv_salt AS SELECT ?::VARCHAR AS salt", [salt])
    con.execute(
        "CREATE OR REPLACE TEMP MACRO pv_hash(kind, v) AS CASE WHEN v IS NULL OR trim(v) = '' THEN NULL "
        "ELSE sha256((SELECT salt FROM pv_salt) || '|' || kind || ':' || v) END"
    )


def ensure_erased_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS privacy")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {ERASED_TABLE} (
        hash VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, request_id VARCHAR NOT NULL, erased_at TIMESTAMPTZ NOT NULL)""")


def erased_count(con: duckdb.DuckDBPyConnection) -> int:
    rows = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = 'privacy' AND table_name = 'erased_identifiers'"
    ).fetchall()
    if not rows:
        return 0
    return con.execute(f"SELECT count(*) FROM {ERASED_TABLE}").fetchall()[0][0]


def load_erased(con: duckdb.DuckDBPyConnection, table: str = "pv_erased") -> None:
    """A temp copy of the erased hashes (the predicates below read ``pv_erased``)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT hash FROM {ERASED_TABLE}")


def value_hashes_sql(kind: str, expr: str, source_expr: str) -> list[str]:
    """SQL expressions hashing one column value as the keys it may match."""
    v = f"CAST({expr} AS VARCHAR)"
    if kind == "email":
        return [f"pv_hash('email', id_norm_email({v}))", f"pv_hash('email', id_email_canon(id_norm_email({v})))"]
    if kind == "phone":
        return [f"pv_hash('phone', coalesce(id_phone_gb_fast({v}), id_digits({v})))"]
    return [f"pv_hash('{kind}', {source_expr} || ':' || nullif(trim({v}), ''))"]


def _column(field: str, naming) -> str:
    if "->>" in field:
        name, path = field.split("->>", 1)
        return f"{naming(name)}->>{path}"
    return naming(field)


def row_hashes_sql(table: str, naming=lambda f: f'"{f}"', source_expr: str = "_source") -> list[str]:
    """Every key hash of a row of raw.<table>; ``naming`` maps a contract field to its column."""
    out: list[str] = []
    for kind, field in ROW_KEYS.get(table, ()):
        out += value_hashes_sql(kind, _column(field, naming), source_expr)
    return out


def row_erased_sql(table: str, naming=lambda f: f'"{f}"', source_expr: str = "_source",
                   erased: str = "pv_erased") -> str | None:
    """A boolean SQL expression: the row carries an erased key. None for tables without keys."""
    hashes = row_hashes_sql(table, naming, source_expr)
    if not hashes:
        return None
    # one semi-join per key (scales with the number of erased hashes, unlike a list lookup)
    return "coalesce(" + " OR ".join(f"{h} IN (SELECT hash FROM {erased})" for h in hashes) + ", false)"


def derived_erased_sql(columns: list[str], erased: str = "pv_erased") -> str | None:
    """Like row_erased_sql, for any table: its identifier columns found by name."""
    source = "_source" if "_source" in columns else "source" if "source" in columns else None
    hashes = []
    for col in columns:
        kind = DERIVED_COLUMN_KINDS.get(col)
        if kind is None or (kind in SCOPED_KINDS and source is None):
            continue
        hashes += value_hashes_sql(kind, f'"{col}"', f'"{source}"')
    if not hashes:
        return None
    return "coalesce(" + " OR ".join(f"{h} IN (SELECT hash FROM {erased})" for h in hashes) + ", false)"


def text_erased_sql(text_expr: str, source_expr: str, erased: str = "pv_erased") -> str:
    """A boolean SQL expression: verbatim text (a quarantined line) holds an erased identifier:
    email-, phone- and id-shaped tokens are hashed as the keys they could be."""
    t = f"coalesce({text_expr}, '')"
    hit = f"IN (SELECT hash FROM {erased})"
    ids = " OR ".join(f"pv_hash('{k}', {source_expr} || ':' || x) {hit}" for k in SCOPED_KINDS)
    # (pv_hash reads the salt with a subquery, which DuckDB does not allow inside a lambda:
    # hence tokens as rows of a correlated subquery)
    return f"""EXISTS (SELECT 1 FROM (
            SELECT unnest(regexp_extract_all({t}, '{EMAIL_TOKEN_RE}')) AS x, 'email' AS k
            UNION ALL SELECT unnest(regexp_extract_all({t}, '{PHONE_TOKEN_RE}')), 'phone'
            UNION ALL SELECT unnest(regexp_extract_all({t}, '{ID_TOKEN_RE}')), 'id') AS tokens
        WHERE (k = 'email' AND (pv_hash('email', id_norm_email(x)) {hit}
                                OR pv_hash('email', id_email_canon(id_norm_email(x))) {hit}))
           OR (k = 'phone' AND pv_hash('phone', coalesce(id_phone_gb_fast(x), id_digits(x))) {hit})
           OR (k = 'id' AND ({ids})))"""
