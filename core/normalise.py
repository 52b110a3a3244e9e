"""Normalising identifiers: the same rules as DuckDB macros (for the warehouse, vectorised)
and as Python functions (for tests, tools and the rare value SQL cannot settle).

- email: trimmed, lower-cased; the canonical form also drops a ``+tag`` and, for Gmail,
  the dots of the local part (``J.Smith+shop@GoogleMail.com`` -> ``jsmith@gmail.com``).
- phone: E.164. Numbers in the usual UK shapes are settled in SQL; anything else is parsed
  by ``phonenumbers`` (once per distinct value) with the configured default region.
- names: lower-case, accents removed, letters only; ``first_name_canon`` maps nicknames to
  one formal name (``core/nicknames.csv``).
- postcode: upper-case without spaces; ``postcode_outward`` is the district (all but the
  last three characters).
- address: lower-case, punctuation removed, common street words abbreviated.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import duckdb
import phonenumbers

NICKNAMES_CSV = Path(__file__).with_name("nicknames.csv")
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")
ADDRESS_ABBREVIATIONS = {
    "road": "rd", "street": "st", "avenue": "ave", "lane": "ln", "drive": "dr", "close": "cl",
    "court": "ct", "crescent": "cres", "gardens": "gdns", "place": "pl", "square": "sq",
    "terrace": "ter", "grove": "gr", "park": "pk", "way": "wy", "house": "ho", "flat": "flt",
    "apartment": "flt", "north": "n", "south": "s", "east": "e", "west": "w",
}


# --------------------------------------------------------------------------- python
def strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def norm_name(value: str | None) -> str | None:
    if value is None:
        return None
    out = re.sub(r"[^a-z]", "", strip_accents(value.strip().lower()))
    return out or None


@lru_cache(maxsize=1)
def nicknames() -> dict[str, str]:
    """nickname (and canonical) -> canonical; a nickname listed twice keeps its first canonical."""
    out: dict[str, str] = {}
    with NICKNAMES_CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            canon = norm_name(row["canonical"])
            out.setdefault(canon, canon)
            for nick in row["nicknames"].split("|"):
                n = norm_name(nick)
                if n and n not in out:
                    out[n] = canon
    return out


def canonical_first_name(value: str | None) -> str | None:
    n = norm_name(value)
    return None if n is None else nicknames().get(n, n)


def norm_email(value: str | None) -> str | None:
    if value is None:
        return None
    out = re.sub(r"\s", "", value).lower()
    return out or None


def email_canonical(value: str | None) -> str | None:
    e = norm_email(value)
    if e is None or "@" not in e:
        return e
    local, domain = e.rsplit("@", 1)
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def phone_e164(value: str | None, region: str = "GB") -> str | None:
    """E.164 by phonenumbers; None when it is not a possible number."""
    if value is None or not re.search(r"\d", value):
        return None
    try:
        num = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def norm_postcode(value: str | None) -> str | None:
    if value is None:
        return None
    out = re.sub(r"[^A-Z0-9]", "", value.upper())
    return out or None


def norm_address(value: str | None) -> str | None:
    if value is None:
        return None
    s = re.sub(r"[^a-z0-9 ]", " ", strip_accents(value.lower()))
    words = [ADDRESS_ABBREVIATIONS.get(w, w) for w in s.split()]
    return " ".join(words) or None


# --------------------------------------------------------------------------- SQL
def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Temporary macros and the nickname table used by the record builders."""
    abbreviations = "MAP {" + ", ".join(f"'{word}': '{abbr}'" for word, abbr in ADDRESS_ABBREVIATIONS.items()) + "}"
    gmail_re = "|".join(d.replace(".", "\\.") for d in GMAIL_DOMAINS)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP MACRO id_norm_name(v) AS
            nullif(regexp_replace(lower(strip_accents(trim(v))), '[^a-z]', '', 'g'), '');
        CREATE OR REPLACE TEMP MACRO id_norm_email(v) AS
            nullif(lower(regexp_replace(v, '\\s', '', 'g')), '');
        CREATE OR REPLACE TEMP MACRO id_email_canon(e) AS
            CASE WHEN e IS NULL THEN NULL::VARCHAR
                 WHEN NOT contains(e, '@') THEN e
                 WHEN regexp_matches(e, '@({gmail_re})$') THEN  -- (split_part(..) = '..' here trips a DuckDB 2.0 binder bug)
                    replace(split_part(split_part(e, '@', 1), '+', 1), '.', '') || '@gmail.com'
                 ELSE split_part(split_part(e, '@', 1), '+', 1) || '@' || split_part(e, '@', -1) END;
        CREATE OR REPLACE TEMP MACRO id_digits(v) AS regexp_replace(v, '[^0-9+]', '', 'g');
        -- (plain expressions, no subqueries: a macro holding a SELECT runs as a correlated subquery per row)
        -- UK shapes: +44 N, +44 0N, 0044 N, 44 N (12 digits), 0N; N = [1-9][0-9]{{8,9}} (string ops, not regexes)
        CREATE OR REPLACE TEMP MACRO id_gb_nsn(d) AS
            CASE WHEN starts_with(d, '+440') THEN substr(d, 5) WHEN starts_with(d, '+44') THEN substr(d, 4)
                 WHEN starts_with(d, '0044') THEN substr(d, 5)
                 WHEN starts_with(d, '44') AND length(d) = 12 THEN substr(d, 3)
                 WHEN starts_with(d, '0') THEN substr(d, 2) END;
        CREATE OR REPLACE TEMP MACRO id_phone_gb_nsn(n) AS
            CASE WHEN length(n) BETWEEN 9 AND 10 AND NOT starts_with(n, '0') AND translate(n, '0123456789', '') = ''
                 THEN '+44' || n END;
        CREATE OR REPLACE TEMP MACRO id_phone_gb_digits(d) AS id_phone_gb_nsn(id_gb_nsn(d));
        CREATE OR REPLACE TEMP MACRO id_phone_gb_fast(v) AS id_phone_gb_digits(id_digits(v));
        CREATE OR REPLACE TEMP MACRO id_postcode(v) AS
            nullif(regexp_replace(upper(v), '[^A-Z0-9]', '', 'g'), '');
        -- the words, each abbreviated by a map lookup (a regexp_replace per street word cost 4x)
        CREATE OR REPLACE TEMP MACRO id_address(v) AS
            nullif(array_to_string(list_filter(list_transform(string_split_regex(lower(strip_accents(v)), '[^a-z0-9]+'),
                                                              lambda w: coalesce({abbreviations}[w], w)),
                                               lambda w: w <> ''), ' '), '');
        """
    )
    rows = sorted(nicknames().items())
    con.execute("CREATE OR REPLACE TEMP TABLE id_nicknames (name VARCHAR PRIMARY KEY, canon VARCHAR)")
    con.execute("INSERT INTO id_nicknames SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                [[r[0] for r in rows], [r[1] for r in rows]])


def blocked_sql(expr: str, values: list[str], patterns: list[str]) -> str:
    """``expr`` or NULL when it is a blocked value or matches a blocked pattern."""
    conds = []
    if values:
        vals = ", ".join(_lit(v.strip().lower()) for v in values)
        conds.append(f"lower({expr}) IN ({vals})")
    for p in patterns:
        conds.append(f"regexp_matches({expr}, {_lit(p)})")
    if not conds:
        return expr
    return f"CASE WHEN {' OR '.join(conds)} THEN NULL ELSE {expr} END"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def phone_fallback_table(con: duckdb.DuckDBPyConnection, raw_table: str, column: str, region: str,
                         fast: bool, out: str = "id_phone_map") -> None:
    """Map raw phone strings SQL could not settle to E.164 with phonenumbers (distinct values only).
    ``raw_table``: a table or a parenthesised subquery."""
    where = f"{column} IS NOT NULL AND regexp_matches({column}, '[0-9]')"
    if fast:
        where += " AND id_phone_gb_digits(phone_digits) IS NULL"  # (the table's digits of the value)
    values = [r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM {raw_table} WHERE {where}").fetchall()]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {out} (raw VARCHAR PRIMARY KEY, e164 VARCHAR)")
    if values:  # two list parameters, unnested side by side (no Arrow round trip)
        con.execute(f"INSERT INTO {out} SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                    [values, [phone_e164(v, region) for v in values]])
