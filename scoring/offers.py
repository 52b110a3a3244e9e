"""Next-best-offer: one decision per contactable person, by expected value, with a holdout.

`decide_offers(people, settings)` is the whole rule book on one DataFrame (one row per person
with consent, sends, model outputs and offer candidates - see INPUT_COLUMNS); `offer_inputs`
builds that frame from the warehouse. The rules, in order:

1. Contactable: a row only for a person with consent granted on at least one channel the
   catalog uses (email -> consent 'email_marketing', sms -> 'sms_marketing', web ->
   'web_personalisation'); an offer needs consent on its own channel.
2. Frequency cap: no email offer for someone who got `max_emails_per_7_days` or more
   marketing emails in the 7 days before as_of (the email tool's send history).
3. No discount for people likely to buy anyway: cart intent 'likely' or churn risk 'low'.
4. Nothing offered that they bought in the last `recent_purchase_days`: the cross-sell and
   replenishment products exclude it, and a cart reminder is not sent for a cart whose items
   were all bought recently.
5. Expected value = propensity x value - cost (below); the best positive one wins, else 'none'.
6. Holdout: hash(person_id | experiment) puts `holdout_share` of people in the holdout; they
   get offer 'holdout' (holdout = true) and `assigned_offer` records what they would have got,
   so that lift can be measured.

Propensities: cart offers use the cart model's purchase probability (the discount adds its
`lift`), value = `value` share of the cart's value less the discount; win-back = churn
probability x lift (the share of would-be churners the offer keeps); cross-sell,
replenishment and VIP early access = lift x (1 - churn probability) (0.5 when unknown).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.settings.scoring import CHANNELS, Offer, OffersSettings

INPUT_COLUMNS = {
    "person_id": "person",
    "consent_email_marketing": "bool: consent granted for marketing email",
    "consent_sms_marketing": "bool",
    "consent_web_personalisation": "bool",
    "marketing_emails_7d": "marketing emails sent to them in the 7 days before as_of",
    "churn_probability": "float or NaN (not a recent buyer)",
    "risk_tier": "high/medium/low or None",
    "cart_id": "latest open cart or None",
    "cart_value": "float",
    "purchase_probability": "float or NaN",
    "intent_group": "likely/on_the_fence/unlikely or None",
    "cart_bought_recently": "bool: every item of the open cart was bought in the recent window",
    "cross_sell_sku": "best seller of their favourite category not bought recently, or None",
    "replenishment_sku": "a product they buy again and are due for, or None",
    "is_vip": "bool: RFM champions or loyal",
}


def in_holdout(person_ids, experiment: str, share: float) -> np.ndarray:
    """Deterministic: the same person and experiment always land on the same side; about
    `share` of people are held out. SHA-256 of 'person_id|experiment', first 60 bits as a
    uniform number in [0, 1)."""
    def u(pid) -> float:
        digest = hashlib.sha256(f"{pid}|{experiment}".encode()).hexdigest()
        return int(digest[:15], 16) / float(16 ** 15)
    return np.array([u(p) < share for p in person_ids], dtype=bool)


CART_OFFERS = ("cart_reminder", "cart_reminder_discount")
_OFFER_REASON = {"cross_sell": "cross_sell_favourite_category", "replenishment": "due_for_replenishment",
                 "vip_early_access": "vip_customer"}


def experiment_holdout(person_ids, settings: OffersSettings, experiment: str | None = None,
                       arms: pd.DataFrame | None = None) -> tuple[np.ndarray, str, np.ndarray]:
    """Who is held out, under which experiment, and each person's arm. With an experiment attached
    to offers (cdp.yaml `experiments:` with offers: true), `arms` are its recorded assignments
    (person_id, arm, holdout): its holdout arms are held out, and people it has not exposed are
    not in it (arm None). Without one, the hash holdout of offers.holdout_share (arm 'holdout' or
    'offer')."""
    ids = pd.Series(list(person_ids), dtype=object)
    if experiment is None or arms is None:
        held = in_holdout(ids.tolist(), settings.experiment, settings.holdout_share)
        return held, settings.experiment, np.where(held, "holdout", "offer").astype(object)
    by_person = arms.drop_duplicates("person_id").set_index("person_id")
    held = ids.map(by_person["holdout"]).eq(True).to_numpy()  # not exposed (NaN): not held out
    arm = ids.map(by_person["arm"]).astype(object).to_numpy()
    return held, experiment, np.where(pd.isna(arm), None, arm).astype(object)


def decide_offers(people: pd.DataFrame, settings: OffersSettings, experiment: str | None = None,
                  arms: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rule book (module docstring) applied to every person: one row per contactable person."""
    _require_inputs(people)
    catalog = {name: spec for name, spec in settings.catalog.items() if name != "none"}
    channels_used = sorted({spec.channel for spec in catalog.values()})
    people, consent = _contactable(people, channels_used)
    s = _Signals.of(people, consent, settings)
    eligible, value = {}, {}
    for name, spec in catalog.items():
        if name not in _CANDIDATES:  # pragma: no cover - the settings model only allows these names
            raise ValueError(f"unknown offer {name!r}")
        candidate, propensity, worth = _CANDIDATES[name](s, spec)
        eligible[name] = (candidate & _consented(s, spec) & _under_frequency_cap(s, spec)
                          & _discount_needed(s, spec))
        value[name] = _expected_value(propensity, worth, spec)
    chosen, best_ev = _best_offer(catalog, eligible, value, len(people))
    discounts = any(spec.discount_pct > 0 for spec in catalog.values())
    reasons = [_reason_codes(s, i, offer, channels_used, discounts) for i, offer in enumerate(chosen)]
    holdout, experiment_name, arm = experiment_holdout(people["person_id"], settings, experiment, arms)
    return _offers_frame(people, settings, catalog, chosen, best_ev, reasons, holdout, experiment_name, arm)


def _require_inputs(people: pd.DataFrame) -> None:
    missing = [c for c in INPUT_COLUMNS if c not in people.columns]
    if missing:
        raise ValueError(f"next-best-offer inputs lack column(s): {', '.join(missing)}")


def _contactable(people: pd.DataFrame, channels_used: list[str]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Rule 1: only people with consent on a channel some offer uses; their consent per channel."""
    consent = {ch: people[f"consent_{CHANNELS[ch]}"].fillna(False).astype(bool).to_numpy() for ch in CHANNELS}
    contactable = np.zeros(len(people), dtype=bool)
    for ch in channels_used:
        contactable |= consent[ch]
    return people[contactable].reset_index(drop=True), {ch: v[contactable] for ch, v in consent.items()}


@dataclass
class _Signals:
    """What the rules read, one array entry per contactable person."""

    people: pd.DataFrame
    consent: dict[str, np.ndarray]
    churn: np.ndarray  # NaN: not a recent buyer
    stay: np.ndarray  # 1 - churn probability, 0.5 when unknown
    risk: np.ndarray
    intent: np.ndarray
    has_cart: np.ndarray
    cart_value: np.ndarray
    p_cart: np.ndarray
    cart_bought: np.ndarray
    capped: np.ndarray  # at the email frequency cap
    likely_buyer: np.ndarray  # would buy anyway: cart intent 'likely' or churn risk 'low'

    @classmethod
    def of(cls, people: pd.DataFrame, consent: dict[str, np.ndarray], settings: OffersSettings) -> _Signals:
        churn = people["churn_probability"].astype(float).to_numpy()
        risk = people["risk_tier"].astype(object).to_numpy()
        intent = people["intent_group"].astype(object).to_numpy()
        return cls(
            people=people, consent=consent, churn=churn, stay=np.where(np.isnan(churn), 0.5, 1 - churn),
            risk=risk, intent=intent, has_cart=people["cart_id"].notna().to_numpy(),
            cart_value=people["cart_value"].astype(float).fillna(0).to_numpy(),
            p_cart=people["purchase_probability"].astype(float).fillna(0).to_numpy(),
            cart_bought=people["cart_bought_recently"].fillna(False).astype(bool).to_numpy(),
            capped=people["marketing_emails_7d"].fillna(0).to_numpy() >= settings.max_emails_per_7_days,
            likely_buyer=(intent == "likely") | (risk == "low"))

    def flag(self, column: str) -> np.ndarray:
        return self.people[column].fillna(False).astype(bool).to_numpy()

    def present(self, column: str) -> np.ndarray:
        return self.people[column].notna().to_numpy()

    def constant(self, value: float) -> np.ndarray:
        return np.full(len(self.people), value)


# ---- the rules that apply to every offer: each gives who may receive it

def _consented(s: _Signals, spec: Offer) -> np.ndarray:
    """Rule 1: consent on the offer's own channel."""
    return s.consent[spec.channel]


def _under_frequency_cap(s: _Signals, spec: Offer) -> np.ndarray | bool:
    """Rule 2: no email offer at or above the 7-day marketing email cap."""
    return ~s.capped if spec.channel == "email" else True


def _discount_needed(s: _Signals, spec: Offer) -> np.ndarray | bool:
    """Rule 3: no discount for people likely to buy anyway."""
    return ~s.likely_buyer if spec.discount_pct > 0 else True


def _cart_not_bought_recently(s: _Signals) -> np.ndarray:
    """Rule 4 for carts: an open cart whose items were not all bought recently (cross-sell and
    replenishment products already exclude recent purchases in `offer_inputs`)."""
    return s.has_cart & ~s.cart_bought


def _expected_value(propensity: np.ndarray, worth: np.ndarray, spec: Offer) -> np.ndarray:
    """Rule 5: propensity x value - cost."""
    return propensity * worth - spec.cost


# ---- each offer: (who is a candidate, propensity to buy, value of a conversion)

def _cart_reminder(s: _Signals, spec: Offer):
    return _cart_not_bought_recently(s), s.p_cart, spec.value * s.cart_value


def _cart_reminder_discount(s: _Signals, spec: Offer):
    # the discount adds its lift to the cart model's probability and is taken off the value
    return (_cart_not_bought_recently(s), np.minimum(1.0, s.p_cart + spec.lift),
            (spec.value - spec.discount_pct) * s.cart_value)


def _winback_discount(s: _Signals, spec: Offer):
    # lift = the share of would-be churners the offer keeps
    return np.isin(s.risk, ["high", "medium"]), np.nan_to_num(s.churn) * spec.lift, s.constant(spec.value)


def _cross_sell(s: _Signals, spec: Offer):
    return s.present("cross_sell_sku"), spec.lift * s.stay, s.constant(spec.value)


def _replenishment(s: _Signals, spec: Offer):
    return s.present("replenishment_sku"), spec.lift * s.stay, s.constant(spec.value)


def _vip_early_access(s: _Signals, spec: Offer):
    return s.flag("is_vip"), spec.lift * s.stay, s.constant(spec.value)


_CANDIDATES = {"cart_reminder": _cart_reminder, "cart_reminder_discount": _cart_reminder_discount,
               "winback_discount": _winback_discount, "cross_sell": _cross_sell, "replenishment": _replenishment,
               "vip_early_access": _vip_early_access}


def _best_offer(catalog: dict[str, Offer], eligible: dict[str, np.ndarray], value: dict[str, np.ndarray],
                n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule 5: the eligible offer of highest expected value if positive, else 'none'; and that value."""
    names = list(catalog)
    ev = np.column_stack([np.where(eligible[k], value[k], -np.inf) for k in names]) if names else np.zeros((n, 0))
    best = ev.argmax(axis=1) if names else np.zeros(n, dtype=int)
    best_ev = ev[np.arange(n), best] if names else np.full(n, -np.inf)
    chosen = np.where(best_ev > 0, np.array(names, dtype=object)[best] if names else "none", "none")
    return chosen, best_ev


def _reason_codes(s: _Signals, i: int, offer: str, channels_used: list[str], discounts: bool) -> str:
    """Why person i got ``offer``: what made it fit, then every rule that held something back."""
    codes = []
    if offer in CART_OFFERS:
        codes += ["open_cart", f"cart_intent_{s.intent[i]}"]
    elif offer == "winback_discount":
        codes.append(f"churn_risk_{s.risk[i]}")
    elif offer in _OFFER_REASON:
        codes.append(_OFFER_REASON[offer])
    if s.capped[i]:
        codes.append("frequency_capped")
    if s.likely_buyer[i] and discounts:
        codes.append("no_discount_likely_buyer")
    if s.has_cart[i] and s.cart_bought[i]:
        codes.append("cart_items_bought_recently")
    codes += [f"no_consent_{ch}" for ch in channels_used if not s.consent[ch][i]]
    codes.append("best_expected_value" if offer != "none" else "nothing_worth_sending")
    return ",".join(codes)


def _offers_frame(people: pd.DataFrame, settings: OffersSettings, catalog: dict[str, Offer], chosen: np.ndarray,
                  best_ev: np.ndarray, reasons: list[str], holdout: np.ndarray, experiment_name: str,
                  arm: np.ndarray) -> pd.DataFrame:
    """Rule 6: held-out people get 'holdout' on no channel; `assigned_*` keep what they would have got."""
    n = len(people)
    none_spec = settings.catalog.get("none")
    channel = np.array([catalog[o].channel if o in catalog else (none_spec.channel if none_spec else "none")
                        for o in chosen], dtype=object)
    channel = np.where(chosen == "none", "none", channel)
    sku = np.where(chosen == "cross_sell", people["cross_sell_sku"].astype(object),
                   np.where(chosen == "replenishment", people["replenishment_sku"].astype(object), None))
    expected_value = np.where(chosen == "none", 0.0, np.round(best_ev, 4))
    return pd.DataFrame({
        "person_id": people["person_id"].to_numpy(),
        "offer": np.where(holdout, "holdout", chosen),
        "assigned_offer": chosen,
        "channel": np.where(holdout, "none", channel),
        "expected_value": np.where(holdout, 0.0, expected_value),
        "assigned_expected_value": expected_value,
        "reason_codes": np.where(holdout, np.char.add("holdout,", np.array(reasons, dtype=str)) if n else [],
                                 np.array(reasons, dtype=object)),
        "holdout": holdout,
        "experiment": experiment_name,
        "arm": arm,
        "cart_id": np.where(np.isin(chosen, CART_OFFERS), people["cart_id"].astype(object), None),
        "sku": sku,
    })
