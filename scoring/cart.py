"""Cart intent: for each person's latest open cart, the probability it is bought within
`window_days`, an intent group, and when they are expected to come back.

Reads intermediate.int_cart_features (dbt: one row per open cart per weekly cutoff, labelled
for past cutoffs) and intermediate.int_carts (every cart, with abandon-and-return gaps):

- candidates are fitted on the older weekly cutoffs and validated on the most recent labelled
  one (a time split); the best (sticky unless beaten by switch_margin) is calibrated on that
  latest week (isotonic or Platt) and deployed, so the validation metrics printed are the
  deployed model's, beside a simple baseline (checkout started + cart age); between scheduled
  refits the saved model scores (scoring/model_store.py);
- intent group by the configured cut points: 'likely' (would buy without help),
  'on_the_fence', 'unlikely';
- expected return window: among past carts that were abandoned and bought within the window,
  the median remaining gap for carts already as old as this one (a conditional median, so an
  older cart gets a shorter, not a longer, expected wait).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.settings.scoring import CartIntentSettings
from scoring.model_store import SavedModel, fitting_settings, refit_reason
from scoring.models import (
    binary_metrics,
    calibration_table,
    calibrator,
    capped,
    cross_calibrated,
    expected_calibration_error,
    halves,
    make_model,
    model_version,
    select_and_fit,
)

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
    model: SavedModel | None = None  # what scored (None: skipped)
    refitted: bool = False  # fitted this run (the caller saves it) rather than the saved one reused
    refit_reason: str | None = None


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


BASELINE_FEATURES = ["checkout_started", "hours_since_added"]


def _baseline(train: pd.DataFrame, validate: pd.DataFrame, seed: int) -> dict[str, float]:
    """The simple baseline a data scientist tries first: a logistic regression on whether checkout
    was started and the cart's age, fitted on the same weeks, measured on the same carts."""
    if train[LABEL].nunique() < 2 or validate.empty:
        return {}
    model = make_model("logistic_regression", seed).fit(train[BASELINE_FEATURES].to_numpy(float),
                                                        train[LABEL].to_numpy(int))
    p = model.predict_proba(validate[BASELINE_FEATURES].to_numpy(float))[:, 1]
    y = validate[LABEL].to_numpy(int)
    m = binary_metrics(y, p)
    return {"baseline_roc_auc": m["roc_auc"], "baseline_ece": expected_calibration_error(y, p),
            "baseline_mean_predicted": m["mean_predicted"]}


def fit(train: pd.DataFrame, validate: pd.DataFrame, settings: CartIntentSettings, as_of,
        previous_algorithm: str | None = None) -> SavedModel:
    """Candidates fitted on the older weekly cutoffs, the best (sticky: switch_margin) calibrated on
    the latest labelled cutoff and deployed; its validation metrics are the deployed model's,
    cross-fitted on two halves of that week's carts."""
    models: dict = {}
    train = capped(train, settings.max_training_rows, settings.seed)
    best, candidates, _ = select_and_fit(train, validate, FEATURES, LABEL, ["gradient_boosting", "logistic_regression"],
                                         settings.seed, models)
    algorithm = best
    if (previous_algorithm in candidates and previous_algorithm != best
            and candidates[best]["roc_auc"] - candidates[previous_algorithm]["roc_auc"] < settings.switch_margin):
        algorithm = previous_algorithm
    raw = models[algorithm]
    x_val, y_val = validate[FEATURES].to_numpy(float), validate[LABEL].to_numpy(int)
    validation_p = cross_calibrated(raw, x_val, y_val, halves(validate["cart_id"]), settings.calibration)
    validation = {**binary_metrics(y_val, validation_p), "ece": expected_calibration_error(y_val, validation_p),
                  "ece_uncalibrated": expected_calibration_error(y_val, raw.predict_proba(x_val)[:, 1]),
                  "roc_auc_uncalibrated": candidates[algorithm]["roc_auc"], **_baseline(train, validate, settings.seed)}
    return SavedModel("cart_intent", algorithm, model_version("cart_intent", algorithm, as_of, train, FEATURES),
                      list(FEATURES), pd.Timestamp(as_of), calibrator(raw, x_val, y_val, settings.calibration), raw,
                      validation, candidates, calibration_table(y_val, validation_p), training_rows=len(train))


def cart_intent_probability(model: SavedModel, session: Mapping[str, float | None]) -> float:
    """One session's cart-intent probability from its features (FEATURES; a missing value counts
    as 0, as in training): what a live service calls with the saved model
    (model_store.load(con, "cart_intent")). No warehouse access."""
    missing = [f for f in model.features if f not in session]
    if missing:
        raise ValueError(f"cart intent: session features missing: {', '.join(missing)}")
    row = np.array([[0.0 if session[f] is None or pd.isna(session[f]) else float(session[f])
                     for f in model.features]])
    return float(model.deployed.predict_proba(row)[0, 1])


def train_and_score(features: pd.DataFrame, past_gaps_hours: np.ndarray, settings: CartIntentSettings,
                    saved: SavedModel | None = None) -> CartResult:
    """One thread (scoring.pipeline.MODEL_THREADS' reason: boosting's OpenMP pool spins on every
    core of a shared machine); see _train_and_score."""
    with threadpool_limits(limits=1):
        return _train_and_score(features, past_gaps_hours, settings, saved)


def _train_and_score(features: pd.DataFrame, past_gaps_hours: np.ndarray, settings: CartIntentSettings,
                    saved: SavedModel | None = None) -> CartResult:
    # Rows in a fixed order (see churn.train_and_score): same data, same model, every run.
    frame = features.sort_values(["snapshot", "cutoff_at", "cart_id"], kind="stable").reset_index(drop=True)
    frame[FEATURES] = frame[FEATURES].astype(float).fillna(0.0)
    history = frame[frame["snapshot"] == "history"]
    score = frame[frame["snapshot"] == "score"]
    # A time split: fit on the older weekly cutoffs, validate on the latest labelled one. Too few
    # carts for both outcomes -> the base rate (select_and_fit), never a failed run.
    latest = history["cutoff_at"].max()
    train, validate = history[history["cutoff_at"] < latest], history[history["cutoff_at"] == latest]
    as_of = pd.Timestamp(score["cutoff_at"].iloc[0]) if not score.empty else None
    stamp = as_of if as_of is not None else pd.Timestamp(latest)
    shaping = fitting_settings(settings, "window_days", "lookback_days", "history_weeks", "calibration", "max_training_rows",
                               "seed")
    why = refit_reason(saved, FEATURES, stamp, settings.refit_every_days, settings.refit_if_auc_drops_by,
                       validate, LABEL, shaping)
    if why is None:
        model = saved
    else:
        model = fit(train, validate, settings, stamp, saved.algorithm if saved is not None else None)
        model.extra["settings"] = shaping

    # One row per person: their latest open cart.
    latest_carts = (score.sort_values(["person_id", "last_added_at", "cart_id"], kind="stable")
                    .groupby("person_id", sort=True).tail(1))
    p = model.predict(latest_carts)
    hours = expected_return_hours(latest_carts["hours_since_added"].to_numpy(float), past_gaps_hours)
    predictions = pd.DataFrame({
        "person_id": latest_carts["person_id"].to_numpy(),
        "cart_id": latest_carts["cart_id"].to_numpy(),
        "cart_value": latest_carts["cart_value"].to_numpy(float),
        "cart_added_at": latest_carts["last_added_at"].to_numpy(),
        "purchase_probability": np.round(p, 6),
        "intent_group": intent_group(p, settings),
        "expected_return_hours": np.round(hours, 1),
        "model_version": model.model_version,
        "as_of": as_of,
    })
    counts = predictions["intent_group"].value_counts().to_dict()
    return CartResult(predictions, model.algorithm, model.model_version, model.validation, model.candidates,
                      model.calibration, training_rows=model.training_rows, as_of=as_of,
                      group_counts={g: int(counts.get(g, 0)) for g in GROUPS}, model=model, refitted=why is not None,
                      refit_reason=why)
