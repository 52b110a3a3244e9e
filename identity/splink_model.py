"""The probabilistic half: Splink 5 on DuckDB, its settings as data, the training recipe,
prediction, parameter sanity checks and the model JSON kept per run.

Splink runs on its own in-memory DuckDB connection: the input records are handed over as
Arrow and the scored pairs come back the same way, so Splink's many intermediate tables
never land in (or lock) the warehouse file.

Training recipe (no labels needed), chosen for correlated fields at scale:

- ``probability_two_random_records_match`` from deterministic rules (same canonical email;
  same phone and first name) with an assumed recall.
- u by random sampling (``u_max_pairs`` pairs, seeded).
- m by EM in two sessions whose blocks are *independent* of what they estimate, never a
  first name + surname block: emails here are built from names, so in a name block
  non-matching pairs also agree on email-ish fields and EM learns that agreement as
  evidence of a match (the 0.21-precision failure in the issue). Session 1 blocks on the
  date of birth (estimates names, email, phone, address, postcode); session 2 blocks on the
  canonical email (estimates date of birth, postcode, address and the names again, which
  then average over both sessions).
- Email comparisons have no fuzzy level (a fuzzy email is mostly a fuzzy name, counted twice).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import duckdb

from core.settings.identity import IdentitySettings

log = logging.getLogger("tessera.identity")

SPLINK_COLUMNS = ("unique_id", "first_name", "first_name_canon", "last_name", "full_name", "email_canon",
                  "email_local", "phone", "address", "postcode", "postcode_outward", "dob", "city")


class ModelSanityError(RuntimeError):
    """A trained parameter makes no sense; the message names the comparison, level and why."""


def input_sql(schema: str = "identity") -> str:
    """Records that Splink can say something about: profile records with a name or a date of birth."""
    return f"""
        SELECT rid AS unique_id, first_name, first_name_canon, last_name,
               CASE WHEN first_name_canon IS NOT NULL AND last_name IS NOT NULL
                    THEN first_name_canon || ' ' || last_name END AS full_name, email_canon, email_local, phone,
               address, postcode, postcode_outward, CAST(date_of_birth AS VARCHAR) AS dob,
               nullif(trim(regexp_replace(lower(city_display), '[^a-z0-9]+', ' ', 'g')), '') AS city
        FROM {schema}.records
        WHERE NOT is_satellite AND (first_name IS NOT NULL OR last_name IS NOT NULL OR date_of_birth IS NOT NULL)
        ORDER BY rid"""  # (a fixed order, whatever the table's: Splink's seeded sampling of pairs depends on it)


def _lvl(sql: str, label: str, **kw) -> dict:
    return {"sql_condition": sql, "label_for_charts": label, **kw}


def _null(col: str) -> dict:
    return _lvl(f'"{col}_l" IS NULL OR "{col}_r" IS NULL', "null", is_null_level=True)


def _else() -> dict:
    return _lvl("ELSE", "else")


def comparisons(tf: bool = True) -> list[dict]:
    tf_full = {"tf_adjustment_column": "full_name", "tf_adjustment_weight": 1.0} if tf else {}
    # a shared family or office mailbox and a big city are weaker evidence than a rare one
    tf_email = {"tf_adjustment_column": "email_canon", "tf_adjustment_weight": 1.0} if tf else {}
    tf_pc = {"tf_adjustment_column": "postcode", "tf_adjustment_weight": 1.0} if tf else {}
    tf_city = {"tf_adjustment_column": "city", "tf_adjustment_weight": 1.0} if tf else {}
    fn, ln = '"first_name_canon_{}"', '"last_name_{}"'
    # fuzzy: Jaro-Winkler, or one edit (short names: amy/aym, ben/bne score below any JW bar)
    # (the edit distance only for short names: it is the costly part of sampling u)
    jw = ("(jaro_winkler_similarity(\"{c}_l\", \"{c}_r\") >= 0.88 OR (length(\"{c}_l\") <= 5 AND "
          "damerau_levenshtein(\"{c}_l\", \"{c}_r\") <= 1))")
    cross = ('(jaro_winkler_similarity("{a}_l", "{b}_r") >= 0.88 OR (length("{a}_l") <= 5 AND '
             'damerau_levenshtein("{a}_l", "{b}_r") <= 1))')
    return [
        {
            # One comparison for the whole name: first and surname are not independent evidence
            # (a swapped pair would otherwise count twice), and the frequency of the *full*
            # name is what makes an exact match strong or weak.
            "output_column_name": "name",
            "comparison_description": "first name + surname: exact (nickname-aware), swapped, one or both fuzzy",
            "comparison_levels": [
                _lvl('("first_name_l" IS NULL AND "last_name_l" IS NULL) OR ("first_name_r" IS NULL AND "last_name_r" IS NULL)',
                     "null", is_null_level=True),
                _lvl('"full_name_l" = "full_name_r"', "both exact (nickname-aware)", **tf_full),
                _lvl(f'{cross.format(a="first_name", b="last_name")} AND {cross.format(a="last_name", b="first_name")}',
                     "swapped (exact or fuzzy)"),
                _lvl(f'{ln.format("l")} = {ln.format("r")} AND {jw.format(c="first_name")}', "surname exact, first name fuzzy"),
                _lvl(f'{fn.format("l")} = {fn.format("r")} AND {jw.format(c="last_name")}', "first name exact, surname fuzzy"),
                _lvl(f'{jw.format(c="first_name")} AND {jw.format(c="last_name")}', "both fuzzy"),
                # one name missing on one side, the other agreeing (a NULL is no disagreement)
                _lvl(f'("first_name_l" IS NULL OR "first_name_r" IS NULL) AND {jw.format(c="last_name")}',
                     "first name missing, surname exact or fuzzy"),
                _lvl(f'("last_name_l" IS NULL OR "last_name_r" IS NULL) AND {jw.format(c="first_name")}',
                     "surname missing, first name exact or fuzzy"),
                _lvl(f'{ln.format("l")} = {ln.format("r")}', "surname exact only"),
                _lvl(jw.format(c="last_name"), "surname fuzzy only"),
                _lvl(f'{fn.format("l")} = {fn.format("r")}', "first name exact only"),
                # one name typed in the other field, the other name replaced or missing
                _lvl(f'{cross.format(a="first_name", b="last_name")} OR {cross.format(a="last_name", b="first_name")}',
                     "one name in the other field"),
                _else(),
            ],
        },
        {
            "output_column_name": "email",
            "comparison_description": "email: canonical exact, same domain and user part one or two edits apart",
            "comparison_levels": [
                _null("email_canon"),
                _lvl('"email_canon_l" = "email_canon_r"', "canonical exact", **tf_email),
                # a mistyped user part at the same provider; a different domain with the same
                # user part is left to the else level (common user parts are not one person)
                _lvl("split_part(\"email_canon_l\", '@', 2) = split_part(\"email_canon_r\", '@', 2) AND "
                     "damerau_levenshtein(split_part(\"email_canon_l\", '@', 1), split_part(\"email_canon_r\", '@', 1)) <= 2",
                     "same domain, user part within 2 edits"),
                _else(),
            ],
        },
        {
            "output_column_name": "phone",
            "comparison_description": "phone: E.164 exact, same last 9 digits",
            "comparison_levels": [
                _null("phone"),
                _lvl('"phone_l" = "phone_r"', "exact"),
                _lvl('right("phone_l", 9) = right("phone_r", 9)', "same last 9 digits"),
                _else(),
            ],
        },
        {
            "output_column_name": "date_of_birth",
            "comparison_description": "date of birth: exact, one edit or day/month swapped, within 31 days, same year",
            "comparison_levels": [
                _null("dob"),
                _lvl('"dob_l" = "dob_r"', "exact"),
                _lvl('damerau_levenshtein("dob_l", "dob_r") <= 1 OR (substr("dob_l", 1, 4) = substr("dob_r", 1, 4) '
                     'AND substr("dob_l", 6, 2) = substr("dob_r", 9, 2) AND substr("dob_l", 9, 2) = substr("dob_r", 6, 2))',
                     "one edit or day/month swapped"),
                _lvl('abs(date_diff(\'day\', TRY_CAST("dob_l" AS DATE), TRY_CAST("dob_r" AS DATE))) <= 31', "within 31 days"),
                _lvl('substr("dob_l", 1, 4) = substr("dob_r", 1, 4)', "same year"),
                _else(),
            ],
        },
        {
            "output_column_name": "address",
            "comparison_description": "address: exact, Jaro-Winkler >= 0.95, >= 0.88",
            "comparison_levels": [
                _null("address"),
                _lvl('"address_l" = "address_r"', "exact"),
                _lvl('jaro_winkler_similarity("address_l", "address_r") >= 0.95', "Jaro-Winkler >= 0.95"),
                _lvl('jaro_winkler_similarity("address_l", "address_r") >= 0.88', "Jaro-Winkler >= 0.88"),
                _else(),
            ],
        },
        {
            "output_column_name": "postcode",
            "comparison_description": "postcode: exact, one edit or two digits swapped, same district",
            "comparison_levels": [
                _null("postcode"),
                _lvl('"postcode_l" = "postcode_r"', "exact", **tf_pc),
                _lvl('damerau_levenshtein("postcode_l", "postcode_r") <= 1', "one edit or two characters swapped"),
                _lvl('"postcode_outward_l" = "postcode_outward_r"', "same district"),
                _else(),
            ],
        },
        {
            "output_column_name": "city",
            "comparison_description": "city: exact, Jaro-Winkler >= 0.92",
            "comparison_levels": [
                _null("city"),
                _lvl('"city_l" = "city_r"', "exact", **tf_city),
                _lvl('jaro_winkler_similarity("city_l", "city_r") >= 0.92', "one typo off"),
                _else(),
            ],
        },
    ]


# Candidate blocking rules for prediction, strongest first: each an equi-join on a key whose
# columns the data may or may not have. The recipe keeps those whose columns are present and
# whose blocks stay small (pairs counted exactly with one GROUP BY per rule).
BLOCKING_CANDIDATES = [
    ("first_name_canon", "last_name"),
    "l.first_name = r.last_name AND l.last_name = r.first_name",
    ("dob", "last_name"),
    ("dob", "first_name_canon"),
    ("dob", "postcode"),
    ("postcode", "first_name_canon"),
    ("postcode", "last_name"),
    ("dob", "city"),
    ("address", "postcode"),
    ("address", "city"),
    ("email_local",),
    ("phone",),
    ("postcode",),  # a typo'd or missing name: the postcode alone, when its blocks are small
]
# Deterministic rules for lambda (few false positives), used when their columns are present.
LAMBDA_CANDIDATES = [
    ("email_canon",),
    ("phone", "first_name_canon"),
    ("first_name_canon", "last_name", "dob"),
    ("first_name_canon", "last_name", "address"),
]
# EM session blocks, preferred first: independent of names where possible (emails here are
# often built from names, so in a name block non-matches also agree on email-ish fields and
# EM learns that agreement as evidence of a match); the name block only as the last resort.
EM_CANDIDATES = [("dob",), ("email_canon",), ("postcode",), ("phone",), ("address",), ("email_local",),
                 ("first_name_canon", "last_name")]
# Columns each comparison reads (a comparison whose columns are empty everywhere is left out).
COMPARISON_COLUMNS = {
    "name": ("first_name", "last_name"), "email": ("email_canon",), "phone": ("phone",), "date_of_birth": ("dob",),
    "address": ("address",), "postcode": ("postcode",), "city": ("city",),
}
MIN_FILL = 0.005  # a column filled on fewer records than this counts as absent
MIN_EM_FILL = 0.05  # an EM block needs the key on this share of records at least
MAX_PAIRS_PER_RECORD = 20  # a prediction rule whose blocks make more pairs than this per record is dropped


def _rule_sql(rule) -> str:
    return rule if isinstance(rule, str) else " AND ".join(f'l."{c}" = r."{c}"' for c in rule)


def _rule_columns(rule) -> tuple[str, ...]:
    if isinstance(rule, str):
        return tuple(sorted(set(re.findall(r"[lr]\.\"?(\w+)", rule))))
    return tuple(rule)


def profile(db: duckdb.DuckDBPyConnection, table: str = "identity_input") -> dict[str, dict]:
    """Fill rate and distinct count of every input column, and the record count."""
    cols = [c for c in SPLINK_COLUMNS if c != "unique_id"]
    row = db.execute("SELECT count(*), " + ", ".join(
        f'count("{c}"), approx_count_distinct("{c}")' for c in cols) + f" FROM {table}").fetchall()[0]
    n = row[0]
    out = {"records": n}
    for i, c in enumerate(cols):
        out[c] = {"fill": round(row[1 + 2 * i] / n, 4) if n else 0.0, "distinct": int(row[2 + 2 * i])}
    return out


def block_pairs(db: duckdb.DuckDBPyConnection, rule, table: str = "identity_input") -> int:
    """Pairs an equi-join rule makes (exact: sum of n(n-1)/2 over its blocks)."""
    cols = _rule_columns(rule)
    if isinstance(rule, str):  # the swapped-name rule: bounded by the name block's size
        cols = ("first_name", "last_name")
    keys = ", ".join(f'"{c}"' for c in cols)
    nn = " AND ".join(f'"{c}" IS NOT NULL' for c in cols)
    return int(db.execute(f"SELECT coalesce(sum(n * (n - 1) / 2), 0) FROM (SELECT count(*) AS n FROM {table} "
                          f"WHERE {nn} GROUP BY {keys})").fetchall()[0][0])


def choose_recipe(db: duckdb.DuckDBPyConnection, settings: IdentitySettings, table: str = "identity_input") -> dict:
    """The training recipe for the data at hand (saved with the model, so a run can be read
    back): comparisons, prediction blocking rules, lambda rules and EM session blocks, each
    chosen from the columns present; any of them can be fixed in cdp.yaml (identity.splink)."""
    s = settings.splink
    prof = profile(db, table)
    n = prof["records"]
    present = {c for c, p in prof.items() if c != "records" and p["fill"] >= MIN_FILL and p["distinct"] >= 2}
    # derived columns are only as present as what they are derived from
    comps = [name for name, cols in COMPARISON_COLUMNS.items() if any(c in present for c in cols)]
    if s.blocking_rules is not None:
        blocking = list(s.blocking_rules)
    else:
        cap = max(MAX_PAIRS_PER_RECORD * n, 10_000)
        blocking = [_rule_sql(r) for r in BLOCKING_CANDIDATES
                    if set(_rule_columns(r)) <= present and block_pairs(db, r, table) <= cap]
    lam = list(s.lambda_rules) if s.lambda_rules is not None else [
        _rule_sql(r) for r in LAMBDA_CANDIDATES if set(r) <= present]
    if s.em_blocks is not None:
        em = list(s.em_blocks)
    else:
        em, untrained = [], set(comps)
        for key in EM_CANDIDATES:
            if not all(c in present and prof[c]["fill"] >= MIN_EM_FILL for c in key):
                continue
            trains = {c for c in comps if not set(COMPARISON_COLUMNS[c]) & _em_columns(key)}
            if trains & untrained or (trains and len(em) < 2):
                em.append(_rule_sql(key))
                untrained -= trains
            if not untrained and len(em) >= 2:
                break
    return {"profile": prof, "comparisons": comps, "blocking_rules": blocking, "lambda_rules": lam,
            "em_blocks": em, "postcode_district_chars": _district_chars(db, settings, table)}


def _em_columns(key: tuple[str, ...]) -> set[str]:
    """Columns a block key stands for (the name block also decides the full name)."""
    cols = set(key)
    if {"first_name_canon", "last_name"} & cols:
        cols |= {"first_name", "last_name"}
    if "email_local" in cols:
        cols.add("email_canon")  # (the same address, mostly: it cannot train the email comparison)
    return cols


def _district_chars(db: duckdb.DuckDBPyConnection, settings: IdentitySettings, table: str) -> int:
    """Characters of a postcode that make its district level: configured, or from the data:
    all-digit postcodes (US ZIP, AU, DE...) keep the first 3; others (UK, CA) drop the last 3
    (returned as -3)."""
    if settings.splink.postcode_district_chars is not None:
        return settings.splink.postcode_district_chars
    digits, total = db.execute(f"""SELECT count(*) FILTER (WHERE regexp_full_match(postcode, '[0-9]+')), count(postcode)
                                   FROM {table}""").fetchall()[0]
    return 3 if total and digits >= 0.9 * total else -3


def district_sql(chars: int) -> str:
    """SQL for the postcode's district (the postcode_outward column) from ``postcode``."""
    return (f"left(postcode, {chars})" if chars > 0 else
            f"CASE WHEN length(postcode) > {-chars} THEN left(postcode, length(postcode) - {-chars}) END")


def apply_district(db: duckdb.DuckDBPyConnection, chars: int, table: str = "identity_input") -> None:
    db.execute(f"UPDATE {table} SET postcode_outward = {district_sql(chars)}")


def settings_dict(settings: IdentitySettings, recipe: dict) -> dict[str, Any]:
    """The whole Splink model specification, as data."""
    s = settings.splink
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unique_id",
        "comparisons": [c for c in comparisons(s.term_frequencies) if c["output_column_name"] in recipe["comparisons"]],
        "blocking_rules_to_generate_predictions": [{"blocking_rule": b} for b in recipe["blocking_rules"]],
        "max_iterations": s.max_iterations,
        "em_convergence": 0.0001,
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
        "probability_two_random_records_match": 0.0001,
    }


RECIPE_KEY = "tessera_recipe"  # the recipe, kept in the saved model JSON beside Splink's settings


def _quiet_splink() -> None:
    for name in ("splink", "splink.internals"):
        logging.getLogger(name).setLevel(logging.ERROR)


def spec_and_recipe(db, settings: IdentitySettings, model: dict | Path | None = None,
                    table: str = "identity_input") -> tuple[dict[str, Any], dict]:
    """Splink's settings and Tessera's recipe: chosen for the records in ``table`` (``db``:
    anything with DuckDB's ``execute(sql).fetchall()``), or read back from a saved model.
    Both engines' linkers are built from this (identity/spark_splink.py: Spark's)."""
    if model is None:
        recipe = choose_recipe(db, settings, table)
        return settings_dict(settings, recipe), recipe
    spec = dict(json.loads(Path(model).read_text()) if isinstance(model, (str, Path)) else model)
    return spec, spec.pop(RECIPE_KEY, None) or {"postcode_district_chars": -3}


def make_linker(arrow_table, settings: IdentitySettings, model: dict | Path | None = None, threads: int | None = None,
                memory_limit_mb: int | None = None, temp_directory: str | Path | None = None):
    """A Splink linker on a DuckDB database of its own, in memory. ``memory_limit_mb`` bounds it
    (unbounded, DuckDB takes up to 80% of the machine's memory); past it, DuckDB spills to
    ``temp_directory`` (its default is ``.tmp`` in the working directory: name one)."""
    from splink import DuckDBAPI, Linker

    _quiet_splink()
    db = duckdb.connect()
    if threads:
        db.execute(f"SET threads = {int(threads)}")
    if temp_directory is not None:
        db.execute("SET temp_directory = ?", [str(temp_directory)])
    if memory_limit_mb:
        db.execute(f"SET memory_limit = '{int(memory_limit_mb)}MiB'")
    db.register("_records_arrow", arrow_table)
    db.execute("CREATE TABLE identity_input AS SELECT * FROM _records_arrow")
    db.unregister("_records_arrow")
    spec, recipe = spec_and_recipe(db, settings, model)
    apply_district(db, recipe["postcode_district_chars"])
    api = DuckDBAPI(connection=db)
    sdf = api.register("identity_input")
    linker = Linker(sdf, spec, log_level=None)
    linker.tessera_recipe = recipe  # (read by train() and model_dict())
    return linker, db


def _fallback_lambda(n: int) -> float:
    """When no deterministic rule can be counted: about one duplicate per record (1/n), kept
    inside (0, 0.5) so EM never takes log 0."""
    return min(max(1.0 / max(n, 2), 1e-9), 0.1)


def train(linker, settings: IdentitySettings, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The recipe chosen for the data (choose_recipe); returns seconds per step."""
    import time

    say = progress or (lambda m: None)
    t: dict[str, float] = {}
    s = settings.splink
    recipe = linker.tessera_recipe
    n = recipe["profile"]["records"]
    t0 = time.perf_counter()
    sobj = linker._settings_obj
    lam = None
    if recipe["lambda_rules"]:
        try:
            linker.training.estimate_probability_two_random_records_match(
                recipe["lambda_rules"], recall=s.recall_of_deterministic_rules)
            lam = sobj._probability_two_random_records_match
        except ValueError as e:  # more deterministic matches than the recall allows: tiny data
            log.info("lambda estimate from rules failed: %s", e)
            lam = 0.01
    if not lam or not (0 < lam < 0.5):  # no rule, or the rules found no pair at all
        lam = _fallback_lambda(n)
    sobj._probability_two_random_records_match = lam
    recipe["lambda"] = lam
    t["lambda"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    linker.training.estimate_u_using_random_sampling(max_pairs=s.u_max_pairs, seed=s.seed)
    t["u"] = time.perf_counter() - t0
    say(f"splink: u estimated from {s.u_max_pairs:,.0f} random pairs ({t['u']:.1f}s)")
    for i, rule in enumerate(recipe["em_blocks"]):
        t0 = time.perf_counter()
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(
                rule, estimate_without_term_frequencies=True, max_pairs=s.em_max_pairs)
        except Exception as e:  # (e.g. a block with no pairs): the levels stay untrained, smoothed later
            log.warning("EM session blocked on %s skipped: %s", rule, e)
        t[f"em_{i + 1}"] = time.perf_counter() - t0
        say(f"splink: EM session blocked on `{rule}` ({t[f'em_{i + 1}']:.1f}s)")
    # Splink 5 hands back an EM session's lambda with its m values. On a small project (a few
    # hundred records, an EM block on dob) it comes back > 0.5, which no real population has:
    # then the lambda estimated above from the deterministic rules stands. (Where it comes back
    # sane it is kept: every published accuracy figure was measured that way.)
    trained = sobj._probability_two_random_records_match
    if not (0 < trained < 0.5):
        log.info("EM's lambda %.3g is outside (0, 0.5); keeping the rules' estimate %.3g", trained, lam)
        sobj._probability_two_random_records_match = lam
    return t


def predict(linker, threshold: float):
    """Scored pairs at or above the threshold, as an Arrow table (unique_id_l, unique_id_r, match_probability)."""
    df = linker.inference.predict(threshold_match_probability=threshold, warning_mode="never")
    db = linker._db_api.duckdb_con
    return db.sql(
        f"SELECT unique_id_l, unique_id_r, match_probability, match_weight FROM {df.physical_name}").to_arrow_table()


def predict_new(linker, threshold: float, new_rids):
    """Scored pairs that hold at least one of ``new_rids`` (an Arrow table, column unique_id): the new
    records against the others (Splink's predict_between) and among themselves (predict_within),
    blocked by the model's rules and scored with term frequencies over all records, as predict()
    would score them. Same columns as predict(), unique_id_l < unique_id_r."""
    db = linker._db_api.duckdb_con
    api = linker._db_api
    for tf_col in linker._settings_obj._term_frequency_columns:
        linker.table_management.compute_tf_table(tf_col.unquote().name)
    db.register("_new_rids", new_rids)
    db.execute("CREATE OR REPLACE TABLE id_new AS SELECT * FROM identity_input "
               "WHERE unique_id IN (SELECT unique_id FROM _new_rids)")
    db.execute("CREATE OR REPLACE TABLE id_old AS SELECT * FROM identity_input "
               "WHERE unique_id NOT IN (SELECT unique_id FROM _new_rids)")
    db.unregister("_new_rids")
    new, old = api.register("id_new"), api.register("id_old")
    parts = [linker.inference.predict_within(new, threshold_match_probability=threshold, warning_mode="never")]
    if db.sql("SELECT count(*) FROM id_old").fetchall()[0][0]:
        parts.append(linker.inference.predict_between(new, old, threshold_match_probability=threshold,
                                                      warning_mode="never"))
    union = " UNION ALL ".join(
        f"SELECT least(unique_id_l, unique_id_r) AS unique_id_l, greatest(unique_id_l, unique_id_r) AS unique_id_r, "
        f"match_probability, match_weight FROM {p.physical_name}" for p in parts)
    return db.sql(f"SELECT * FROM ({union}) ORDER BY unique_id_l, unique_id_r").to_arrow_table()


M_FLOOR = 1e-4  # smallest m kept: one unseen disagreement must not be an absolute veto
M_UNOBSERVED = 0.01  # m of a level EM never saw among matches (then m is renormalised)


def smooth_untrained(linker) -> list[str]:
    """Levels EM never saw get m = u (no evidence either way); m below M_FLOOR is raised to it.

    Returns notes on what was filled (reported, not fatal)."""
    notes = []
    for comp in linker._settings_obj.comparisons:
        levels = [lv for lv in comp.comparison_levels if not lv.is_null_level]
        ms = []
        for lv in levels:
            m, u = lv._m_probability, lv._u_probability
            label = f"{comp.output_column_name} / {lv.label_for_charts}"
            if not isinstance(u, float) or u <= 0:
                lv._u_probability = M_FLOOR
                notes.append(f"{label}: u not observed in the random sample, set to {M_FLOOR}")
            if not isinstance(m, float):
                m = M_UNOBSERVED
                notes.append(f"{label}: m not observed in training, set to {M_UNOBSERVED}")
            ms.append(max(m, M_FLOOR))
        total = sum(ms)
        for lv, m in zip(levels, ms):
            lv._m_probability = m / total
    return notes


def model_dict(linker) -> dict:
    md = linker.misc.save_model_to_json()
    recipe = getattr(linker, "tessera_recipe", None)
    if recipe is not None:
        md[RECIPE_KEY] = recipe
    return md


# --------------------------------------------------------------------------- sanity
def check_parameters(model: dict) -> list[str]:
    """Problems with a trained model's parameters (empty = sane).

    - every m and u is a probability (0 < p <= 1, not NaN), and each comparison's m and u
      sum to ~1 over its non-null levels;
    - the first (strictest) agreement level is evidence *for* a match (m > u) and the else
      level evidence *against* (m < u);
    - no agreement level is evidence against a match while a looser level of the same
      comparison is evidence for one (Bayes factors must not increase as agreement loosens,
      beyond a factor of 2 of slack for noise);
    - probability_two_random_records_match is in (0, 0.5).
    """
    problems: list[str] = []
    lam = model.get("probability_two_random_records_match")
    if lam is None or not (0 < lam < 0.5):
        problems.append(f"probability_two_random_records_match = {lam!r} is not in (0, 0.5)")
    for comp in model.get("comparisons", []):
        name = comp.get("output_column_name", "?")
        levels = [lv for lv in comp["comparison_levels"] if not lv.get("is_null_level")]
        bfs = _bayes_factors(name, levels, problems)
        _check_direction(name, levels, bfs, problems)
        _check_monotone(name, levels, bfs, problems)
    return problems


def _is_probability(p) -> bool:
    return p is not None and not (isinstance(p, float) and math.isnan(p)) and 0 < p <= 1


def _bayes_factors(name: str, levels: list[dict], problems: list[str]) -> list[float | None]:
    """m/u per level (None where either is not a probability); reports bad probabilities and
    m or u not summing to ~1 over the levels."""
    ms, us, bfs = [], [], []
    for lv in levels:
        label = lv.get("label_for_charts", lv["sql_condition"])
        m, u = lv.get("m_probability"), lv.get("u_probability")
        for what, p in (("m", m), ("u", u)):
            if not _is_probability(p):
                problems.append(f"{name} / {label}: {what}-probability {p!r} is not a probability in (0, 1]")
        if m is None or u is None or not (0 < m <= 1) or not (0 < u <= 1):
            bfs.append(None)
            continue
        ms.append(m)
        us.append(u)
        bfs.append(m / u)
    for what, vals in (("m", ms), ("u", us)):
        if vals and abs(sum(vals) - 1) > 0.02:
            problems.append(f"{name}: {what}-probabilities sum to {sum(vals):.3f}, not 1")
    return bfs


def _check_direction(name: str, levels: list[dict], bfs: list[float | None], problems: list[str]) -> None:
    """Exact agreement counts for a match, the else level against."""
    if bfs and bfs[0] is not None and bfs[0] <= 1:
        problems.append(f"{name} / {levels[0].get('label_for_charts')}: exact agreement has m={levels[0]['m_probability']:.4g} "
                        f"<= u={levels[0]['u_probability']:.4g}, i.e. agreeing counts against a match")
    if bfs and bfs[-1] is not None and bfs[-1] >= 1:
        problems.append(f"{name} / else: disagreement has m={levels[-1]['m_probability']:.4g} "
                        f">= u={levels[-1]['u_probability']:.4g}, i.e. disagreeing counts for a match")


# Levels that agree on one part of a field only ("surname exact only", "first name exact only"):
# they are not looser versions of one another, so their order says nothing about their Bayes
# factors (on data with households a shared surname alone is evidence *against* a match, while
# a first name alone is slightly for one).
PARTIAL_LEVELS = frozenset({"surname exact only", "surname fuzzy only", "first name exact only",
                            "one name in the other field"})


def _check_monotone(name: str, levels: list[dict], bfs: list[float | None], problems: list[str]) -> None:
    """No level is evidence against while a looser one is (2x slack for noise); partial levels
    are left out of the comparison."""
    partial = [lv.get("label_for_charts") in PARTIAL_LEVELS for lv in levels]
    for i in range(1, len(bfs) - 1):
        if partial[i]:
            continue
        looser = [b for b, part in zip(bfs[i + 1:-1], partial[i + 1:-1]) if b is not None and not part]
        if bfs[i] is not None and bfs[i] < 1 and looser and max(looser) > 2 * max(bfs[i], 1e-12) and max(looser) > 1:
            problems.append(f"{name} / {levels[i].get('label_for_charts')}: Bayes factor {bfs[i]:.3g} is below "
                            f"that of a looser level ({max(looser):.3g})")
