"""Churn: will a recent buyer make no purchase in the next `horizon_days`?

Reads intermediate.int_churn_features (dbt: one row per person per snapshot, see its YAML):

- fit every candidate on the `train` snapshot (features at as_of - 2H, labels up to as_of - H);
- validate on the `validate` snapshot (features at as_of - H, labels up to as_of): a true
  time split, the same distance into the future as the scores;
- keep the best by validation ROC AUC - but the previous run's algorithm stays unless the
  challenger beats it by `switch_margin`, so the choice does not flip on noise;
- calibrate that train-fitted model on the `validate` snapshot (isotonic or Platt) and deploy
  it: the validation metrics printed are the deployed model's, out of time. Calibration
  metrics (ECE, reliability curve, mean predicted vs observed) are cross-fitted on two halves
  of the validate snapshot, so they are not measured on the rows the calibrator saw;
- a horizon longer than the history allows (no buyers at the train cutoff) is fitted on half of
  the validate snapshot and measured on the other half (in time, said so); with no validate
  snapshot either, churn is skipped with a message, never a failed run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.settings.scoring import ChurnSettings
from scoring.model_store import SavedModel, fitting_settings, refit_reason
from scoring.models import (
    binary_metrics,
    calibration_table,
    calibrator,
    capped,
    cross_calibrated,
    expected_calibration_error,
    halves,
    model_version,
    reasons,
    select_and_fit,
)

FEATURES = [
    "days_since_last_order", "days_since_first_order", "orders_total", "orders_30d", "orders_90d", "orders_prev_90d",
    "orders_365d", "revenue_365d", "avg_order_value_365d", "discounted_order_share_365d", "orders_trend_90d",
    "web_sessions_30d", "web_sessions_90d", "web_sessions_trend_90d", "cart_adds_90d", "days_since_last_session",
    "emails_sent_90d", "email_opens_30d", "email_opens_90d", "email_opens_trend_90d", "email_clicks_90d",
    "support_tickets_365d", "bad_tickets_365d", "bad_tickets_90d", "emails_sent_365d", "email_opens_365d",
    "days_since_last_open", "web_sessions_365d", "orders_per_90d_lifetime",
]
LABEL = "churned"

_WORDING = {
    "days_since_last_order": "no order for {v:.0f} days (typical {t:.0f})",
    "days_since_first_order": "customer for {v:.0f} days (typical {t:.0f})",
    "orders_total": "{v:.0f} orders in all (typical {t:.0f})",
    "orders_30d": "{v:.0f} orders in 30 days (typical {t:.0f})",
    "orders_90d": "{v:.0f} orders in 90 days (typical {t:.0f})",
    "orders_prev_90d": "{v:.0f} orders in the 90 days before (typical {t:.0f})",
    "orders_365d": "{v:.0f} orders in 365 days (typical {t:.0f})",
    "revenue_365d": "spent {v:.0f} in 365 days (typical {t:.0f})",
    "avg_order_value_365d": "average order {v:.0f} (typical {t:.0f})",
    "discounted_order_share_365d": "{v:.0%} of orders discounted (typical {t:.0%})",
    "orders_trend_90d": "orders changed by {v:+.0f} vs the previous 90 days (typical {t:+.0f})",
    "web_sessions_30d": "{v:.0f} site visits in 30 days (typical {t:.0f})",
    "web_sessions_90d": "{v:.0f} site visits in 90 days (typical {t:.0f})",
    "web_sessions_trend_90d": "site visits changed by {v:+.0f} vs the previous 90 days (typical {t:+.0f})",
    "cart_adds_90d": "{v:.0f} items added to cart in 90 days (typical {t:.0f})",
    "days_since_last_session": "no site visit for {v:.0f} days (typical {t:.0f})",
    "emails_sent_90d": "{v:.0f} emails received in 90 days (typical {t:.0f})",
    "email_opens_30d": "{v:.0f} email opens in 30 days (typical {t:.0f})",
    "email_opens_90d": "{v:.0f} email opens in 90 days (typical {t:.0f})",
    "email_opens_trend_90d": "email opens changed by {v:+.0f} vs the previous 90 days (typical {t:+.0f})",
    "email_clicks_90d": "{v:.0f} email clicks in 90 days (typical {t:.0f})",
    "support_tickets_365d": "{v:.0f} support tickets in 365 days (typical {t:.0f})",
    "bad_tickets_365d": "{v:.0f} bad support experiences in 365 days (typical {t:.0f})",
    "bad_tickets_90d": "{v:.0f} bad support experiences in 90 days (typical {t:.0f})",
    "emails_sent_365d": "{v:.0f} emails received in 365 days (typical {t:.0f})",
    "email_opens_365d": "{v:.0f} email opens in 365 days (typical {t:.0f})",
    "days_since_last_open": "no email opened for {v:.0f} days (typical {t:.0f})",
    "web_sessions_365d": "{v:.0f} site visits in 365 days (typical {t:.0f})",
    "orders_per_90d_lifetime": "{v:.1f} orders per 90 days over their tenure (typical {t:.1f})",
}


# Features that carry the same signal, replaced together when explaining a score (models.reasons):
# the lead feature words the reason, e.g. "no order for 120 days (typical 45)".
REASON_GROUPS = {
    "days_since_last_order": ["days_since_last_order", "orders_30d", "orders_90d", "orders_prev_90d",
                              "orders_trend_90d"],
    "days_since_last_session": ["days_since_last_session", "web_sessions_30d", "web_sessions_90d",
                                "web_sessions_trend_90d", "web_sessions_365d", "cart_adds_90d"],
    "days_since_last_open": ["days_since_last_open", "email_opens_30d", "email_opens_90d", "email_opens_trend_90d",
                             "email_opens_365d", "email_clicks_90d"],
    "bad_tickets_90d": ["bad_tickets_90d", "bad_tickets_365d", "support_tickets_365d"],
}


def describe(feature: str, value: float, typical: float) -> str:
    return _WORDING.get(feature, feature + " {v:.2f} (typical {t:.2f})").format(v=value, t=typical)


@dataclass
class ChurnResult:
    predictions: pd.DataFrame  # person_id, churn_probability, risk_tier, model_version, top_reasons, as_of
    algorithm: str
    model_version: str
    validation: dict[str, float]
    candidates: dict[str, dict[str, float]]
    calibration: list[dict]
    training_rows: int
    as_of: pd.Timestamp
    risk_tier_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: SavedModel | None = None  # what scored (None: skipped)
    refitted: bool = False  # fitted this run (the caller saves it) rather than the saved one reused


def risk_tier(p: np.ndarray, settings: ChurnSettings) -> np.ndarray:
    if settings.risk_tiers == "quantile" and len(p):
        # Rank-based so that ties never put everyone in one tier.
        share_above = 1.0 - (pd.Series(p).rank(method="first").to_numpy() - 1) / len(p)
        return np.where(share_above <= settings.high_risk_share, "high",
                        np.where(share_above <= settings.high_risk_share + settings.medium_risk_share, "medium", "low"))
    return np.where(p >= settings.high_risk_at, "high", np.where(p >= settings.medium_risk_at, "medium", "low"))


def _halves(frame: pd.DataFrame) -> np.ndarray:
    # By person, not by what a row holds: a hash of the features and label would put every
    # churned row of a feature vector in one half and every retained one in the other, and each
    # half would be calibrated on the other's opposite.
    return halves(frame["person_id"])


def _in_data_order(features: pd.DataFrame) -> pd.DataFrame:
    """The rows in an order that depends on the data only. dbt returns them in any order, and
    boosting's early-stopping split and the training cap are by position, so the same data must
    reach the model the same way every run. Not by person id: two warehouses with the same data
    can name a few persons differently (a daily project keeps the id that survived a merge, a
    rebuild mints one), and ordered by id that moved every later row and changed every score.
    Rows with equal features and label are interchangeable to the model; the id only breaks
    their tie."""
    frame = features.copy()
    frame[FEATURES] = frame[FEATURES].astype(float).fillna(0.0)
    return frame.sort_values(["snapshot", *FEATURES, LABEL, "person_id"], kind="stable").reset_index(drop=True)


def _cross_calibrated(model, frame: pd.DataFrame, method: str) -> np.ndarray:
    """Calibrated validation probabilities, each half calibrated on the other half."""
    return cross_calibrated(model, frame[FEATURES].to_numpy(float), frame[LABEL].to_numpy(int), _halves(frame), method)


def _empty_predictions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("person_id", object), ("churn_probability", float), ("risk_tier", object), ("model_version", object),
        ("top_reasons", object), ("as_of", "datetime64[ns]"))})


def fit(train: pd.DataFrame, validate: pd.DataFrame, settings: ChurnSettings, as_of: pd.Timestamp,
        previous_algorithm: str | None = None, notes: list[str] | None = None) -> SavedModel:
    """Fit the candidates on `train`, keep the best (sticky: see switch_margin), calibrate it on
    `validate` and measure the deployed model there (cross-fitted)."""
    notes = notes if notes is not None else []
    models: dict = {}
    train = capped(train, settings.max_training_rows, settings.seed)
    best, candidates, _ = select_and_fit(train, validate, FEATURES, LABEL, list(settings.algorithms), settings.seed,
                                         models)
    algorithm = best
    if (previous_algorithm in candidates and previous_algorithm != best
            and candidates[best]["roc_auc"] - candidates[previous_algorithm]["roc_auc"] < settings.switch_margin):
        algorithm = previous_algorithm
        notes.append(f"churn: kept {previous_algorithm}; {best} won by less than switch_margin {settings.switch_margin}")
    raw = models[algorithm]
    x_val, y_val = validate[FEATURES].to_numpy(float), validate[LABEL].to_numpy(int)
    validation_p = _cross_calibrated(raw, validate, settings.calibration)
    validation = {**binary_metrics(y_val, validation_p), "ece": expected_calibration_error(y_val, validation_p),
                  "ece_uncalibrated": expected_calibration_error(y_val, raw.predict_proba(x_val)[:, 1]),
                  "roc_auc_uncalibrated": candidates[algorithm]["roc_auc"]}
    return SavedModel("churn", algorithm, model_version("churn", algorithm, as_of, train, FEATURES), list(FEATURES),
                      pd.Timestamp(as_of), calibrator(raw, x_val, y_val, settings.calibration), raw, validation,
                      candidates, calibration_table(y_val, validation_p), training_rows=len(train))


def score(saved: SavedModel, rows: pd.DataFrame, settings: ChurnSettings, as_of: pd.Timestamp) -> pd.DataFrame:
    if rows.empty:
        return _empty_predictions()
    p = saved.predict(rows)
    return pd.DataFrame({
        "person_id": rows["person_id"].to_numpy(),
        "churn_probability": np.round(p, 6),
        "risk_tier": risk_tier(p, settings),
        "model_version": saved.model_version,
        # Explained on the uncalibrated model: calibration is monotone, and isotonic steps would
        # hide small one-feature changes.
        "top_reasons": reasons(saved.raw, rows, FEATURES, describe, settings.top_reasons, groups=REASON_GROUPS),
        "as_of": as_of,
    })


def train_and_score(features: pd.DataFrame, settings: ChurnSettings, previous_algorithm: str | None = None,
                    saved: SavedModel | None = None) -> ChurnResult:
    """One thread (scoring.pipeline.MODEL_THREADS' reason: boosting's OpenMP pool spins on every
    core of a shared machine); see _train_and_score."""
    with threadpool_limits(limits=1):
        return _train_and_score(features, settings, previous_algorithm, saved)


def _train_and_score(features: pd.DataFrame, settings: ChurnSettings, previous_algorithm: str | None = None,
                    saved: SavedModel | None = None) -> ChurnResult:
    """Score the `score` snapshot with `saved` when it is still good (model_store.refit_reason),
    else with a model fitted now (ChurnResult.refitted; the caller saves it)."""
    frame = _in_data_order(features)
    train = frame[frame["snapshot"] == "train"]
    validate = frame[frame["snapshot"] == "validate"]
    rows = frame[frame["snapshot"] == "score"]
    notes: list[str] = []
    as_of = pd.Timestamp(rows["cutoff_at"].iloc[0]) if not rows.empty else (
        pd.Timestamp(validate["cutoff_at"].iloc[0]) if not validate.empty else pd.NaT)
    if validate.empty or validate[LABEL].nunique() < 2 and train.empty:
        note = (f"churn skipped: no labelled buyers at as_of - horizon ({settings.horizon_days} days); the history "
                f"must cover horizon_days + 365 days of orders")
        return ChurnResult(_empty_predictions(), "skipped", "churn-skipped", {}, {}, [], 0, as_of,
                           {"high": 0, "medium": 0, "low": 0}, [note])
    shaping = fitting_settings(settings, "horizon_days", "algorithms", "calibration", "max_training_rows", "seed")
    why = refit_reason(saved, FEATURES, as_of, settings.refit_every_days, settings.refit_if_auc_drops_by,
                       validate, LABEL, shaping)
    if why is None:
        model = saved
        notes.append(f"churn: scored with the saved {model.algorithm} fitted as of {model.fitted_as_of:%Y-%m-%d} "
                     f"(refit every {settings.refit_every_days} days or on drift)")
    else:
        if train.empty or train[LABEL].nunique() < 2:
            # The horizon is longer than the history allows: learn from half of the validate
            # snapshot, measure on the other half (in time, not out of time).
            half = _halves(validate)
            train, validate = validate[half], validate[~half]
            notes.append(f"churn: no labelled buyers at as_of - 2 x {settings.horizon_days} days; fitted and measured "
                         "on two halves of the as_of - horizon snapshot (in-time validation)")
        previous = previous_algorithm or (saved.algorithm if saved is not None else None)
        model = fit(train, validate, settings, as_of, previous, notes)
        model.extra["settings"] = shaping
        notes.append(f"churn: refitted ({why})")
    predictions = score(model, rows, settings, as_of)
    counts = predictions["risk_tier"].value_counts().to_dict()
    return ChurnResult(predictions, model.algorithm, model.model_version, model.validation, model.candidates,
                       model.calibration, training_rows=model.training_rows, as_of=as_of,
                       risk_tier_counts={t: int(counts.get(t, 0)) for t in ("high", "medium", "low")}, notes=notes,
                       model=model, refitted=why is not None)


def evaluate_predictions(predictions: pd.DataFrame, truth: pd.Series) -> dict:
    """Metrics of stored probabilities against outcomes (1 = churned), aligned by person_id."""
    joined = predictions.merge(truth.rename("y").reset_index(), on="person_id", how="inner")
    out = binary_metrics(joined["y"], joined["churn_probability"])
    out["calibration"] = calibration_table(joined["y"], joined["churn_probability"])
    return out
