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
from pathlib import Path
from typing import Any, Callable

import duckdb

from core.settings.identity import IdentitySettings

log = logging.getLogger("tessera.identity")

SPLINK_COLUMNS = ("unique_id", "first_name", "first_name_canon", "last_name", "full_name", "email_canon",
                  "email_local", "phone", "address", "postcode", "postcode_outward", "dob")


class ModelSanityError(RuntimeError):
    """A trained parameter makes no sense; the message names the comparison, level and why."""


def input_sql(schema: str = "identity") -> str:
    """Records that Splink can say something about: profile records with a name or a date of birth."""
    return f"""
        SELECT rid AS unique_id, first_name, first_name_canon, last_name,
               CASE WHEN first_name_canon IS NOT NULL AND last_name IS NOT NULL
                    THEN first_name_canon || ' ' || last_name END AS full_name, email_canon, email_local, phone,
               address, postcode, postcode_outward, CAST(date_of_birth AS VARCHAR) AS dob
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
    fn, ln = '"first_name_canon_{}"', '"last_name_{}"'
    jw = "jaro_winkler_similarity(\"{c}_l\", \"{c}_r\") >= 0.88"
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
                _lvl('"first_name_l" = "last_name_r" AND "last_name_l" = "first_name_r"', "swapped"),
                _lvl(f'{ln.format("l")} = {ln.format("r")} AND {jw.format(c="first_name")}', "surname exact, first name fuzzy"),
                _lvl(f'{fn.format("l")} = {fn.format("r")} AND {jw.format(c="last_name")}', "first name exact, surname fuzzy"),
                _lvl(f'{jw.format(c="first_name")} AND {jw.format(c="last_name")}', "both fuzzy"),
                _lvl(f'{ln.format("l")} = {ln.format("r")}', "surname exact only"),
                _lvl(f'{fn.format("l")} = {fn.format("r")}', "first name exact only"),
                _else(),
            ],
        },
        {
            "output_column_name": "email",
            "comparison_description": "email: canonical exact (no fuzzy level: a fuzzy email is mostly a fuzzy name)",
            "comparison_levels": [
                _null("email_canon"),
                _lvl('"email_canon_l" = "email_canon_r"', "canonical exact"),
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
            "comparison_description": "date of birth: exact, one character off (a typo or swapped day/month digit)",
            "comparison_levels": [
                _null("dob"),
                _lvl('"dob_l" = "dob_r"', "exact"),
                _lvl('damerau_levenshtein("dob_l", "dob_r") <= 1', "one edit"),
                _else(),
            ],
        },
        {
            "output_column_name": "postcode",
            "comparison_description": "postcode: exact, same district (outward code)",
            "comparison_levels": [
                _null("postcode"),
                _lvl('"postcode_l" = "postcode_r"', "exact"),
                _lvl('"postcode_outward_l" = "postcode_outward_r"', "same district"),
                _else(),
            ],
        },
        {
            "output_column_name": "address",
            "comparison_description": "first address line: exact, Jaro-Winkler >= 0.9",
            "comparison_levels": [
                _null("address"),
                _lvl('"address_l" = "address_r"', "exact"),
                _lvl('jaro_winkler_similarity("address_l", "address_r") >= 0.9', "jaro-winkler >= 0.9"),
                _else(),
            ],
        },
    ]


BLOCKING_RULES = [
    # Each rule is an equi-join on a selective key, so pairs grow ~linearly with records.
    'l.first_name_canon = r.first_name_canon AND l.last_name = r.last_name',
    'l.first_name = r.last_name AND l.last_name = r.first_name',
    'l.dob = r.dob AND l.last_name = r.last_name',
    'l.dob = r.dob AND l.first_name_canon = r.first_name_canon',
    'l.dob = r.dob AND l.postcode = r.postcode',
    'l.postcode = r.postcode AND l.first_name_canon = r.first_name_canon',
    'l.email_local = r.email_local',
    'l.phone = r.phone',
]


def settings_dict(settings: IdentitySettings) -> dict[str, Any]:
    """The whole Splink model specification, as data."""
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unique_id",
        "comparisons": comparisons(settings.splink.term_frequencies),
        "blocking_rules_to_generate_predictions": [{"blocking_rule": b} for b in BLOCKING_RULES],
        "max_iterations": settings.splink.max_iterations,
        "em_convergence": 0.0001,
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
        "probability_two_random_records_match": 0.0001,
    }


DETERMINISTIC_RULES_FOR_LAMBDA = [
    "l.email_canon = r.email_canon",
    "l.phone = r.phone AND l.first_name_canon = r.first_name_canon",
]
EM_SESSIONS = [
    "l.dob = r.dob",
    "l.email_canon = r.email_canon",
]


def _quiet_splink() -> None:
    for name in ("splink", "splink.internals"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_linker(arrow_table, settings: IdentitySettings, model: dict | Path | None = None, threads: int | None = None):
    from splink import DuckDBAPI, Linker

    _quiet_splink()
    db = duckdb.connect()
    if threads:
        db.execute(f"SET threads = {int(threads)}")
    db.register("_records_arrow", arrow_table)
    db.execute("CREATE TABLE identity_input AS SELECT * FROM _records_arrow")
    db.unregister("_records_arrow")
    api = DuckDBAPI(connection=db)
    sdf = api.register("identity_input")
    spec: Any = settings_dict(settings) if model is None else (
        json.loads(Path(model).read_text()) if isinstance(model, (str, Path)) else model)
    linker = Linker(sdf, spec, log_level=None)
    return linker, db


def train(linker, settings: IdentitySettings, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The training recipe above; returns seconds per step."""
    import time

    say = progress or (lambda m: None)
    t: dict[str, float] = {}
    s = settings.splink
    t0 = time.perf_counter()
    try:
        linker.training.estimate_probability_two_random_records_match(
            DETERMINISTIC_RULES_FOR_LAMBDA, recall=s.recall_of_deterministic_rules)
    except ValueError as e:  # more deterministic matches than the recall allows: tiny data
        log.info("lambda estimate skipped: %s", e)
        linker._settings_obj._probability_two_random_records_match = 0.01
    t["lambda"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    linker.training.estimate_u_using_random_sampling(max_pairs=s.u_max_pairs, seed=s.seed)
    t["u"] = time.perf_counter() - t0
    say(f"splink: u estimated from {s.u_max_pairs:,.0f} random pairs ({t['u']:.1f}s)")
    for i, rule in enumerate(EM_SESSIONS):
        t0 = time.perf_counter()
        linker.training.estimate_parameters_using_expectation_maximisation(
            rule, estimate_without_term_frequencies=True, max_pairs=s.em_max_pairs)
        t[f"em_{i + 1}"] = time.perf_counter() - t0
        say(f"splink: EM session blocked on `{rule}` ({t[f'em_{i + 1}']:.1f}s)")
    return t


def predict(linker, threshold: float):
    """Scored pairs at or above the threshold, as an Arrow table (unique_id_l, unique_id_r, match_probability)."""
    df = linker.inference.predict(threshold_match_probability=threshold, warning_mode="never")
    db = linker._db_api.duckdb_con
    return db.sql(
        f"SELECT unique_id_l, unique_id_r, match_probability, match_weight FROM {df.physical_name}").to_arrow_table()


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
    return linker.misc.save_model_to_json()


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


def _check_monotone(name: str, levels: list[dict], bfs: list[float | None], problems: list[str]) -> None:
    """No level is evidence against while a looser one is (2x slack for noise)."""
    for i in range(1, len(bfs) - 1):
        looser = [b for b in bfs[i + 1:-1] if b is not None]
        if bfs[i] is not None and bfs[i] < 1 and looser and max(looser) > 2 * max(bfs[i], 1e-12) and max(looser) > 1:
            problems.append(f"{name} / {levels[i].get('label_for_charts')}: Bayes factor {bfs[i]:.3g} is below "
                            f"that of a looser level ({max(looser):.3g})")
