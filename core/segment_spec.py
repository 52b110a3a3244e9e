"""The Segment spec (and RudderStack's, which follows it), as Tessera reads it: one module.

What a web event means does not depend on how it arrived: the batch loader applies these rules
to landed JSON lines, and ``cdp serve``'s live state (package ``serve``) applies the very same
ones to the events its collector receives. So the rules are written once, as SQL expressions
over an event's landed fields (:func:`landed_sql`); :func:`normalise_events` runs that SQL over
Python dicts. (Kept in ``core``: the ingestion stage may import only ``core``.)

The rules:

- **Call types**: all six (``CALL_TYPES``).
- **Event time**, as Segment corrects a device clock: ``timestamp`` when sent; else
  ``originalTimestamp`` shifted by ``receivedAt - sentAt`` (both needed, else unshifted); else
  ``receivedAt``.
- **Event names** (of track calls): a shop's own names first (``event_names`` in ``cdp.yaml``, exact match),
  then the e-commerce spec v2 names in Title Case or snake_case (``Order Completed``,
  ``order_completed``, ``order-completed``) to the canonical snake_case names of
  ``core.contracts.WEB_TRACK_EVENTS``. Other names are kept as sent.
- **Person traits**: ``context.traits`` overlaid by the call's own ``traits`` (except on
  ``group``, whose traits describe the account, not the person), plus canonical keys read in
  camelCase or snake_case: ``email``, ``first_name`` (``firstName``, ``firstname``, else the
  first word of ``name``), ``last_name`` (likewise, else the last word of a ``name`` of two words
  or more), ``phone``, ``address_line1``/``city``/``postcode`` (from ``address.street``,
  ``address.city``, ``address.postalCode``/``postal_code``/``zip``). The keys as sent are kept.
- ``messageId`` is the event's identity: a re-delivery (the same messageId from the same
  source, in any file) counts once. Raw keeps every delivery as landed; staging
  (``stg_web__events``) keeps one row per messageId, the first delivered.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping

import duckdb
import pyarrow as pa

from core.contracts import WEB_EVENT_TYPES, WEB_TRACK_EVENTS

CALL_TYPES = WEB_EVENT_TYPES



def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _snake_sql(text: str) -> str:
    """'Order Completed' / 'order-completed' / 'order_completed' -> 'order_completed'."""
    return f"lower(regexp_replace(trim({text}), '[\\s\\-]+', '_', 'g'))"


def event_time_sql(col: Callable[[str], str]) -> str:
    """The corrected event time, as ISO text (the loader then casts and checks it like any
    timestamp). A time that cannot be read stays as sent, so the check names its field."""
    ts, ot, sa, ra = (col(n) for n in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"))
    skew = f"coalesce(try_cast({ra} AS TIMESTAMPTZ) - try_cast({sa} AS TIMESTAMPTZ), INTERVAL 0 SECOND)"
    return f"""(CASE
        WHEN nullif(trim({ts}), '') IS NOT NULL THEN {ts}
        WHEN nullif(trim({ot}), '') IS NOT NULL THEN
            coalesce(CAST(try_cast({ot} AS TIMESTAMPTZ) + {skew} AS VARCHAR), {ot})
        ELSE {ra} END)"""


def event_name_sql(col: Callable[[str], str], event_names: Mapping[str, str] | None = None) -> str:
    ev = col("event")
    shop = " ".join(f"WHEN {ev} = {_lit(k)} THEN {_lit(v)}" for k, v in (event_names or {}).items())
    canonical = ", ".join(_lit(e) for e in WEB_TRACK_EVENTS)
    # (track events only: a screen's `event`, which some SDKs send, is the screen's name)
    return f"""(CASE WHEN {col('type')} IS DISTINCT FROM 'track' THEN {ev} {shop}
        WHEN {_snake_sql(ev)} IN ({canonical}) THEN {_snake_sql(ev)}
        ELSE {ev} END)"""


# The traits keys read from the merged object, each path once (one parse reads them all).
_TRAIT_PATHS = ("email", "first_name", "firstName", "firstname", "name", "last_name", "lastName", "lastname", "phone",
                "address_line1", "address.street", "city", "address.city", "postcode", "address.postalCode",
                "address.postal_code", "address.zip")


def _let(value: str, name: str, body: str) -> str:
    """SQL of ``body`` with ``name`` bound to ``value``, computed once per row (a lambda over a
    one-element list: DuckDB has no LET; repeating an expression repeats its cost)."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


def person_traits_sql(col: Callable[[str], str]) -> str:
    """The person's traits as one JSON object (NULL when the event carries none)."""
    own = f"CASE WHEN {col('type')} = 'group' THEN NULL ELSE json({col('traits')}) END"
    ctx = f"json_extract({col('context')}, '$.traits')"
    p, q, t, v = "_seg_p", "_seg_q", "_seg_t", "_seg_v"
    # (json_merge_patch of a non-object replaces: keep objects only; it parses and writes its
    # inputs, so an object goes to it as it is)
    objects = _let(f"[{ctx}, {own}]", p, "[" + ", ".join(
        f"CASE WHEN json_type({p}[{i}]) = 'OBJECT' THEN {p}[{i}] END" for i in (1, 2)) + "]")
    merged = _let(objects, q, f"CASE WHEN {q}[1] IS NULL AND {q}[2] IS NULL THEN NULL "
                              f"ELSE json_merge_patch(coalesce({q}[1], '{{}}'), coalesce({q}[2], '{{}}')) END")
    at = {k: f"{v}[{i}]" for i, k in enumerate(_TRAIT_PATHS, 1)}  # each trimmed, '' as NULL

    def first(*keys: str) -> str:
        return "coalesce(" + ", ".join(at[k] for k in keys) + ")"

    name = at["name"]
    canonical = {
        "email": first("email"),
        "first_name": f"coalesce({first('first_name', 'firstName', 'firstname')}, regexp_extract({name}, '^(\\S+)', 1))",
        "last_name": f"coalesce({first('last_name', 'lastName', 'lastname')}, "
                     f"CASE WHEN regexp_matches({name}, '\\s') THEN regexp_extract({name}, '(\\S+)$', 1) END)",
        "phone": first("phone"),
        "address_line1": first("address_line1", "address.street"),
        "city": first("city", "address.city"),
        "postcode": first("postcode", "address.postalCode", "address.postal_code", "address.zip"),
    }
    added = "json_object(" + ", ".join(f"{_lit(k)}, nullif({e}, '')" for k, e in canonical.items()) + ")"
    paths = "[" + ", ".join(_lit("$." + k) for k in _TRAIT_PATHS) + "]"
    values = f"list_transform(json_extract_string({t}, {paths}), lambda _seg_s: nullif(trim(_seg_s), ''))"
    full = _let(merged, t, f"CASE WHEN {t} IS NOT NULL THEN {_let(values, v, f'json_merge_patch({t}, {added})')} END")
    # Most events carry no traits at all (page views, product views): those skip the JSON work
    # above. The test is exact: without a call's own traits, a context whose text holds neither
    # "traits" nor a \u escape (the only other way a key can spell it) has no context.traits
    # either, and the result is NULL.
    ctx_text = f"CAST({col('context')} AS VARCHAR)"
    none = (f"({col('traits')} IS NULL OR {col('type')} = 'group') AND ({col('context')} IS NULL OR "
            f"NOT (contains({ctx_text}, 'traits') OR contains({ctx_text}, '\\u')))")
    return f"CASE WHEN {none} THEN NULL ELSE {full} END"


def landed_sql(col: Callable[[str], str], event_names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Contract field -> SQL computing its stored value from the landed fields (``col(name)``:
    the landed value of a contract field, text or JSON)."""
    return {
        "timestamp": event_time_sql(col),
        "event": event_name_sql(col, event_names),
        "traits": person_traits_sql(col),
    }


def canonical_event_name(name: str, event_names: Mapping[str, str] | None = None) -> str:
    """The canonical name of a track event name (the same rule as :func:`event_name_sql`)."""
    return normalise_events([{"type": "track", "event": name}], event_names)[0]["event"]


DERIVED_FIELDS = ("timestamp", "event", "traits")


def normalise_events(events: Iterable[Mapping], event_names: Mapping[str, str] | None = None,
                     fields: Iterable[str] = DERIVED_FIELDS) -> list[dict]:
    """Events (SDK payloads as dicts) with the derived fields as the loader stores them:
    ``timestamp`` (ISO text, UTC), ``event`` and ``traits`` (a dict or None). Other keys are
    returned as sent. The same SQL as the loader's, run on an in-memory DuckDB. ``fields``:
    which derived fields to compute (the others are returned as sent); a caller that never
    reads ``traits`` saves its SQL, most of the ~15 ms of planning a call costs."""
    events = [dict(e) for e in events]
    fields = [f for f in DERIVED_FIELDS if f in set(fields)]
    if not events or not fields:
        return events
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # one Arrow table, not a row-by-row INSERT (which cost ~0.6 ms an event: the live
        # collector runs this on every event it receives)
        con.register("_ev_in", pa.table({"i": pa.array(range(len(events)), pa.int32()),
                                         "j": pa.array([json.dumps(e) for e in events], pa.string())}))
        con.execute("CREATE TEMP TABLE _ev AS SELECT i, CAST(j AS JSON) AS j FROM _ev_in")

        def col(name: str) -> str:
            path = _lit("$." + json.dumps(name))
            return f"json_extract(j, {path})" if name in ("traits", "context") else f"json_extract_string(j, {path})"

        exprs = landed_sql(col, event_names)
        select = {"timestamp": f"CAST(try_cast({exprs['timestamp']} AS TIMESTAMPTZ) AS VARCHAR)",
                  "event": exprs["event"],
                  "traits": f"CAST({exprs['traits']} AS VARCHAR)"}
        out = con.execute(f"SELECT {', '.join(select[f] for f in fields)} FROM _ev ORDER BY i").fetchall()
    finally:
        con.close()
    for e, row in zip(events, out):
        for f, v in zip(fields, row):
            e[f] = (json.loads(v) if v is not None else None) if f == "traits" else v
    return events
