"""Churn: will a recent buyer make no purchase in the next `horizon_days`?

Reads intermediate.int_churn_features (dbt: one row per person per snapshot, see its YAML):

- fit every candidate on the `train` snapshot (features at as_of - 2H, labels up to as_of - H);
- validate on the `validate` snapshot (features at as_of - H, labels up to as_of): a true
  time split, the same distance into the future as the scores;
- keep the best by validation ROC AUC, refit it on the `validate` snapshot (the most recent
  fully labelled one) and score the `score` snapshot (features at as_of).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.settings.scoring import ChurnSettings
from scoring.models import binary_metrics, calibration_table, make_model, model_version, reasons, select_and_fit

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


def risk_tier(p: np.ndarray, settings: ChurnSettings) -> np.ndarray:
    return np.where(p >= settings.high_risk_at, "high", np.where(p >= settings.medium_risk_at, "medium", "low"))


def train_and_score(features: pd.DataFrame, settings: ChurnSettings) -> ChurnResult:
    # Rows in a fixed order: dbt returns them in any order, and boosting's early-stopping
    # split is by position, so the same data must reach the model the same way every run.
    frame = features.sort_values(["snapshot", "person_id"], kind="stable").reset_index(drop=True)
    frame[FEATURES] = frame[FEATURES].astype(float).fillna(0.0)
    train = frame[frame["snapshot"] == "train"]
    validate = frame[frame["snapshot"] == "validate"]
    score = frame[frame["snapshot"] == "score"]
    if validate.empty or train.empty:
        raise ValueError("churn: no buyers at the train or validate cutoff (as_of - 2 x horizon / as_of - horizon); "
                         "the warehouse needs at least 2 x horizon_days + 365 days of order history")
    algorithm, candidates, validation_p = select_and_fit(
        train, validate, FEATURES, LABEL, list(settings.algorithms), settings.seed)
    validation = candidates[algorithm]
    calibration = calibration_table(validate[LABEL], validation_p)

    model = make_model(algorithm, settings.seed).fit(validate[FEATURES].to_numpy(float), validate[LABEL].to_numpy(int))
    as_of = pd.Timestamp(score["cutoff_at"].iloc[0]) if not score.empty else pd.Timestamp(validate["cutoff_at"].iloc[0])
    version = model_version("churn", algorithm, as_of, validate, FEATURES)
    p = model.predict_proba(score[FEATURES].to_numpy(float))[:, 1] if not score.empty else np.zeros(0)
    predictions = pd.DataFrame({
        "person_id": score["person_id"].to_numpy(),
        "churn_probability": np.round(p, 6),
        "risk_tier": risk_tier(p, settings),
        "model_version": version,
        "top_reasons": reasons(model, score, FEATURES, describe, settings.top_reasons) if not score.empty else [],
        "as_of": as_of,
    })
    counts = predictions["risk_tier"].value_counts().to_dict()
    return ChurnResult(predictions, algorithm, version, validation, candidates, calibration,
                       training_rows=len(validate), as_of=as_of,
                       risk_tier_counts={t: int(counts.get(t, 0)) for t in ("high", "medium", "low")})


def evaluate_predictions(predictions: pd.DataFrame, truth: pd.Series) -> dict:
    """Metrics of stored probabilities against outcomes (1 = churned), aligned by person_id."""
    joined = predictions.merge(truth.rename("y").reset_index(), on="person_id", how="inner")
    out = binary_metrics(joined["y"], joined["churn_probability"])
    out["calibration"] = calibration_table(joined["y"], joined["churn_probability"])
    return out
