"""The truth about offers: how much an offer raises each person's chance to buy.

Nothing here changes what `generate` writes; it is the latent model an experiment is checked
against. A person's orders in a window of W days follow Poisson(mu), mu = purchase_rate * W / 30
(population.purchase_rate is purchases per month when active). An offer makes them place one
more order with probability `response`, which grows with the latent discount sensitivity (the
same one that decides who uses discounts, population.py) and with the offer's discount:

    response = base + per_discount_point * discount_pct * 100 * discount_sensitivity   (capped at 1)

So the true lifts are known exactly: conversion rises by response * exp(-mu) (the extra order
only converts someone who would not have ordered), revenue per person by response * the offer
order's value (the basket less the discount).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Mean basket value (pounds) and its gamma shape: the simulated order values.
BASKET_MEAN = 45.0
BASKET_SHAPE = 2.0


@dataclass(frozen=True)
class OfferResponse:
    base: float                 # response of someone indifferent to discounts
    per_discount_point: float   # extra response per discount point at full discount sensitivity
    discount_pct: float = 0.0


# The same offers as core/settings/scoring.py's default catalog.
OFFER_RESPONSES = {
    "cart_reminder": OfferResponse(0.04, 0.0),
    "cart_reminder_discount": OfferResponse(0.04, 0.012, 0.10),
    "winback_discount": OfferResponse(0.02, 0.010, 0.15),
    "cross_sell": OfferResponse(0.02, 0.0),
    "replenishment": OfferResponse(0.05, 0.0),
    "vip_early_access": OfferResponse(0.03, 0.0),
    "none": OfferResponse(0.0, 0.0),
}


def response(offer: str, discount_sensitivity: np.ndarray) -> np.ndarray:
    r = OFFER_RESPONSES[offer]
    return np.minimum(1.0, r.base + r.per_discount_point * r.discount_pct * 100 * discount_sensitivity)


def expected_orders(purchase_rate: np.ndarray, window_days: int) -> np.ndarray:
    return purchase_rate * window_days / 30.0


def true_effects(offer: str, purchase_rate: np.ndarray, discount_sensitivity: np.ndarray,
                 window_days: int) -> dict[str, np.ndarray]:
    """Each person's true effect of the offer on conversion and on revenue in the window."""
    mu = expected_orders(purchase_rate, window_days)
    u = response(offer, discount_sensitivity)
    return {"conversion": u * np.exp(-mu),
            "revenue_per_person": u * BASKET_MEAN * (1 - OFFER_RESPONSES[offer].discount_pct)}


def simulate_outcomes(rng: np.random.Generator, offer: str, purchase_rate: np.ndarray,
                      discount_sensitivity: np.ndarray, treated: np.ndarray, window_days: int) -> dict[str, np.ndarray]:
    """One draw of each person's orders and revenue in the window; `treated` get the offer."""
    n = len(purchase_rate)
    orders = rng.poisson(expected_orders(purchase_rate, window_days))
    basket = rng.gamma(BASKET_SHAPE, BASKET_MEAN / BASKET_SHAPE, (n,))
    revenue = orders * basket  # their usual basket, per order
    extra = treated & (rng.random(n) < response(offer, discount_sensitivity))
    offer_basket = rng.gamma(BASKET_SHAPE, BASKET_MEAN / BASKET_SHAPE, (n,)) * (1 - OFFER_RESPONSES[offer].discount_pct)
    orders = orders + extra
    revenue = revenue + np.where(extra, offer_basket, 0.0)
    return {"orders": orders, "converted": (orders > 0).astype(float), "revenue": revenue}
