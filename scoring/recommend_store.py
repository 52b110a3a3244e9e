"""Recommendations on a schedule: the recommendation model is saved like churn's
(scoring.saved_models, row `recommendations`) and refitted only when `refit_reason` says so;
between refits only persons whose own inputs changed get new lists.

The model is everything a list depends on that is not the person's own history: the method
published (the blend, or the simple method it did not beat) with the blend itself, and the
shop-wide signals as of the fit (recommend.ITEM_FIELDS: repurchase intervals, co-purchase and
co-view neighbours, trending, the 90-day best sellers, the categories' top products, ALS item
factors). It holds no person's data: each person's ALS factors are solved against the saved item
factors from their own purchases (recommend.als_user_factors).

A person's list is a function of the saved model and their own inputs only, read with the
model's clock: purchases up to the run's as_of and product views after `fitted_as_of -
view_days`, their ages in days before `fitted_as_of` (a purchase or view after it counts as 0
days old). `person_inputs` fingerprints exactly those rows per person in SQL; a person is
recomputed when their fingerprint is not the one stored with their list
(scoring.recommendation_inputs) - new orders or lines, product views, a merge or split that moved
records to or from them, a new person - or when the model changed. Everyone else keeps their
row. People no longer in `customers` (merged away, erased) are dropped. So a day's table equals
`lists_with_model` for everyone with the same model, exactly (tests/test_recommend_store.py).

Refit (`refit_reason`): none saved; the settings that shape lists or the catalog changed; the
saved model is `refit_every_days` old or older; the run's as_of is before its fit (a backtest).
Drift is not measured: the blend's held-out HitRate is over a `horizon_days` label window, and
a day's or a week's purchases cannot be compared with it; the schedule bounds how stale the
shop-wide signals get.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.settings.scoring import RecommendationsSettings
from core.warehouse import table_exists
from scoring import model_store
from scoring.recommend import (
    FEATURES,
    ITEM_FIELDS,
    Blend,
    Interactions,
    RecommendationsResult,
    State,
    _person_signals,
    als_user_factors,
    build_state,
    fit_blend,
    load_interactions,
    load_products,
    published_lists,
)

NAME = "recommendations"
INPUTS_TABLE = "recommendation_inputs"
# Settings that do not change a list (a change does not force a refit).
NOT_FITTING = ("refit_every_days",)


@dataclass
class RecommendationModel:
    blend: Blend
    fitted_as_of: pd.Timestamp
    skus: list[str]  # the catalog at fit (non-products excluded), in index order
    categories: list[str]
    items: dict  # ITEM_FIELDS -> the shop-wide signals as of fitted_as_of
    als_items: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def fitting_settings(settings: RecommendationsSettings) -> dict:
    return {k: v for k, v in settings.model_dump().items() if k not in NOT_FITTING}


def refit_reason(saved: model_store.SavedModel | None, products: pd.DataFrame, as_of: pd.Timestamp,
                 settings: RecommendationsSettings) -> str | None:
    """Why the recommendation model must be refitted now, or None to list with the saved one."""
    if saved is not None and not isinstance(saved.deployed, RecommendationModel):
        saved = None
    reason = model_store.refit_reason(saved, FEATURES, as_of, settings.refit_every_days, 0.0,
                                      settings=fitting_settings(settings))
    if reason is None and (list(saved.deployed.skus) != products["sku"].tolist()
                           or list(saved.deployed.categories) != products["category"].tolist()):
        return "the catalog changed"
    return reason


def fit_model(data: Interactions, as_of: pd.Timestamp, settings: RecommendationsSettings,
              k: int) -> RecommendationModel:
    """The blend on the time split ending at as_of, and the shop-wide signals as of as_of."""
    blend = fit_blend(data, as_of, settings, k)
    state = build_state(data, as_of, settings)
    return RecommendationModel(blend, pd.Timestamp(as_of), data.products["sku"].tolist(),
                               data.products["category"].tolist(),
                               {f: getattr(state, f) for f in ITEM_FIELDS}, state.als_items, list(state.notes))


def lists_with_model(model: RecommendationModel, data: Interactions, settings: RecommendationsSettings,
                     k: int, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every person of `data`'s list (person_id, rank, sku, score, reason, as_of) with the saved
    model: own signals read with the model's clock, shop-wide ones the model's."""
    ref = model.fitted_as_of
    s = State(ref, data, settings)
    views = data.views[data.views["t"] > ref - pd.Timedelta(days=settings.view_days)]
    _person_signals(s, data.lines, views, ref)
    for f in ITEM_FIELDS:
        setattr(s, f, model.items[f])
    if model.als_items is not None:
        s.als_items = model.als_items
        s.als_users = als_user_factors(s.own_count, model.als_items)
    return published_lists(data, s, model.blend, np.arange(data.n_users), settings, k, as_of)


def person_inputs(con, as_of: pd.Timestamp, ref: pd.Timestamp, settings: RecommendationsSettings) -> pd.DataFrame:
    """One row per customer: person_id and a fingerprint of the rows their list is computed
    from (load_interactions' purchases up to as_of and views after ref - view_days), in SQL."""
    view_from = (pd.Timestamp(ref) - pd.Timedelta(days=settings.view_days)).to_pydatetime()
    until = pd.Timestamp(as_of).to_pydatetime()
    return con.execute("""
        WITH products AS (SELECT sku FROM staging.stg_catalog__products WHERE NOT coalesce(non_product, false)),
        l AS (SELECT person_id, sku, order_key, min(ordered_at) AS t FROM intermediate.int_order_lines
              WHERE ordered_at <= ? AND person_id IS NOT NULL AND sku IN (SELECT sku FROM products) GROUP BY ALL),
        v AS (SELECT person_id, sku, session_id, max(occurred_at) AS t FROM intermediate.int_web_product_events
              WHERE event_name = 'product_viewed' AND occurred_at <= ? AND occurred_at > ?
                AND person_id IS NOT NULL AND sku IN (SELECT sku FROM products) GROUP BY ALL),
        fl AS (SELECT person_id, sum(hash(sku, order_key, t)::HUGEINT) AS h, count(*) AS n FROM l GROUP BY 1),
        fv AS (SELECT person_id, sum(hash(sku, session_id, t)::HUGEINT) AS h, count(*) AS n FROM v GROUP BY 1)
        SELECT c.person_id,
               hash(coalesce(fl.h, 0), coalesce(fl.n, 0), coalesce(fv.h, 0), coalesce(fv.n, 0)) AS fingerprint
        FROM marts.customers c LEFT JOIN fl USING (person_id) LEFT JOIN fv USING (person_id)
        ORDER BY c.person_id""", [until, until, view_from]).df()


@dataclass
class IncrementalResult(RecommendationsResult):
    decision: str = ""
    recomputed: int = 0
    kept: int = 0
    model_version: str = ""
    fitted_as_of: pd.Timestamp | None = None
    inputs: pd.DataFrame | None = None  # person_id, fingerprint, model_version: written with the lists

    def summary(self) -> dict:
        return {**super().summary(), "model_decision": self.decision, "model_version": self.model_version,
                "fitted_as_of": str(self.fitted_as_of), "recomputed_persons": self.recomputed,
                "kept_persons": self.kept}


def _changed(con, inputs: pd.DataFrame, model_version: str) -> np.ndarray:
    """Persons whose fingerprint is not the one their current list was computed from (all of
    them when the last run's lists were another model's, or are missing)."""
    everyone = inputs["person_id"].to_numpy()
    if not (table_exists(con, "scoring", INPUTS_TABLE) and table_exists(con, "scoring", "recommendations")):
        return everyone
    versions = con.execute(f"SELECT DISTINCT model_version FROM scoring.{INPUTS_TABLE}").fetchall()
    if versions != [(model_version,)]:
        return everyone
    con.register("rec_inputs", inputs[["person_id", "fingerprint"]])
    try:
        return con.execute(f"""SELECT i.person_id FROM rec_inputs i LEFT JOIN scoring.{INPUTS_TABLE} p USING (person_id)
                               WHERE p.fingerprint IS DISTINCT FROM i.fingerprint
                               ORDER BY i.person_id""").df()["person_id"].to_numpy()
    finally:
        con.unregister("rec_inputs")


def run_incremental(con, as_of, settings: RecommendationsSettings, k: int | None = None) -> IncrementalResult:
    """scoring.recommendations' rows for this run (the caller writes them and `inputs`)."""
    k = k or settings.list_length
    as_of = pd.Timestamp(as_of)
    if as_of.tzinfo is not None:
        as_of = as_of.tz_convert("UTC").tz_localize(None)
    products = load_products(con)
    saved = model_store.load(con, NAME)
    reason = refit_reason(saved, products, as_of, settings)
    if reason is not None:
        data = load_interactions(con, as_of, as_of - pd.Timedelta(days=settings.horizon_days + settings.view_days))
        model = fit_model(data, as_of, settings, k)
        blend = model.blend
        saved = model_store.SavedModel(
            name=NAME, algorithm=blend.published if blend.published != "tessera" else blend.kind,
            model_version=f"recommendations-{as_of:%Y%m%dT%H%M%S}", features=list(FEATURES), fitted_as_of=as_of,
            deployed=model, raw=None,
            validation={m: float(r["hit_rate"]) for m, r in blend.validation.items()
                        if isinstance(r, dict) and "hit_rate" in r},
            candidates={}, calibration=[], training_rows=blend.training_rows,
            extra={"settings": fitting_settings(settings)})
        model_store.save(con, saved)
        recs = lists_with_model(model, data, settings, k, as_of)
        recs = recs.sort_values(["person_id", "rank"], kind="stable").reset_index(drop=True)
        inputs = person_inputs(con, as_of, as_of, settings)
        decision, kept = f"refitted ({reason})", 0
        recomputed = len(inputs)
    else:
        model = saved.deployed
        inputs = person_inputs(con, as_of, model.fitted_as_of, settings)
        changed = _changed(con, inputs, saved.model_version)
        everyone = inputs["person_id"]
        # (a hash lookup: numpy's set operations on string arrays sort, and took 206 CPU-s for
        # 11k changed of 1.16M persons, where this takes 0.2)
        keep = everyone[~everyone.isin(changed)].to_numpy()
        if len(changed):
            data = load_interactions(con, as_of, model.fitted_as_of - pd.Timedelta(days=settings.view_days),
                                     persons=np.sort(changed))
            fresh = lists_with_model(model, data, settings, k, as_of)
        else:
            fresh = None
        con.register("rec_keep", pd.DataFrame({"person_id": keep}))
        try:
            kept_rows = con.execute("""SELECT r.person_id, CAST(r."rank" AS BIGINT) AS "rank", r.sku,
                                              CAST(r.score AS DOUBLE) AS score, r.reason
                                       FROM scoring.recommendations r JOIN rec_keep USING (person_id)""").df()
        finally:
            con.unregister("rec_keep")
        kept_rows["as_of"] = as_of
        recs = pd.concat([kept_rows, fresh], ignore_index=True) if fresh is not None else kept_rows
        recs = recs.sort_values(["person_id", "rank"], kind="stable").reset_index(drop=True)
        age = (as_of - pd.Timestamp(saved.fitted_as_of)).days
        decision = (f"saved model of {saved.fitted_as_of:%Y-%m-%d} ({age} day(s) old, refit_every_days "
                    f"{settings.refit_every_days}): lists for {len(changed):,} person(s) whose purchases or views "
                    f"changed, {len(keep):,} kept")
        kept, recomputed = len(keep), len(changed)
    inputs["model_version"] = saved.model_version
    return IncrementalResult(recs, model.blend, list(model.notes), decision=decision, recomputed=int(recomputed),
                             kept=int(kept), model_version=saved.model_version, fitted_as_of=model.fitted_as_of,
                             inputs=inputs)
