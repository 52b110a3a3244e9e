"""cdp.yaml's `churn`, `cart_intent` and `offers` sections (validated like the rest of the
config: unknown keys are errors naming the key)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.published import CONSENT_CHANNELS

ALGORITHMS = ("gradient_boosting", "logistic_regression")
OFFER_NAMES = ("cart_reminder", "cart_reminder_discount", "winback_discount", "cross_sell", "replenishment",
               "vip_early_access", "none")
# Offer channel -> the consent it needs: email -> email_marketing, sms -> sms_marketing, web -> web_personalisation.
CHANNELS = {channel.split("_")[0]: channel for channel in CONSENT_CHANNELS}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SavedModelSettings(_Strict):
    """What churn and cart intent share: how a saved model (scoring/model_store.py) is fitted,
    calibrated, kept and refitted. One definition, so the two models cannot drift apart."""

    calibration: Literal["auto", "isotonic", "sigmoid"] = Field(
        default="auto",
        description="Calibrated on the validation split (churn: the as_of - horizon snapshot; cart intent: the "
                    "latest labelled week); auto = isotonic from 1,000 rows, else sigmoid (Platt).")
    switch_margin: float = Field(
        default=0.01, ge=0, le=0.5,
        description="The saved model's algorithm stays unless a challenger's validation ROC AUC beats it by this.")
    max_training_rows: int = Field(
        default=100_000, ge=1_000,
        description="Fit on a seeded sample of at most this many rows: boosting keeps more rounds on more rows, "
                    "and every scored row pays for each round, so without a cap scoring grew faster than the data.")
    refit_every_days: int = Field(
        default=7, ge=0, le=365,
        description="Refit the model when the saved one is this many days old (0 = every run); in between, the "
                    "saved model scores.")
    refit_if_auc_drops_by: float = Field(
        default=0.03, ge=0, le=1,
        description="Drift: refit early when the saved model's ROC AUC on the newest labelled rows falls this far "
                    "below its ROC AUC at fitting.")
    seed: int = 7


class ChurnSettings(_SavedModelSettings):
    horizon_days: int = Field(default=90, ge=14, le=365,
                              description="Churned = no purchase in this many days (among buyers of the prior 365).")
    high_risk_at: float = Field(default=0.7, gt=0, lt=1, description="churn_probability >= this -> risk tier high.")
    medium_risk_at: float = Field(default=0.4, gt=0, lt=1, description="churn_probability >= this -> medium; else low.")
    risk_tiers: Literal["probability", "quantile"] = Field(
        default="probability",
        description="probability: tiers at high_risk_at / medium_risk_at of the calibrated probability; quantile: "
                    "the top high_risk_share of scored people are high, the next medium_risk_share medium.")
    high_risk_share: float = Field(default=0.2, gt=0, lt=1)
    medium_risk_share: float = Field(default=0.3, gt=0, lt=1)
    top_reasons: int = Field(default=3, ge=1, le=10)
    algorithms: list[Literal["gradient_boosting", "logistic_regression"]] = Field(
        default_factory=lambda: list(ALGORITHMS), min_length=1,
        description="Candidates; the one with the best time-split validation ROC AUC is used.")

    @model_validator(mode="after")
    def _ordered(self) -> "ChurnSettings":
        if self.medium_risk_at >= self.high_risk_at:
            raise ValueError("medium_risk_at must be below high_risk_at")
        if self.high_risk_share + self.medium_risk_share > 1:
            raise ValueError("high_risk_share + medium_risk_share must be at most 1")
        return self


class CartIntentSettings(_SavedModelSettings):
    window_days: int = Field(default=7, ge=1, le=30, description="Intent = the open cart is ordered within this many days.")
    lookback_days: int = Field(default=30, ge=1, le=90,
                               description="A cart last touched this many days before the cutoff, unordered, is open.")
    history_weeks: int = Field(default=12, ge=2, le=52, description="Weekly past cutoffs the model learns from.")
    likely_at: float = Field(default=0.3, gt=0, lt=1, description="purchase_probability >= this -> 'likely'.")
    unlikely_below: float = Field(default=0.05, gt=0, lt=1, description="purchase_probability < this -> 'unlikely'.")

    @model_validator(mode="after")
    def _ordered(self) -> "CartIntentSettings":
        if self.unlikely_below >= self.likely_at:
            raise ValueError("unlikely_below must be below likely_at")
        return self


class Offer(_Strict):
    channel: Literal["email", "sms", "web"] = "email"
    value: float = Field(ge=0, description="Margin (currency) a conversion brings; cart offers: share of the cart's value.")
    cost: float = Field(default=0.0, ge=0, description="Cost per contact, including the expected cost of any discount.")
    discount_pct: float = Field(default=0.0, ge=0, le=1, description="Discount the offer gives (0 = none).")
    lift: float = Field(default=0.0, ge=0, le=1, description="Response the offer adds to the propensity to buy (README \"Churn, cart intent, next-best-offer\").")


def _default_catalog() -> dict[str, Offer]:
    return {
        "cart_reminder": Offer(value=0.30, cost=0.02, lift=0.0),
        "cart_reminder_discount": Offer(value=0.30, cost=0.05, discount_pct=0.10, lift=0.15),
        "winback_discount": Offer(value=25.0, cost=2.0, discount_pct=0.15, lift=0.20),
        "cross_sell": Offer(value=12.0, cost=0.05, lift=0.04),
        "replenishment": Offer(value=15.0, cost=0.05, lift=0.10),
        "vip_early_access": Offer(value=20.0, cost=0.10, lift=0.08),
        "none": Offer(value=0.0, cost=0.0),
    }


class OffersSettings(_Strict):
    experiment: str = Field(default="nbo", min_length=1, description="Experiment name; salts the holdout hash.")
    holdout_share: float = Field(default=0.10, ge=0, lt=1, description="Share of people held out (offer 'holdout').")
    max_emails_per_7_days: int = Field(default=3, ge=0,
                                       description="Frequency cap: no email offer after this many marketing sends in 7 days.")
    recent_purchase_days: int = Field(default=30, ge=0, description="Nothing offered that was bought in this many days.")
    replenish_after_days: int = Field(default=45, ge=1, description="A product bought twice or more and last bought this many days ago or more is due.")
    catalog: dict[str, Offer] = Field(default_factory=_default_catalog)

    @field_validator("catalog")
    @classmethod
    def _known_offers(cls, catalog: dict[str, Offer]) -> dict[str, Offer]:
        unknown = sorted(set(catalog) - set(OFFER_NAMES))
        if unknown:
            raise ValueError(f"unknown offer(s) {', '.join(unknown)}; offers are: {', '.join(OFFER_NAMES)}")
        return catalog

    def offer(self, name: str) -> Offer | None:
        return self.catalog.get(name)


class RecommendationsSettings(_Strict):
    """cdp.yaml's `recommendations` section (scoring/recommend.py). The blend's weights are not
    settings: they are learnt on a time split of the shop's own orders at every run."""

    list_length: int = Field(default=10, ge=1, le=100, description="Products per person in `recommendations`.")
    exclude_bought_within_days: int = Field(
        default=0, ge=0, le=365,
        description="Never recommend what the person bought in this many days (0 = rebuys allowed: on a "
                    "repeat-purchase shop they are often the best recommendation).")
    max_per_category: int = Field(default=4, ge=1, le=100,
                                  description="Diversity: at most this many products of one category in a list.")
    horizon_days: int = Field(default=90, ge=7, le=365,
                              description="The blend learns which signals predict purchases in this many days.")
    trending_days: int = Field(default=30, ge=1, le=365, description="'Trending' = most buyers in these days.")
    view_days: int = Field(default=90, ge=1, le=730, description="Product views this recent count (co-views, affinity).")
    neighbours: int = Field(default=20, ge=1, le=200, description="Co-purchase / co-view neighbours kept per product.")
    seed_items: int = Field(default=10, ge=1, le=100,
                            description="A person's most recent products that seed their co-purchase candidates.")
    collaborative: bool = Field(default=True, description="Add implicit-feedback ALS candidates when the data allows.")
    blend_confidence: float = Field(
        default=0.95, ge=0.5, lt=1.0,
        description="The learnt blend is published only if a paired bootstrap over held-out buyers of the time "
                    "split before the run's as_of (both methods' HitRate@list_length and Recall@list_length on "
                    "the same people) shows it ahead of the best simple method (buy-again, popularity) in one and "
                    "not behind in the other, at this one-sided confidence over both metrics (each lower bound at "
                    "1 - (1 - confidence) / 2); otherwise that method's lists.")
    training_customers: int = Field(default=20_000, ge=100,
                                    description="Buyers sampled to fit the blend (bounds its cost at any scale).")
    refit_every_days: int = Field(
        default=7, ge=0, le=365,
        description="Refit the recommendation model (the blend and the shop-wide signals: best sellers, trending, "
                    "co-purchase and co-view neighbours, ALS item factors) when the saved one is this many days "
                    "old (0 = every run); in between, only persons whose own purchases or views changed get new "
                    "lists, with the saved model.")
    seed: int = 7

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data):
        if isinstance(data, dict) and "blend_must_beat_by" in data:
            raise ValueError("blend_must_beat_by was replaced by blend_confidence (a paired test over the held-out "
                             "buyers, e.g. 0.95): remove blend_must_beat_by")
        return data


def dbt_vars(churn: ChurnSettings, cart: CartIntentSettings) -> dict[str, int]:
    """dbt vars for the feature models, only where they differ from dbt_project.yml's defaults
    (passing vars makes dbt re-parse the project)."""
    wanted = {"churn_horizon_days": churn.horizon_days, "cart_intent_days": cart.window_days,
              "cart_lookback_days": cart.lookback_days, "cart_history_weeks": cart.history_weeks}
    defaults = {"churn_horizon_days": 90, "cart_intent_days": 7, "cart_lookback_days": 30, "cart_history_weeks": 12}
    return {k: v for k, v in wanted.items() if v != defaults[k]}
