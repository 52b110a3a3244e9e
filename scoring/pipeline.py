"""The scoring stage against the warehouse: read dbt's feature tables, train and score, write
schema `scoring` (churn_predictions, cart_predictions, offer_decisions, model_metrics).

Runs after dbt's core models (features, consent, traits) and before the dbt marts tagged
`after_scoring`, which publish these tables as churn_scores, cart_intent, next_best_offer and
model_metrics. Plain functions over a DuckDB connection; Dagster only calls `run_scoring`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import duckdb
import pandas as pd
from threadpoolctl import threadpool_limits

from core.published import ManifestError, published_table
from core.settings.experiments import Experiment
from core.settings.scoring import CartIntentSettings, ChurnSettings, OffersSettings, RecommendationsSettings
from core.warehouse import table_exists
from scoring import cart, churn, model_store, recommend_store
from scoring.offers import decide_offers

log = logging.getLogger("tessera.scoring")
SCHEMA = "scoring"
# scikit-learn's OpenMP pool (gradient boosting) spins on every core: on a shared machine that
# made a 2,000-row fit take 10 s instead of 0.4 s. One thread is fast and predictable here.
MODEL_THREADS = 1


@dataclass
class ScoringResult:
    churn: churn.ChurnResult
    cart: cart.CartResult
    offers: pd.DataFrame
    metrics: pd.DataFrame
    # model -> why it was skipped (too little history); its tables are written empty
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        """Figures for asset metadata and the run summary."""
        c, k = self.churn, self.cart
        offers = self.offers
        return {
            "skipped_models": dict(self.skipped),
            "churn_algorithm": c.algorithm, "churn_model_version": c.model_version,
            **{f"churn_validation_{m}": round(c.validation[m], 4)
               for m in ("roc_auc", "pr_auc", "brier", "positive_rate", "mean_predicted", "ece") if m in c.validation},
            "churn_scored": int(len(c.predictions)), "churn_risk_tiers": c.risk_tier_counts,
            "cart_algorithm": k.algorithm, "cart_model_version": k.model_version,
            **{f"cart_validation_{m}": round(k.validation[m], 4)
               for m in ("roc_auc", "pr_auc", "brier", "positive_rate", "mean_predicted", "ece", "baseline_roc_auc",
                         "baseline_ece") if m in k.validation},
            "cart_scored": int(len(k.predictions)), "cart_intent_groups": k.group_counts,
            "offers": {str(o): int(n) for o, n in offers["offer"].value_counts().sort_index().items()},
            "offer_rows": int(len(offers)), "holdout": int(offers["holdout"].sum()),
        }


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> pd.DataFrame:
    return con.execute(sql, params or []).df()


def _require(con, schema: str, table: str, why: str) -> None:
    if not table_exists(con, schema, table):
        raise ValueError(f"scoring: {schema}.{table} is missing ({why}); build the dbt core models first "
                         f"(`cdp run --only marts`)")


def metrics_rows(result_churn: churn.ChurnResult, result_cart: cart.CartResult) -> pd.DataFrame:
    rows = []
    for model, res in (("churn", result_churn), ("cart_intent", result_cart)):
        if not res.model_version:  # skipped for too little history: no metrics to report
            continue
        common = {"model": model, "model_version": res.model_version, "as_of": res.as_of}
        for algorithm, metrics in res.candidates.items():
            # The selected algorithm's row holds the deployed (calibrated) model's metrics.
            if algorithm == res.algorithm and res.validation:
                metrics = res.validation
            for metric, value in metrics.items():
                rows.append({**common, "algorithm": algorithm, "dataset": "validation", "metric": metric,
                             "bin": None, "value": value, "selected": algorithm == res.algorithm})
        for b in res.calibration:
            for metric in ("rows", "predicted", "observed"):
                rows.append({**common, "algorithm": res.algorithm, "dataset": "validation",
                             "metric": f"calibration_{metric}", "bin": b["bin"], "value": float(b[metric]),
                             "selected": True})
        rows.append({**common, "algorithm": res.algorithm, "dataset": "training", "metric": "rows", "bin": None,
                     "value": float(res.training_rows), "selected": True})
        rows.append({**common, "algorithm": res.algorithm, "dataset": "scoring", "metric": "rows", "bin": None,
                     "value": float(len(res.predictions)), "selected": True})
    frame = pd.DataFrame(rows, columns=["model", "model_version", "as_of", "algorithm", "dataset", "metric", "bin",
                                        "value", "selected"])
    frame["bin"] = frame["bin"].astype("Int64")
    return frame


def offer_inputs(con: duckdb.DuckDBPyConnection, churn_predictions: pd.DataFrame, cart_predictions: pd.DataFrame,
                 settings: OffersSettings, as_of) -> pd.DataFrame:
    """One row per person with any consent granted: what decide_offers needs (INPUT_COLUMNS)."""
    _require(con, "marts", "consent", "next-best-offer contacts only people with consent")
    con.register("churn_now", churn_predictions[["person_id", "churn_probability", "risk_tier"]])
    con.register("cart_now", cart_predictions[["person_id", "cart_id", "cart_value", "purchase_probability",
                                               "intent_group"]])
    recent, due = int(settings.recent_purchase_days), int(settings.replenish_after_days)
    try:
        return _frame(con, f"""
            WITH as_of AS (SELECT CAST(? AS TIMESTAMP) AS t),
            granted AS (
                SELECT person_id,
                       bool_or(channel = 'email_marketing') AS consent_email_marketing,
                       bool_or(channel = 'sms_marketing') AS consent_sms_marketing,
                       bool_or(channel = 'web_personalisation') AS consent_web_personalisation
                FROM marts.consent WHERE status = 'granted' GROUP BY person_id),
            sends AS (
                SELECT person_id, count(*) AS marketing_emails_7d
                FROM intermediate.int_email_activity, as_of
                WHERE event_type = 'sent' AND person_id IS NOT NULL
                  AND occurred_at > t - INTERVAL 7 DAY AND occurred_at <= t
                GROUP BY person_id),
            lines AS (SELECT person_id, sku, category, order_key, ordered_at, quantity
                      FROM intermediate.int_order_lines WHERE person_id IS NOT NULL AND sku IS NOT NULL),
            bought_recently AS (
                SELECT DISTINCT person_id, sku FROM lines, as_of WHERE ordered_at > t - INTERVAL {recent} DAY),
            cart_items AS (
                SELECT DISTINCT c.person_id, e.product_id AS sku
                FROM cart_now c JOIN staging.stg_web__events e
                  ON e.cart_id = c.cart_id AND e.event_name = 'product_added' AND e.product_id IS NOT NULL),
            cart_bought AS (
                SELECT ci.person_id, bool_and(br.sku IS NOT NULL) AS cart_bought_recently
                FROM cart_items ci LEFT JOIN bought_recently br USING (person_id, sku) GROUP BY ci.person_id),
            best_sellers AS (
                SELECT category, sku, row_number() OVER (PARTITION BY category ORDER BY sum(quantity) DESC, sku) AS r
                FROM lines, as_of WHERE ordered_at > t - INTERVAL 90 DAY AND category IS NOT NULL
                GROUP BY category, sku QUALIFY r <= 10),
            cross_sell AS (
                SELECT ct.person_id, arg_min(bs.sku, bs.r) AS cross_sell_sku
                FROM marts.customer_traits ct
                JOIN best_sellers bs ON bs.category = ct.preferred_category
                WHERE ct.order_count > 0
                  AND NOT EXISTS (SELECT 1 FROM bought_recently br WHERE br.person_id = ct.person_id AND br.sku = bs.sku)
                GROUP BY ct.person_id),
            repeat_buys AS (
                SELECT person_id, sku, count(DISTINCT order_key) AS times, max(ordered_at) AS last_at
                FROM lines GROUP BY person_id, sku HAVING count(DISTINCT order_key) >= 2),
            replenishment AS (
                SELECT rb.person_id, arg_max(rb.sku, rb.times * 1e6 - epoch(rb.last_at) / 1e6) AS replenishment_sku
                FROM repeat_buys rb, as_of
                WHERE rb.last_at <= t - INTERVAL {max(due, recent)} DAY AND rb.last_at > t - INTERVAL 365 DAY
                GROUP BY rb.person_id)
            SELECT g.person_id, g.consent_email_marketing, g.consent_sms_marketing, g.consent_web_personalisation,
                   coalesce(s.marketing_emails_7d, 0) AS marketing_emails_7d,
                   ch.churn_probability, ch.risk_tier,
                   ca.cart_id, ca.cart_value, ca.purchase_probability, ca.intent_group,
                   coalesce(cb.cart_bought_recently, false) AS cart_bought_recently,
                   xs.cross_sell_sku, rp.replenishment_sku,
                   coalesce(ct.rfm_segment IN ('champions', 'loyal'), false) AS is_vip
            FROM granted g
            LEFT JOIN sends s USING (person_id)
            LEFT JOIN churn_now ch USING (person_id)
            LEFT JOIN cart_now ca USING (person_id)
            LEFT JOIN cart_bought cb USING (person_id)
            LEFT JOIN cross_sell xs USING (person_id)
            LEFT JOIN replenishment rp USING (person_id)
            LEFT JOIN marts.customer_traits ct USING (person_id)
            ORDER BY g.person_id""", [pd.Timestamp(as_of).to_pydatetime()])
    finally:
        con.unregister("churn_now")
        con.unregister("cart_now")


def previous_algorithm(con: duckdb.DuckDBPyConnection, model: str) -> str | None:
    """The algorithm the last run deployed (scoring.model_metrics): kept unless beaten by a margin."""
    if not table_exists(con, SCHEMA, "model_metrics"):
        return None
    row = con.execute(f"SELECT any_value(algorithm) FROM {SCHEMA}.model_metrics WHERE model = ? AND selected",
                      [model]).fetchone()
    return row[0] if row else None


def _write(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    con.register("frame_to_write", frame)
    try:
        # A column with no value at all (a skipped model's empty table, an unused optional
        # field) would get DuckDB's NULL type, which no mart's enforced contract accepts: it takes
        # the type the published mart of the same name declares (text when none does).
        declared = _declared_types(table)
        columns = [f'CAST("{name}" AS {declared.get(name, "VARCHAR")}) AS "{name}"' if kind.strip('"') == "NULL"
                   else f'"{name}"'
                   for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM frame_to_write").fetchall()]
        con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.{table} AS SELECT {', '.join(columns)} FROM frame_to_write")
    finally:
        con.unregister("frame_to_write")


def _declared_types(table: str) -> dict[str, str]:
    try:
        return dict(published_table(table).data_types)
    except (KeyError, ManifestError):
        return {}


def run_scoring(con: duckdb.DuckDBPyConnection, churn_settings: ChurnSettings, cart_settings: CartIntentSettings,
                offer_settings: OffersSettings, progress=log.info,
                offers_experiment: Experiment | None = None, as_of=None) -> ScoringResult:
    """`as_of`: the run's reference time (default: the one the marts were built for). Models are
    refitted on their schedule or on drift (refit_every_days, refit_if_auc_drops_by); in between,
    the saved models (scoring.saved_models) score."""
    with threadpool_limits(limits=MODEL_THREADS):
        return _run_scoring(con, churn_settings, cart_settings, offer_settings, progress, offers_experiment, as_of)


def experiment_arms(con: duckdb.DuckDBPyConnection, experiment: Experiment) -> pd.DataFrame:
    """The offers experiment's recorded assignments (experiments stage, run before scoring)."""
    _require(con, "experiments", "assignments", f"experiment {experiment.name!r} drives next-best-offer's holdout")
    return _frame(con, "SELECT person_id, arm, holdout FROM experiments.assignments WHERE experiment = ?",
                  [experiment.name])


def _run_scoring(con, churn_settings, cart_settings, offer_settings, progress, offers_experiment=None,
                 as_of=None) -> ScoringResult:
    started = time.perf_counter()
    for table, why in (("int_churn_features", "churn features"), ("int_cart_features", "cart features"),
                       ("int_carts", "abandon-and-return gaps")):
        _require(con, "intermediate", table, why)
    as_of = pd.Timestamp(as_of) if as_of is not None else run_as_of(con)
    skipped: dict[str, str] = {}
    churn_features = _frame(con, "SELECT * FROM intermediate.int_churn_features")
    shortfall = churn_history_shortfall(con, churn_features, churn_settings.horizon_days, as_of)
    if shortfall:
        skipped["churn"] = shortfall
        churn_result = _skipped_churn(as_of)
        progress(f"scoring: churn skipped — {shortfall}")
    else:
        churn_result = churn.train_and_score(churn_features, churn_settings, previous_algorithm(con, "churn"),
                                             saved=model_store.load(con, "churn"))
        if churn_result.refitted:
            model_store.save(con, churn_result.model)
        as_of = churn_result.as_of
        for note in churn_result.notes:
            progress(f"scoring: {note}")
        v = churn_result.validation
        progress(f"scoring: churn {churn_result.algorithm}, deployed model's validation ROC AUC "
                 f"{v.get('roc_auc', float('nan')):.3f}, ECE {v.get('ece', float('nan')):.3f}, "
                 f"{len(churn_result.predictions):,} scored ({time.perf_counter() - started:.1f}s)")

    cart_features = _frame(con, "SELECT * FROM intermediate.int_cart_features")
    window_hours = cart_settings.window_days * 24
    gaps = _frame(con, """SELECT return_gap_hours FROM intermediate.int_carts
                          WHERE return_gap_hours IS NOT NULL AND return_gap_hours <= ? AND ordered_at <= ?""",
                  [window_hours, as_of.to_pydatetime()])["return_gap_hours"].to_numpy(float)
    shortfall = cart_history_shortfall(cart_features, cart_settings)
    if shortfall:
        skipped["cart_intent"] = shortfall
        cart_result = _skipped_cart(as_of)
        progress(f"scoring: cart intent skipped — {shortfall}")
    else:
        cart_result = cart.train_and_score(cart_features, gaps, cart_settings, saved=model_store.load(con, "cart_intent"))
        if cart_result.refitted:
            model_store.save(con, cart_result.model)
        else:
            model_store.backfill_compiled(con, cart_result.model)
        v = cart_result.validation
        how = f"refitted ({cart_result.refit_reason})" if cart_result.refitted else (
            f"saved model of {cart_result.model.fitted_as_of:%Y-%m-%d}")
        progress(f"scoring: cart intent {cart_result.algorithm}, {how}, deployed model's validation ROC AUC "
                 f"{v.get('roc_auc', float('nan')):.3f} (baseline {v.get('baseline_roc_auc', float('nan')):.3f}), "
                 f"ECE {v.get('ece', float('nan')):.3f}, {len(cart_result.predictions):,} open carts scored "
                 f"({time.perf_counter() - started:.1f}s)")

    arms = experiment_arms(con, offers_experiment) if offers_experiment else None
    offers = decide_offers(offer_inputs(con, churn_result.predictions, cart_result.predictions, offer_settings, as_of),
                           offer_settings, offers_experiment.name if offers_experiment else None, arms)
    offers["as_of"] = as_of
    progress(f"scoring: next-best-offer for {len(offers):,} contactable people, {int(offers['holdout'].sum()):,} held out "
             f"({time.perf_counter() - started:.1f}s)")
    metrics = metrics_rows(churn_result, cart_result)

    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    _write(con, "churn_predictions", churn_result.predictions)
    _write(con, "cart_predictions", cart_result.predictions)
    _write(con, "offer_decisions", offers)
    _write(con, "model_metrics", metrics)
    return ScoringResult(churn_result, cart_result, offers, metrics, skipped)


def run_recommendation_stage(con: duckdb.DuckDBPyConnection, as_of, settings: RecommendationsSettings,
                             progress=log.info) -> recommend_store.IncrementalResult:
    """scoring.recommendations as of `as_of` (scoring/recommend.py; refitted on a schedule, incremental in
    between: scoring/recommend_store.py); read by dbt's recommendations mart."""
    for schema, table, why in (("intermediate", "int_order_lines", "purchases"),
                               ("intermediate", "int_web_product_events", "product views"),
                               ("staging", "stg_catalog__products", "the catalog"), ("marts", "customers", "people")):
        _require(con, schema, table, why)
    started = time.perf_counter()
    with threadpool_limits(limits=MODEL_THREADS):
        # Refitted on its schedule; in between, new lists only for persons whose inputs changed.
        result = recommend_store.run_incremental(con, as_of, settings)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # The lists first, then the fingerprints they were computed from: a run stopped in between
    # leaves old fingerprints, whose persons are recomputed next time.
    _write(con, "recommendations", result.recommendations)
    _write(con, recommend_store.INPUTS_TABLE, result.inputs)
    progress(f"scoring: recommendations: {result.decision}")
    held_out = ", ".join(f"{m} {r['hit_rate']:.3f}" for m, r in result.blend.validation.items()
                         if isinstance(r, dict) and "hit_rate" in r) or "not measured"
    progress(f"scoring: recommendations for {result.recommendations['person_id'].nunique():,} people "
             f"({result.blend.kind}; published: {result.blend.published}; held-out HitRate@{settings.list_length} "
             f"{held_out}) ({time.perf_counter() - started:.1f}s)")
    return result


# --------------------------------------------------------------------------- too little history
# A first run on a young shop has too little history for a model: the model is skipped with a
# message naming what is missing and when it will be enough, its table is written (and published)
# empty, and everything else goes on.
def run_as_of(con) -> pd.Timestamp:
    """The run's as_of, as the marts stamped it (customer_traits is built before scoring)."""
    value = con.execute("SELECT max(as_of) FROM marts.customer_traits").fetchall()[0][0] \
        if table_exists(con, "marts", "customer_traits") else None
    if value is None:  # no person at all: the churn cutoffs' as_of is the same
        value = con.execute("SELECT max(cutoff_at) FROM intermediate.int_churn_features").fetchall()[0][0]
    return pd.Timestamp(value) if value is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)


def churn_history_shortfall(con, features: pd.DataFrame, horizon: int, as_of: pd.Timestamp) -> str | None:
    """Why churn cannot be trained, or None. It fits on buyers before as_of - 2 x horizon (labels
    observed up to as_of - horizon) and validates on buyers before as_of - horizon: it needs
    orders from before as_of - 2 x horizon, i.e. more than 2 x horizon days of order history."""
    snapshots = set(features["snapshot"]) if len(features) else set()
    if {"train", "validate"} <= snapshots:
        return None
    first = con.execute("SELECT min(ordered_at) FROM intermediate.int_orders WHERE ordered_at <= ?",
                        [as_of.to_pydatetime()]).fetchall()[0][0] if table_exists(con, "intermediate", "int_orders") else None
    needed = 2 * horizon
    if first is None:
        have = "there are no orders yet"
        ready = f"{needed + 1} days after the first order"
    else:
        first = pd.Timestamp(first)
        have = f"there are {(as_of - first).days} day(s) of orders (the first on {first:%Y-%m-%d})"
        ready = f"from {(first + pd.Timedelta(days=needed + 1)):%Y-%m-%d}"
    return (f"churn needs orders from more than 2 × churn.horizon_days = {needed} days before as_of "
            f"(buyers to train on and a validation label {horizon} days later); {have}; enough {ready}. "
            "churn_scores is published empty until then")


def cart_history_shortfall(features: pd.DataFrame, settings: CartIntentSettings) -> str | None:
    """Why cart intent cannot be trained, or None: it learns from carts at two weekly cutoffs
    (fit on the older, validate on the latest) whose outcome window has passed."""
    history = features[features["snapshot"] == "history"] if len(features) else features
    cutoffs = history["cutoff_at"].nunique() if len(history) else 0
    if cutoffs >= 2:
        return None
    return (f"cart intent needs carts at 2 weekly cutoffs with their {settings.window_days}-day outcome known "
            f"(cart_intent.window_days + 7 days of carts, up to cart_intent.history_weeks = {settings.history_weeks} "
            f"weeks back); there are carts at {cutoffs}. cart_intent is published empty until then")


def _skipped_churn(as_of: pd.Timestamp) -> churn.ChurnResult:
    predictions = pd.DataFrame({
        "person_id": pd.Series(dtype="string"), "churn_probability": pd.Series(dtype="float64"),
        "risk_tier": pd.Series(dtype="string"), "model_version": pd.Series(dtype="string"),
        "top_reasons": pd.Series(dtype="object"), "as_of": pd.Series(dtype="datetime64[us]")})
    return churn.ChurnResult(predictions, "", "", {}, {}, [], training_rows=0, as_of=as_of,
                             risk_tier_counts={t: 0 for t in ("high", "medium", "low")})


def _skipped_cart(as_of: pd.Timestamp) -> cart.CartResult:
    predictions = pd.DataFrame({
        "person_id": pd.Series(dtype="string"), "cart_id": pd.Series(dtype="string"),
        "cart_value": pd.Series(dtype="float64"), "cart_added_at": pd.Series(dtype="datetime64[us]"),
        "purchase_probability": pd.Series(dtype="float64"), "intent_group": pd.Series(dtype="string"),
        "expected_return_hours": pd.Series(dtype="float64"), "model_version": pd.Series(dtype="string"),
        "as_of": pd.Series(dtype="datetime64[us]")})
    return cart.CartResult(predictions, "", "", {}, {}, [], training_rows=0, as_of=as_of,
                           group_counts={g: 0 for g in cart.GROUPS})

