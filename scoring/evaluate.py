"""`cdp evaluate churn`: the stored validation metrics next to metrics against the generator's
future ground truth (generated data only; the pipeline itself never reads ground truth).

- Churn: each scored person is mapped to the generator's true person who owns most of their
  identity records (identity.graph x ground_truth/record_person.csv); they churned when that
  person has no purchase in ground_truth/future_purchases.csv within the horizon (the
  generator simulates 90 days past as_of, so horizons past 90 days are cut to 90).
- Cart intent: each scored open cart is looked up by cart id in ground_truth/open_carts.csv
  (purchased_within_7d); the measured 7-day purchase rate per intent group shows whether the
  groups are ordered (likely > on_the_fence > unlikely).
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pandas as pd

from core.warehouse import open_warehouse
from scoring.cart import GROUPS
from scoring.churn import evaluate_predictions
from scoring.models import binary_metrics, calibration_table, expected_calibration_error

GROUND_TRUTH_FUTURE_DAYS = 90


def _clean(value):
    """JSON-friendly: NaN -> None, numpy scalars -> Python, rounded floats."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def stored_metrics(con: duckdb.DuckDBPyConnection, model: str) -> dict:
    rows = con.execute("""SELECT algorithm, metric, bin, value, selected, model_version
                          FROM scoring.model_metrics WHERE model = ? AND dataset = 'validation'""", [model]).df()
    if rows.empty:
        return {}
    selected = rows[rows["selected"]]
    out = {"algorithm": selected["algorithm"].iloc[0], "model_version": selected["model_version"].iloc[0],
           "validation": {r.metric: r.value for r in selected[selected["bin"].isna()].itertuples()},
           "candidates": {a: {r.metric: r.value for r in g[g["bin"].isna()].itertuples()}
                          for a, g in rows[rows["bin"].isna()].groupby("algorithm")}}
    cal = selected[selected["bin"].notna()].pivot(index="bin", columns="metric", values="value").reset_index()
    out["validation"]["calibration"] = [
        {"bin": int(r["bin"]), "rows": int(r["calibration_rows"]), "predicted": r["calibration_predicted"],
         "observed": r["calibration_observed"]} for _, r in cal.iterrows()]
    return out


def _person_truth_map(con, ground_truth: Path) -> pd.DataFrame:
    """Pipeline person_id -> the true person owning most of their records."""
    path = str(ground_truth / "record_person.csv").replace("'", "''")
    return con.execute(f"""
        WITH truth AS (
            SELECT source, entity, record_id, person_id AS true_id
            FROM read_csv('{path}', header = true, all_varchar = true)),
        votes AS (
            SELECT g.person_id, t.true_id, count(*) AS n
            FROM identity.graph g JOIN truth t
              ON t.source = g.source AND t.entity = g.entity AND t.record_id = CAST(g.source_record_id AS VARCHAR)
            GROUP BY ALL)
        SELECT person_id, arg_max(true_id, n) AS true_id FROM votes GROUP BY person_id""").df()


def evaluate_churn(con: duckdb.DuckDBPyConnection, ground_truth: Path, horizon_days: int) -> dict:
    predictions = con.execute("SELECT person_id, churn_probability, as_of FROM scoring.churn_predictions").df()
    result: dict = {"stored": stored_metrics(con, "churn"), "horizon_days": horizon_days}
    if predictions.empty:
        result["ground_truth"] = {"error": "no churn predictions in the warehouse"}
        return result
    as_of = pd.Timestamp(predictions["as_of"].iloc[0])
    days = min(horizon_days, GROUND_TRUTH_FUTURE_DAYS)
    mapping = _person_truth_map(con, ground_truth)
    future = pd.read_csv(ground_truth / "future_purchases.csv", usecols=["person_id", "occurred_at"])
    future["occurred_at"] = pd.to_datetime(future["occurred_at"], utc=True).dt.tz_localize(None)
    bought = set(future.loc[(future["occurred_at"] > as_of)
                            & (future["occurred_at"] <= as_of + pd.Timedelta(days=days)), "person_id"])
    scored = predictions.merge(mapping, on="person_id", how="inner")
    truth = pd.Series((~scored["true_id"].isin(bought)).astype(int).to_numpy(), index=scored["person_id"],
                      name="churned")
    truth.index.name = "person_id"
    gt = evaluate_predictions(predictions, truth)
    gt["ece"] = expected_calibration_error(truth.reindex(scored["person_id"]).to_numpy(),
                                           scored["churn_probability"].to_numpy())
    gt["persons_scored"] = int(len(predictions))
    gt["persons_matched_to_truth"] = int(len(scored))
    gt["future_days_observed"] = days
    result["ground_truth"] = gt
    val_auc = result["stored"].get("validation", {}).get("roc_auc")
    if val_auc is not None and not math.isnan(gt["roc_auc"]):
        result["validation_minus_ground_truth_roc_auc"] = val_auc - gt["roc_auc"]
    return _clean(result)


def evaluate_cart_intent(con: duckdb.DuckDBPyConnection, ground_truth: Path) -> dict:
    predictions = con.execute("SELECT cart_id, purchase_probability, intent_group FROM scoring.cart_predictions").df()
    truth = pd.read_csv(ground_truth / "open_carts.csv", usecols=["cart_id", "purchased_within_7d"])
    truth["purchased_within_7d"] = truth["purchased_within_7d"].astype(str).str.lower().eq("true").astype(int)
    joined = predictions.merge(truth, on="cart_id", how="inner")
    groups = {}
    for g in GROUPS:
        part = joined[joined["intent_group"] == g]
        groups[g] = {"carts": int(len(part)),
                     "purchased_within_7d_rate": float(part["purchased_within_7d"].mean()) if len(part) else None}
    rates = [groups[g]["purchased_within_7d_rate"] for g in GROUPS]
    present = [r for r in rates if r is not None]
    metrics = binary_metrics(joined["purchased_within_7d"], joined["purchase_probability"])
    return _clean({
        "stored": stored_metrics(con, "cart_intent"),
        "ground_truth": {**metrics, "carts_scored": int(len(predictions)), "carts_matched_to_truth": int(len(joined)),
                         "calibration": calibration_table(joined["purchased_within_7d"], joined["purchase_probability"], 5),
                         "groups": groups,
                         "groups_ordered": all(a > b for a, b in zip(present, present[1:])) and len(present) == len(GROUPS)},
    })


def evaluate_config(config) -> dict:
    """What `cdp evaluate churn --json` prints."""

    ground_truth = config.landing_dir / "ground_truth"
    needed = [ground_truth / n for n in ("future_purchases.csv", "open_carts.csv", "record_person.csv")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        return {"error": f"no ground truth at {', '.join(missing)} (only generated data has one)"}
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        present = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'scoring'").fetchall()}
        if not {"churn_predictions", "cart_predictions", "model_metrics"} <= present:
            return {"error": "no model outputs in the warehouse yet: run the pipeline first (`cdp run`)"}
        return {"churn": evaluate_churn(con, ground_truth, config.churn.horizon_days),
                "cart_intent": evaluate_cart_intent(con, ground_truth)}
