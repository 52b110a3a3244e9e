"""Next-best-offer rules (scoring/offers.py): holdout, frequency cap, consent, exclusions and
the choice by expected value - on small hand-made inputs, and the warehouse query that builds
those inputs on a small real DuckDB."""

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from core.settings.scoring import Offer, OffersSettings
from scoring.offers import INPUT_COLUMNS, decide_offers, in_holdout
from scoring.pipeline import offer_inputs

NO_HOLDOUT = OffersSettings(holdout_share=0.0)


def person(pid, **overrides):
    row = {
        "person_id": pid, "consent_email_marketing": True, "consent_sms_marketing": False,
        "consent_web_personalisation": False, "marketing_emails_7d": 0, "churn_probability": np.nan,
        "risk_tier": None, "cart_id": None, "cart_value": np.nan, "purchase_probability": np.nan,
        "intent_group": None, "cart_bought_recently": False, "cross_sell_sku": None, "replenishment_sku": None,
        "is_vip": False,
    }
    row.update(overrides)
    return row


def decide(rows, settings=NO_HOLDOUT) -> pd.DataFrame:
    return decide_offers(pd.DataFrame(rows, columns=list(INPUT_COLUMNS)), settings).set_index("person_id")


def on_the_fence_cart(pid, **overrides):
    values = dict(cart_id=f"cart_{pid}", cart_value=100.0, purchase_probability=0.2, intent_group="on_the_fence",
                  churn_probability=0.5, risk_tier="medium")
    return person(pid, **{**values, **overrides})


# ---------------------------------------------------------------------------- holdout
def test_holdout_is_deterministic_and_about_the_configured_share():
    ids = [f"P{i:06d}" for i in range(5000)]
    first = in_holdout(ids, "spring_test", 0.10)
    assert np.array_equal(first, in_holdout(ids, "spring_test", 0.10))
    assert np.array_equal(first[::-1], in_holdout(ids[::-1], "spring_test", 0.10))  # order does not matter
    assert 0.085 <= first.mean() <= 0.115
    other = in_holdout(ids, "summer_test", 0.10)
    assert 0.085 <= other.mean() <= 0.115
    assert (first != other).sum() > 500  # another experiment name draws another holdout
    assert in_holdout(ids, "spring_test", 0.0).sum() == 0
    assert 0.28 <= in_holdout(ids, "spring_test", 0.30).mean() <= 0.32


def test_holdout_people_get_holdout_and_keep_their_assigned_offer():
    rows = [on_the_fence_cart(f"P{i:04d}") for i in range(2000)]
    out = decide(rows, OffersSettings(holdout_share=0.1, experiment="x1"))
    held = out[out["holdout"]]
    assert 150 <= len(held) <= 250
    assert (held["offer"] == "holdout").all() and (held["channel"] == "none").all()
    assert (held["expected_value"] == 0).all()
    assert (held["assigned_offer"] != "holdout").all() and held["assigned_offer"].ne("none").all()
    assert held["reason_codes"].str.startswith("holdout,").all()
    assert (out.loc[~out["holdout"], "offer"] == out.loc[~out["holdout"], "assigned_offer"]).all()
    assert set(held.index) == set(np.array([r["person_id"] for r in rows])[in_holdout([r["person_id"] for r in rows], "x1", 0.1)])


# ---------------------------------------------------------------------------- consent
def test_only_contactable_people_get_a_row_and_offers_need_consent_on_their_channel():
    catalog = dict(OffersSettings().catalog)
    catalog["vip_early_access"] = Offer(channel="sms", value=20.0, cost=0.1, lift=0.08)
    settings = OffersSettings(holdout_share=0.0, catalog=catalog)
    out = decide([
        on_the_fence_cart("email_ok"),
        on_the_fence_cart("no_consent", consent_email_marketing=False),
        person("web_only", consent_email_marketing=False, consent_web_personalisation=True, is_vip=True),
        person("sms_vip", consent_email_marketing=False, consent_sms_marketing=True, is_vip=True,
               churn_probability=0.1, risk_tier="low"),
        on_the_fence_cart("sms_and_cart", consent_email_marketing=False, consent_sms_marketing=True),
    ], settings)
    assert "no_consent" not in out.index  # no consent at all: not contactable
    assert "web_only" not in out.index  # consent only on a channel the catalog does not use
    assert out.loc["email_ok", "offer"].startswith("cart_reminder")
    assert out.loc["sms_vip", ["offer", "channel"]].tolist() == ["vip_early_access", "sms"]
    # The cart offers are email offers: without email consent the cart is not offered.
    assert out.loc["sms_and_cart", "offer"] not in ("cart_reminder", "cart_reminder_discount")
    assert "no_consent_email" in out.loc["sms_and_cart", "reason_codes"]


# ---------------------------------------------------------------------------- frequency cap
def test_frequency_cap_blocks_email_offers_at_k_sends_in_7_days():
    settings = OffersSettings(holdout_share=0.0, max_emails_per_7_days=2)
    out = decide([
        on_the_fence_cart("one_send", marketing_emails_7d=1),
        on_the_fence_cart("two_sends", marketing_emails_7d=2),
        on_the_fence_cart("five_sends", marketing_emails_7d=5),
    ], settings)
    assert out.loc["one_send", "offer"].startswith("cart_reminder")
    for pid in ("two_sends", "five_sends"):
        assert out.loc[pid, "offer"] == "none" and out.loc[pid, "channel"] == "none"
        assert "frequency_capped" in out.loc[pid, "reason_codes"].split(",")


# ---------------------------------------------------------------------------- exclusions
def test_no_discount_for_people_likely_to_buy_anyway():
    out = decide([
        on_the_fence_cart("fence"),
        on_the_fence_cart("likely", purchase_probability=0.6, intent_group="likely"),
        on_the_fence_cart("low_risk", churn_probability=0.05, risk_tier="low"),
    ])
    assert out.loc["fence", "offer"] == "cart_reminder_discount"  # discount lift pays off on the fence
    for pid in ("likely", "low_risk"):
        assert out.loc[pid, "offer"] == "cart_reminder"
        assert "no_discount_likely_buyer" in out.loc[pid, "reason_codes"]


def test_winback_only_for_churn_risk_and_never_as_a_discount_to_low_risk():
    out = decide([
        person("high", churn_probability=0.9, risk_tier="high"),
        person("low", churn_probability=0.1, risk_tier="low"),
    ])
    assert out.loc["high", "offer"] == "winback_discount"
    assert out.loc["high", "reason_codes"].startswith("churn_risk_high")
    assert out.loc["low", "offer"] == "none"


def test_nothing_offered_that_was_bought_recently():
    out = decide([
        on_the_fence_cart("cart_bought", cart_bought_recently=True),
        person("no_sku", churn_probability=0.2, risk_tier="low", cross_sell_sku=None, replenishment_sku=None),
        person("has_sku", churn_probability=0.2, risk_tier="low", cross_sell_sku="SKU1"),
    ])
    assert out.loc["cart_bought", "offer"] not in ("cart_reminder", "cart_reminder_discount")
    assert "cart_items_bought_recently" in out.loc["cart_bought", "reason_codes"]
    assert out.loc["no_sku", "offer"] == "none"
    assert out.loc["has_sku", ["offer", "sku"]].tolist() == ["cross_sell", "SKU1"]


# ---------------------------------------------------------------------------- expected value
def test_choice_by_expected_value_propensity_times_value_minus_cost():
    settings = OffersSettings(holdout_share=0.0)
    spec = settings.catalog["cart_reminder"]
    out = decide([person("small_cart", cart_id="c1", cart_value=5.0, purchase_probability=0.9, intent_group="likely",
                         churn_probability=0.05, risk_tier="low")], settings)
    assert out.loc["small_cart", "offer"] == "cart_reminder"
    assert out.loc["small_cart", "expected_value"] == pytest.approx(0.9 * spec.value * 5.0 - spec.cost, abs=1e-4)
    # When nothing has a positive expected value, the offer is none.
    tiny = decide([person("tiny", cart_id="c2", cart_value=0.01, purchase_probability=0.01, intent_group="unlikely")])
    assert tiny.loc["tiny", "offer"] == "none" and tiny.loc["tiny", "expected_value"] == 0
    assert tiny.loc["tiny", "reason_codes"].endswith("nothing_worth_sending")


# ---------------------------------------------------------------------------- inputs from the warehouse
def test_offer_inputs_count_sends_consent_and_recent_purchases_from_the_warehouse(tmp_path):
    as_of = dt.datetime(2025, 6, 30, 23, 59, 59)
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    for schema in ("marts", "intermediate", "staging"):
        con.execute(f"CREATE SCHEMA {schema}")
    con.execute("""CREATE TABLE marts.consent AS SELECT * FROM (VALUES
        ('p1', 'email_marketing', 'granted'), ('p2', 'email_marketing', 'denied'),
        ('p3', 'sms_marketing', 'granted')) t(person_id, channel, status)""")
    con.execute("""CREATE TABLE intermediate.int_email_activity AS SELECT * FROM (VALUES
        ('p1', 'sent', TIMESTAMP '2025-06-29 09:00:00'), ('p1', 'sent', TIMESTAMP '2025-06-25 09:00:00'),
        ('p1', 'open', TIMESTAMP '2025-06-29 10:00:00'), ('p1', 'sent', TIMESTAMP '2025-06-20 09:00:00'),
        ('p3', 'sent', TIMESTAMP '2025-07-02 09:00:00')) t(person_id, event_type, occurred_at)""")
    con.execute("""CREATE TABLE intermediate.int_order_lines AS SELECT * FROM (VALUES
        ('p1', 'A', 'shoes', 'o1', TIMESTAMP '2025-06-20 10:00:00', 1),
        ('p9', 'A', 'shoes', 'o2', TIMESTAMP '2025-06-10 10:00:00', 5),
        ('p9', 'B', 'shoes', 'o3', TIMESTAMP '2025-06-11 10:00:00', 3),
        ('p1', 'K', 'kitchen', 'o4', TIMESTAMP '2025-03-01 10:00:00', 1),
        ('p1', 'K', 'kitchen', 'o5', TIMESTAMP '2025-04-01 10:00:00', 1))
        t(person_id, sku, category, order_key, ordered_at, quantity)""")
    con.execute("""CREATE TABLE staging.stg_web__events AS SELECT * FROM (VALUES
        ('c1', 'product_added', 'A')) t(cart_id, event_name, product_id)""")
    con.execute("""CREATE TABLE marts.customer_traits AS SELECT * FROM (VALUES
        ('p1', 'shoes', 3, 'loyal'), ('p3', 'shoes', 0, NULL)) t(person_id, preferred_category, order_count, rfm_segment)""")
    churn = pd.DataFrame({"person_id": ["p1"], "churn_probability": [0.3], "risk_tier": ["medium"]})
    carts = pd.DataFrame({"person_id": ["p1"], "cart_id": ["c1"], "cart_value": [20.0], "purchase_probability": [0.2],
                          "intent_group": ["on_the_fence"]})
    frame = offer_inputs(con, churn, carts, OffersSettings(), as_of).set_index("person_id")
    assert list(frame.index) == ["p1", "p3"]  # p2 denied consent
    assert frame.loc["p1", "marketing_emails_7d"] == 2  # two sends in the 7 days; the open and older send not
    assert frame.loc["p3", "marketing_emails_7d"] == 0  # a send after as_of does not count
    assert bool(frame.loc["p1", "cart_bought_recently"])  # the cart's only item was bought on 06-20
    assert frame.loc["p1", "cross_sell_sku"] == "B"  # best seller A was bought recently: next best
    assert frame.loc["p1", "replenishment_sku"] == "K"  # bought twice, last 90 days ago
    assert bool(frame.loc["p1", "is_vip"]) and not bool(frame.loc["p3", "is_vip"])
    assert pd.isna(frame.loc["p3", "cross_sell_sku"])  # never bought: no cross-sell
    assert set(frame.columns) >= set(INPUT_COLUMNS) - {"person_id"}


# ---------------------------------------------------------------------------- settings and helpers
def test_model_settings_errors_name_the_key(tmp_path):
    from core.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"offers\.catalog.*unknown offer\(s\) free_pony"):
        config_from_dict({"offers": {"catalog": {"free_pony": {"value": 1.0}}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"churn.*medium_risk_at must be below high_risk_at"):
        config_from_dict({"churn": {"high_risk_at": 0.3, "medium_risk_at": 0.5}}, tmp_path)
    with pytest.raises(ConfigError, match=r"cart_intent\.likley_at: unknown key"):
        config_from_dict({"cart_intent": {"likley_at": 0.4}}, tmp_path)
    config = config_from_dict({"churn": {"horizon_days": 60}}, tmp_path)
    from core.settings.scoring import dbt_vars

    assert dbt_vars(config.churn, config.cart_intent) == {"churn_horizon_days": 60}  # defaults are not passed


def test_expected_return_window_is_the_median_remaining_gap_of_carts_this_old():
    from scoring.cart import expected_return_hours

    gaps = [2.0, 4.0, 10.0, 30.0, 100.0]
    got = expected_return_hours(np.array([0.0, 5.0, 50.0, 200.0]), gaps)
    assert got[0] == pytest.approx(10.0)  # median of all gaps
    assert got[1] == pytest.approx(30.0 - 5.0)  # gaps longer than 5 h: 10, 30, 100 -> 30
    assert got[2] == pytest.approx(100.0 - 50.0)
    assert np.isnan(got[3])  # no past cart came back this late
