"""Cart intent: for each person's latest open cart, the probability it is bought within
`window_days`, an intent group, and when they are expected to come back.

Reads intermediate.int_cart_features (dbt: one row per open cart per weekly cutoff, labelled
for past cutoffs) and intermediate.int_carts (every cart, with abandon-and-return gaps):

- candidates are fitted on the older weekly cutoffs and validated on the most recent labelled
  one (a time split); the best is refitted on every labelled cutoff and scores the carts open
  at as_of;
- intent group by the configured cut points: 'likely' (would buy without help),
  'on_the_fence', 'unlikely';
- expected return window: among past carts that were abandoned and bought within the window,
  the median remaining gap for carts already as old as this one (a conditional median, so an
  older cart gets a shorter, not a longer, expected wait).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.settings.scoring import CartIntentSettings
from scoring.models import calibration_table, make_model, model_version, select_and_fit

FEATURES = [
    "cart_value", "items_added", "hours_since_added", "checkout_started", "orders_total", "orders_365d",
    "discounted_order_share", "days_since_last_order", "web_sessions_30d", "days_since_previous_visit",
    "email_opens_90d", "past_abandoned_carts", "past_carts_returned",
]
LABEL = "purchased_within_window"
GROUPS = ("likely", "on_the_fence", "unlikely")


@dataclass
class CartResult:
    predictions: pd.DataFrame  # person_id, cart_id, purchase_probability, intent_group, expected_return_hours, ...
    algorithm: str
    model_version: str
    validation: dict[str, float]
    candidates: dict[str, dict[str, float]]
    calibration: list[dict]
    training_rows: int
    as_of: pd.Timestamp | None
    group_counts: dict[str, int] = field(default_factory=dict)


def intent_group(p: np.ndarray, settings: CartIntentSettings) -> np.ndarray:
    return np.where(p >= settings.likely_at, "likely", np.where(p < settings.unlikely_below, "unlikely", "on_the_fence"))


def expected_return_hours(age_hours: np.ndarray, past_gaps_hours: np.ndarray) -> np.ndarray:
    """Median of (gap - age) over the past gaps longer than `age`; NaN when none is."""
    gaps = np.sort(np.asarray(past_gaps_hours, dtype=float))
    age = np.asarray(age_hours, dtype=float)
    start = np.searchsorted(gaps, age, side="right")  # first gap longer than the cart's age
    remaining = len(gaps) - start
    out = np.full(len(age), np.nan)
    has = remaining > 0
    lo = start[has] + (remaining[has] - 1) // 2
    hi = start[has] + remaining[has] // 2
    out[has] = (gaps[lo] + gaps[hi]) / 2 - age[has]
    return out


def train_and_score(features: pd.DataFrame, past_gaps_hours: np.ndarray, settings: CartIntentSettings) -> CartResult:
    # Rows in a fixed order (see churn.train_and_score): same data, same model, every run.
    frame = features.sort_values(["snapshot", "cutoff_at", "cart_id"], kind="stable").reset_index(drop=True)
    frame[FEATURES] = frame[FEATURES].astype(float).fillna(0.0)
    history = frame[frame["snapshot"] == "history"]
    score = frame[frame["snapshot"] == "score"]
    # A time split: fit on the older weekly cutoffs, validate on the latest labelled one. Too few
    # carts for both outcomes -> the base rate (select_and_fit), never a failed run.
    latest = history["cutoff_at"].max()
    train, validate = history[history["cutoff_at"] < latest], history[history["cutoff_at"] == latest]
    algorithm, candidates, validation_p = select_and_fit(
        train, validate, FEATURES, LABEL, ["gradient_boosting", "logistic_regression"], settings.seed)
    model = make_model(algorithm, settings.seed).fit(history[FEATURES].to_numpy(float), history[LABEL].to_numpy(int))
    as_of = pd.Timestamp(score["cutoff_at"].iloc[0]) if not score.empty else None
    version = model_version("cart_intent", algorithm, as_of if as_of is not None else latest, history, FEATURES)

    # One row per person: their latest open cart.
    latest_carts = (score.sort_values(["person_id", "last_added_at", "cart_id"], kind="stable")
                    .groupby("person_id", sort=True).tail(1))
    p = model.predict_proba(latest_carts[FEATURES].to_numpy(float))[:, 1] if len(latest_carts) else np.zeros(0)
    hours = expected_return_hours(latest_carts["hours_since_added"].to_numpy(float), past_gaps_hours)
    predictions = pd.DataFrame({
        "person_id": latest_carts["person_id"].to_numpy(),
        "cart_id": latest_carts["cart_id"].to_numpy(),
        "cart_value": latest_carts["cart_value"].to_numpy(float),
        "cart_added_at": latest_carts["last_added_at"].to_numpy(),
        "purchase_probability": np.round(p, 6),
        "intent_group": intent_group(p, settings),
        "expected_return_hours": np.round(hours, 1),
        "model_version": version,
        "as_of": as_of,
    })
    counts = predictions["intent_group"].value_counts().to_dict()
    return CartResult(predictions, algorithm, version, candidates[algorithm], candidates,
                      calibration_table(validate[LABEL], validation_p), training_rows=len(history), as_of=as_of,
                      group_counts={g: int(counts.get(g, 0)) for g in GROUPS})
