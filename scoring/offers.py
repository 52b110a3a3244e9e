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

import numpy as np
import pandas as pd

from core.settings.scoring import CHANNELS, OffersSettings

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
    held = ids.map(by_person["holdout"]).fillna(False).astype(bool).to_numpy()
    arm = ids.map(by_person["arm"]).astype(object).to_numpy()
    return held, experiment, np.where(pd.isna(arm), None, arm).astype(object)


def decide_offers(people: pd.DataFrame, settings: OffersSettings, experiment: str | None = None,
                  arms: pd.DataFrame | None = None) -> pd.DataFrame:
    missing = [c for c in INPUT_COLUMNS if c not in people.columns]
    if missing:
        raise ValueError(f"next-best-offer inputs lack column(s): {', '.join(missing)}")
    catalog = {name: spec for name, spec in settings.catalog.items() if name != "none"}
    channels_used = sorted({spec.channel for spec in catalog.values()})
    consent = {ch: people[f"consent_{CHANNELS[ch]}"].fillna(False).astype(bool).to_numpy() for ch in CHANNELS}
    contactable = np.zeros(len(people), dtype=bool)
    for ch in channels_used:
        contactable |= consent[ch]
    people = people[contactable].reset_index(drop=True)
    consent = {ch: v[contactable] for ch, v in consent.items()}
    n = len(people)

    churn = people["churn_probability"].astype(float).to_numpy()
    stay = np.where(np.isnan(churn), 0.5, 1 - churn)
    risk = people["risk_tier"].astype(object).to_numpy()
    intent = people["intent_group"].astype(object).to_numpy()
    has_cart = people["cart_id"].notna().to_numpy()
    cart_value = people["cart_value"].astype(float).fillna(0).to_numpy()
    p_cart = people["purchase_probability"].astype(float).fillna(0).to_numpy()
    cart_bought = people["cart_bought_recently"].fillna(False).astype(bool).to_numpy()
    capped = people["marketing_emails_7d"].fillna(0).to_numpy() >= settings.max_emails_per_7_days
    likely_buyer = (intent == "likely") | (risk == "low")

    eligible, value = {}, {}
    for name, spec in catalog.items():
        if name == "cart_reminder":
            ok, p, worth = has_cart & ~cart_bought, p_cart, spec.value * cart_value
        elif name == "cart_reminder_discount":
            ok, p = has_cart & ~cart_bought, np.minimum(1.0, p_cart + spec.lift)
            worth = (spec.value - spec.discount_pct) * cart_value
        elif name == "winback_discount":
            ok, p, worth = np.isin(risk, ["high", "medium"]), np.nan_to_num(churn) * spec.lift, np.full(n, spec.value)
        elif name == "cross_sell":
            ok, p, worth = people["cross_sell_sku"].notna().to_numpy(), spec.lift * stay, np.full(n, spec.value)
        elif name == "replenishment":
            ok, p, worth = people["replenishment_sku"].notna().to_numpy(), spec.lift * stay, np.full(n, spec.value)
        elif name == "vip_early_access":
            ok, p, worth = people["is_vip"].fillna(False).astype(bool).to_numpy(), spec.lift * stay, np.full(n, spec.value)
        else:  # pragma: no cover - the settings model only allows the names above
            raise ValueError(f"unknown offer {name!r}")
        ok = ok & consent[spec.channel]
        if spec.channel == "email":
            ok = ok & ~capped
        if spec.discount_pct > 0:
            ok = ok & ~likely_buyer
        eligible[name] = ok
        value[name] = p * worth - spec.cost

    names = list(catalog)
    ev = np.column_stack([np.where(eligible[k], value[k], -np.inf) for k in names]) if names else np.zeros((n, 0))
    best = ev.argmax(axis=1) if names else np.zeros(n, dtype=int)
    best_ev = ev[np.arange(n), best] if names else np.full(n, -np.inf)
    chosen = np.where(best_ev > 0, np.array(names, dtype=object)[best] if names else "none", "none")
    none_spec = settings.catalog.get("none")

    reasons = []
    for i in range(n):
        offer = chosen[i]
        codes = []
        if offer in ("cart_reminder", "cart_reminder_discount"):
            codes += ["open_cart", f"cart_intent_{intent[i]}"]
        elif offer == "winback_discount":
            codes += [f"churn_risk_{risk[i]}"]
        elif offer == "cross_sell":
            codes += ["cross_sell_favourite_category"]
        elif offer == "replenishment":
            codes += ["due_for_replenishment"]
        elif offer == "vip_early_access":
            codes += ["vip_customer"]
        if capped[i]:
            codes.append("frequency_capped")
        if likely_buyer[i] and any(s.discount_pct > 0 for s in catalog.values()):
            codes.append("no_discount_likely_buyer")
        if has_cart[i] and cart_bought[i]:
            codes.append("cart_items_bought_recently")
        for ch in channels_used:
            if not consent[ch][i]:
                codes.append(f"no_consent_{ch}")
        codes.append("best_expected_value" if offer != "none" else "nothing_worth_sending")
        reasons.append(",".join(codes))

    holdout, experiment_name, arm = experiment_holdout(people["person_id"], settings, experiment, arms)
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
        "cart_id": np.where(np.isin(chosen, ["cart_reminder", "cart_reminder_discount"]),
                            people["cart_id"].astype(object), None),
        "sku": sku,
    })
