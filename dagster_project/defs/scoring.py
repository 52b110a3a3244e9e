"""Scoring assets: churn, cart intent and next-best-offer (scoring/ package), between dbt's
core models (the feature tables) and the dbt marts tagged `after_scoring` that publish them.
One multi-asset: one run of the stage writes the four tables of schema `scoring` together."""


import logging

from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, MetadataValue, asset, multi_asset

from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource, run_as_of
from scoring.pipeline import run_recommendation_stage, run_scoring

SCORING_GROUP = "scoring"
log = logging.getLogger("tessera.scoring")

CHURN_KEY = AssetKey(["scoring", "churn_predictions"])
CART_KEY = AssetKey(["scoring", "cart_predictions"])
OFFERS_KEY = AssetKey(["scoring", "offer_decisions"])
METRICS_KEY = AssetKey(["scoring", "model_metrics"])
# The dbt core models the stage reads (keys as dagster_project/defs/dbt_marts.py names them).
FEATURE_INPUTS = [AssetKey(["intermediate", m]) for m in ("int_churn_features", "int_cart_features", "int_carts")]
OFFER_INPUTS = [AssetKey(["intermediate", m]) for m in ("int_order_lines", "int_email_activity")] + [
    AssetKey(["marts", m]) for m in ("consent", "customer_traits")] + [
    AssetKey(["experiments", "assignments"])]  # the offers experiment's arms (dagster_project/defs/experiments.py)


@multi_asset(
    name="scoring_models",
    specs=[
        AssetSpec(CHURN_KEY, group_name=SCORING_GROUP, kinds={"duckdb", "python", "scikitlearn"}, deps=FEATURE_INPUTS,
                  description="Churn probability (no purchase in churn.horizon_days) for every recent buyer, with "
                              "risk tier and top reasons; model chosen on a time split (scoring/churn.py)."),
        AssetSpec(CART_KEY, group_name=SCORING_GROUP, kinds={"duckdb", "python", "scikitlearn"}, deps=FEATURE_INPUTS,
                  description="Each person's latest open cart: probability of buying within cart_intent.window_days, "
                              "intent group, expected return window (scoring/cart.py)."),
        AssetSpec(OFFERS_KEY, group_name=SCORING_GROUP, kinds={"duckdb", "python"},
                  deps=[CHURN_KEY, CART_KEY, *OFFER_INPUTS],
                  description="Next-best-offer per contactable person: consent, frequency cap, exclusions, expected "
                              "value, deterministic holdout (scoring/offers.py)."),
        AssetSpec(METRICS_KEY, group_name=SCORING_GROUP, kinds={"duckdb"}, deps=[CHURN_KEY, CART_KEY],
                  description="Validation metrics per model and candidate algorithm (ROC AUC, PR AUC, Brier) and "
                              "calibration deciles."),
    ],
    pool=WAREHOUSE_POOL,
)
def scoring_models(context: AssetExecutionContext, tessera: TesseraResource):
    config = tessera.load()
    with tessera.warehouse(spark_writes=("scoring",)) as con:
        try:
            result = run_scoring(con, config.churn, config.cart_intent, config.offers, progress=log.info,
                                 offers_experiment=config.offers_experiment)
        except ValueError as e:
            raise RuntimeError(str(e)) from e
    s = result.summary()
    churn, cart = result.churn, result.cart
    calibration = "\n".join(["| decile | rows | predicted | observed |", "|---|---|---|---|"] + [
        f"| {b['bin']} | {b['rows']} | {b['predicted']:.3f} | {b['observed']:.3f} |" for b in churn.calibration])
    skipped = s["skipped_models"]  # too little history: the model's table is empty, the message says why
    for model, why in skipped.items():
        log.warning(f"scoring: {model} skipped — {why}")
    yield MaterializeResult(asset_key=CHURN_KEY, metadata={
        **({"skipped": skipped["churn"]} if "churn" in skipped else {}),
        "dagster/row_count": s["churn_scored"], "algorithm": churn.algorithm, "model_version": churn.model_version,
        **{k: v for k, v in s.items() if k.startswith("churn_validation_")}, "risk_tiers": s["churn_risk_tiers"],
        "candidates": {a: {m: round(v, 4) for m, v in r.items()} for a, r in churn.candidates.items()},
        "calibration": MetadataValue.md(calibration), "as_of": str(churn.as_of)})
    yield MaterializeResult(asset_key=CART_KEY, metadata={
        **({"skipped": skipped["cart_intent"]} if "cart_intent" in skipped else {}),
        "dagster/row_count": s["cart_scored"], "algorithm": cart.algorithm, "model_version": cart.model_version,
        **{k: v for k, v in s.items() if k.startswith("cart_validation_")}, "intent_groups": s["cart_intent_groups"],
        "candidates": {a: {m: round(v, 4) for m, v in r.items()} for a, r in cart.candidates.items()}})
    yield MaterializeResult(asset_key=OFFERS_KEY, metadata={
        "dagster/row_count": s["offer_rows"], "offers": s["offers"], "holdout": s["holdout"],
        "experiment": config.offers_experiment.name if config.offers_experiment else config.offers.experiment})
    yield MaterializeResult(asset_key=METRICS_KEY, metadata={
        "dagster/row_count": int(len(result.metrics)),
        **{k: v for k, v in s.items() if "validation" in k}})


RECOMMENDATIONS_KEY = AssetKey(["scoring", "recommendations"])
RECOMMENDATION_INPUTS = [AssetKey(["intermediate", m]) for m in ("int_order_lines", "int_web_product_events")] + [
    AssetKey(["staging", "stg_catalog__products"]), AssetKey(["marts", "customers"])]


@asset(key=RECOMMENDATIONS_KEY, group_name=SCORING_GROUP, kinds={"duckdb", "python", "scikitlearn"},
       deps=RECOMMENDATION_INPUTS, pool=WAREHOUSE_POOL,
       description="Top recommendations.list_length products per person with their reason: buy-again, co-purchase, "
                   "co-view, category, trending and ALS candidates ranked by a model fitted on a time split "
                   "(scoring/recommend.py); refitted on a schedule, in between only changed persons' lists "
                   "(scoring/recommend_store.py).")
def scoring_recommendations(context: AssetExecutionContext, tessera: TesseraResource) -> MaterializeResult:
    config = tessera.load()
    with tessera.warehouse(spark_writes=("scoring",)) as con:
        result = run_recommendation_stage(con, run_as_of(context, config), config.recommendations, progress=log.info)
    s = result.summary()
    # The blend measured on held-out buyers of its own time split, next to two baselines: the
    # number to watch, computed with the fit (no extra pass); it picks what is published
    # (`published`: the blend, or the simple method it did not beat). `cdp evaluate recommendations` has all.
    validation = s["validation"]
    table = ["| method | HitRate@K | Recall@K | NDCG@K |", "|---|---|---|---|"] + [
        f"| {m} | {r.get('hit_rate', 0):.3f} | {r.get('recall', 0):.3f} | {r.get('ndcg', 0):.3f} |"
        for m, r in validation.items() if isinstance(r, dict)]
    return MaterializeResult(metadata={
        "dagster/row_count": s["rows"], "persons": s["persons"], "blend": s["blend"], "published": s["published"],
        # Refitted on its schedule, or the saved model with new lists only for changed persons.
        "model_decision": s["model_decision"], "model_version": s["model_version"],
        "recomputed_persons": s["recomputed_persons"], "kept_persons": s["kept_persons"],
        "training_buyers": s["training_buyers"], "reasons": s["reasons"], "notes": "; ".join(s["notes"]) or "none",
        "validation_buyers": validation.get("buyers", 0),
        "validation": MetadataValue.md("\n".join(table)) if validation else "not fitted (fallback blend)",
        **{f"validation_{m}_{metric}": round(r[metric], 4) for m, r in validation.items() if isinstance(r, dict)
           for metric in ("hit_rate", "recall") if metric in r}})


SCORING_ASSETS = [scoring_models, scoring_recommendations]
