"""Scoring on a schedule (scoring/model_store.py): a saved model scores between refits, refits
come with age or drift, the saved model survives the warehouse; cart intent calibrated on its
validation week beside a simple baseline, and one session's probability without a warehouse."""

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from core.settings.scoring import CartIntentSettings, ChurnSettings
from scoring import cart, churn, model_store

AS_OF = pd.Timestamp("2025-06-30")


@pytest.fixture(autouse=True)
def one_thread():
    # As the scoring stage runs them (pipeline.MODEL_THREADS): boosting's OpenMP pool spins on
    # every core of a shared machine otherwise.
    with threadpool_limits(limits=1):
        yield


def churn_features(n: int = 1500, seed: int = 5, as_of: pd.Timestamp = AS_OF, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k, snap in enumerate(("train", "validate", "score")):
        f = pd.DataFrame({c: rng.poisson(2, n).astype(float) for c in churn.FEATURES})
        f["days_since_last_order"] = rng.exponential(90, n)
        # flip: in the newest snapshots recent buyers churn (the world changed: drift)
        slope = -0.02 if flip and k > 0 else 0.02
        f["churned"] = (rng.random(n) < 1 / (1 + np.exp(-(-1.0 + slope * f["days_since_last_order"])))).astype(int)
        f["person_id"] = [f"p{k}_{i}" for i in range(n)]
        f["snapshot"] = snap
        f["cutoff_at"] = as_of - pd.Timedelta(days=90 * (2 - k))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def cart_features(carts_per_week: int = 600, weeks: int = 4, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for w in range(weeks + 1):
        f = pd.DataFrame({c: rng.poisson(1, carts_per_week).astype(float) for c in cart.FEATURES})
        f["hours_since_added"] = rng.exponential(48, carts_per_week)
        f["checkout_started"] = (rng.random(carts_per_week) < 0.3).astype(float)
        f["orders_365d"] = rng.poisson(2, carts_per_week).astype(float)
        # Buying rises week on week: a model fitted on the older weeks runs low unless calibrated.
        logit = -2.5 + 0.35 * w + 1.5 * f["checkout_started"] - 0.02 * f["hours_since_added"] + 0.4 * f["orders_365d"]
        f[cart.LABEL] = (rng.random(carts_per_week) < 1 / (1 + np.exp(-logit))).astype(int)
        f["cart_id"] = [f"c{w}_{i}" for i in range(carts_per_week)]
        f["person_id"] = [f"p{w}_{i}" for i in range(carts_per_week)]
        f["cutoff_at"] = AS_OF - pd.Timedelta(days=7 * (weeks - w))
        f["last_added_at"] = f["cutoff_at"] - pd.to_timedelta(f["hours_since_added"], "h")
        f["snapshot"] = "score" if w == weeks else "history"
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def test_a_saved_model_scores_until_its_refit_day_then_is_refitted():
    settings = ChurnSettings(algorithms=["logistic_regression"], refit_every_days=7)
    first = churn.train_and_score(churn_features(), settings)
    assert first.refitted and first.model is not None
    # Three days later, new rows: the saved model scores, same version, nothing refitted.
    later = churn.train_and_score(churn_features(seed=6, as_of=AS_OF + pd.Timedelta(days=3)), settings,
                                  saved=first.model)
    assert not later.refitted and later.model_version == first.model_version
    assert "saved" in later.notes[0] and len(later.predictions) == 1500
    # A week on: refitted on schedule.
    week = churn.train_and_score(churn_features(seed=7, as_of=AS_OF + pd.Timedelta(days=7)), settings,
                                 saved=first.model)
    assert week.refitted and week.model_version != first.model_version
    assert any("7 day(s) old" in n for n in week.notes)


def test_drift_a_settings_change_or_zero_days_refit_early():
    settings = ChurnSettings(algorithms=["logistic_regression"], refit_every_days=30)
    first = churn.train_and_score(churn_features(), settings)
    drifted = churn.train_and_score(churn_features(seed=8, as_of=AS_OF + pd.Timedelta(days=1), flip=True), settings,
                                    saved=first.model)
    assert drifted.refitted and any("drift" in n for n in drifted.notes)
    always = churn.train_and_score(churn_features(seed=9, as_of=AS_OF + pd.Timedelta(days=1)),
                                   settings.model_copy(update={"refit_every_days": 0}), saved=first.model)
    assert always.refitted
    reconfigured = churn.train_and_score(churn_features(seed=9, as_of=AS_OF + pd.Timedelta(days=1)),
                                         settings.model_copy(update={"horizon_days": 60}), saved=first.model)
    assert reconfigured.refitted and any("settings changed" in n for n in reconfigured.notes)


def test_the_saved_model_round_trips_through_the_warehouse():
    con = duckdb.connect()
    assert model_store.load(con, "churn") is None
    result = churn.train_and_score(churn_features(n=600), ChurnSettings(algorithms=["logistic_regression"]))
    model_store.save(con, result.model)
    model_store.save(con, result.model)  # replaces, one row per model
    back = model_store.load(con, "churn")
    assert con.execute("SELECT count(*) FROM scoring.saved_models").fetchone()[0] == 1
    frame = churn_features(n=50, seed=1).fillna(0.0)
    assert np.allclose(back.predict(frame), result.model.predict(frame))
    assert back.model_version == result.model_version and back.fitted_as_of == AS_OF


def test_a_model_saved_before_compiled_json_gets_it_when_reused():
    """A warehouse whose saved_models predates the compiled column: the run that reuses the
    model (no refit, no save) backfills its JSON, which is what a snapshot publishes."""
    con = duckdb.connect()
    result = churn.train_and_score(churn_features(n=600), ChurnSettings(algorithms=["logistic_regression"]))
    model_store.save(con, result.model)
    con.execute("ALTER TABLE scoring.saved_models DROP COLUMN compiled")  # the old layout
    model_store.backfill_compiled(con, result.model)
    model_store.backfill_compiled(con, result.model)  # once is enough; again changes nothing
    (doc,) = con.execute("SELECT compiled FROM scoring.saved_models WHERE model = 'churn'").fetchone()
    assert json.loads(doc)["features"] == list(result.model.features)
    assert model_store.load(con, "churn").model_version == result.model_version


def test_cart_intent_is_calibrated_on_its_validation_week_beside_a_baseline():
    result = cart.train_and_score(cart_features(), np.array([5.0, 20.0]), CartIntentSettings())
    v = result.validation
    assert abs(v["mean_predicted"] - v["positive_rate"]) <= 0.02, v
    assert v["ece"] < v["ece_uncalibrated"], v
    assert v["roc_auc"] > v["baseline_roc_auc"] > 0.5, v
    assert len(result.calibration) == 10 and result.refitted


def test_one_session_probability_without_a_warehouse():
    result = cart.train_and_score(cart_features(carts_per_week=300, weeks=2), np.array([5.0]), CartIntentSettings())
    frame = cart_features(carts_per_week=300, weeks=2)
    row = frame[frame["cart_id"] == result.predictions["cart_id"].iloc[0]].iloc[0]
    session = {f: row[f] for f in cart.FEATURES}
    assert cart.cart_intent_probability(result.model, session) == pytest.approx(
        result.predictions["purchase_probability"].iloc[0], abs=1e-6)
    session["email_opens_90d"] = None  # a missing value counts as 0, as in training
    assert 0.0 <= cart.cart_intent_probability(result.model, session) <= 1.0
    with pytest.raises(ValueError, match="cart_value"):
        cart.cart_intent_probability(result.model, {k: v for k, v in session.items() if k != "cart_value"})


def test_training_rows_are_capped_by_a_seeded_sample():
    settings = ChurnSettings(algorithms=["logistic_regression"], max_training_rows=1000)
    one, two = (churn.train_and_score(churn_features(), settings) for _ in range(2))
    assert one.training_rows == 1000 and one.model_version == two.model_version
    assert len(one.predictions) == 1500
