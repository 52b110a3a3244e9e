"""Month-by-month simulation of what people do: purchases, web sessions, email, support, churn.

Two passes over the monthly steps, each step acting on all people at once:

1. ``simulate_latent``: a satisfaction random walk per person, support tickets (bad ones
   push satisfaction down) and two-stage churn: low satisfaction makes people start to
   drift away, drifting people engage much less for a few months, then most churn. So
   engagement (purchases, visits, email opens) falls in the months before someone churns.
2. ``simulate_activity``: baskets, orders, carts, web sessions, email campaigns, given
   each month's engagement and the churn times from pass 1.

Outputs are tables of numbers (dicts of numpy columns); writers.py turns them into text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import Catalog
from .population import Population
from .textops import hashed_share
from .timeline import US_PER_DAY, US_PER_HOUR, US_PER_MINUTE, US_PER_SECOND, Timeline

MONTH_US = 30.44 * US_PER_DAY
Table = dict[str, np.ndarray]

# Web event kinds: page, identify, then the track events product_viewed, product_added,
# checkout_started, order_completed, products_searched, consent_updated (writers.WEB_SQL).
PAGE, IDENTIFY, VIEWED, ADDED, CHECKOUT, ORDERED, SEARCHED, CONSENT = range(8)
# Email event kinds, as in contracts.EMAIL_EVENT_TYPES.
SENT, DELIVERED, OPEN, CLICK, BOUNCE, UNSUBSCRIBE, SPAM = range(7)
SATISFACTION_NONE, SATISFACTION_GOOD, SATISFACTION_BAD = 0, 1, 2
CAMPAIGN_DAYS = (2, 11, 20)  # campaign send days within each month
CAMPAIGN_REACH = 0.3  # share of subscribers each campaign is sent to
CART_COMPLETION_WINDOW_US = 7 * US_PER_DAY
# Churn is two-stage. Satisfaction (an AR(1) walk per person, knocked down by bad support
# experiences) sets the hazard of drifting away; drifting people engage much less (fewer
# purchases, visits, opens) for a few months before they churn, and some recover. Tuned so
# churn in the next 90 days is predictable from history with ROC AUC ~0.8, not ~0.99.
SATISFACTION_PERSISTENCE = 0.9
SATISFACTION_NOISE = 0.25
BAD_TICKET_HIT = 0.9  # satisfaction lost per bad support experience
DRIFT_PER_SATISFACTION = 1.2  # log-odds of starting to drift away, per unit of satisfaction lost
DRIFT_PER_BAD_TICKET = 0.8
DRIFTING_ENGAGEMENT = 0.1  # activity multiplier while drifting
DRIFTING_CHURN = 0.18  # monthly chance a drifting person churns
DRIFTING_RECOVERY = 0.06  # monthly chance a drifting person comes back
ACTIVITY_PER_SATISFACTION = 0.6  # engagement = exp(this * satisfaction), times the drift factor


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand counts into (owner index, index within owner) for each of sum(counts) rows."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


def concat(parts: list[Table]) -> Table:
    parts = [p for p in parts if p]
    keys = parts[0].keys()
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def take(table: Table, index) -> Table:
    return {k: v[index] for k, v in table.items()}


# ---------------------------------------------------------------------------------------
# Pass 1: satisfaction, support tickets, churn
# ---------------------------------------------------------------------------------------

@dataclass
class Latent:
    satisfaction: np.ndarray  # (months, people) float32: the value at the start of each month
    engagement: np.ndarray  # (months, people) float32: activity multiplier (falls while drifting)
    churned_us: np.ndarray  # -1 if never churned (within history + future)
    tickets: Table


def _active_window(pop: Population, month, churned_us: np.ndarray | None = None):
    """Per person: [lo, hi) of this month in which they can act, and its length in months."""
    lo = np.maximum(month.start_us, pop.signup_us)
    hi = np.full(pop.n, month.end_us, dtype=np.int64)
    if churned_us is not None:
        hi = np.where(churned_us >= 0, np.minimum(hi, churned_us), hi)
    width = np.maximum(hi - lo, 0)
    return lo, hi, width, width / MONTH_US


def simulate_latent(rng: np.random.Generator, pop: Population, timeline: Timeline) -> Latent:
    n = pop.n
    s = (pop.satisfaction_mean + rng.normal(0, 0.5, n)).astype(np.float32)
    history = np.zeros((len(timeline.months), n), dtype=np.float32)
    engagement = np.zeros((len(timeline.months), n), dtype=np.float32)
    churned_us = np.full(n, -1, dtype=np.int64)
    drifting = np.zeros(n, bool)
    ticket_parts = []
    for m, month in enumerate(timeline.months):
        history[m] = s
        engagement[m] = np.exp(ACTIVITY_PER_SATISFACTION * s) * np.where(drifting, DRIFTING_ENGAGEMENT, 1.0)
        lo, hi, width, frac = _active_window(pop, month)
        alive = (churned_us < 0) & (width > 0)

        # Support tickets: buyers contact support more; unhappy people report bad experiences.
        rate = pop.ticket_rate * frac * (1 + 4.0 * pop.purchase_rate * np.exp(0.5 * s))
        count = np.minimum(rng.poisson(rate), 3) * alive
        person, _ = ragged(count)
        created = lo[person] + (rng.random(len(person)) * width[person]).astype(np.int64)
        p_bad = sigmoid(-1.3 - 0.8 * s[person])
        u = rng.random(len(person))
        satisfaction = np.where(u < p_bad, SATISFACTION_BAD,
                                np.where(u < p_bad + 0.6 * (1 - p_bad), SATISFACTION_GOOD, SATISFACTION_NONE))
        bad = np.bincount(person[satisfaction == SATISFACTION_BAD], minlength=n)
        ticket_parts.append({"person": person.astype(np.int32), "created_us": created,
                             "satisfaction": satisfaction.astype(np.int8)})

        # Churn: drifting people churn (or recover); others start drifting at a hazard set by
        # latent traits, satisfaction and this month's bad experiences.
        churn = alive & drifting & (rng.random(n) < DRIFTING_CHURN * frac)
        recover = drifting & ~churn & (rng.random(n) < DRIFTING_RECOVERY * frac)
        start = sigmoid(pop.hazard_base - DRIFT_PER_SATISFACTION * s + DRIFT_PER_BAD_TICKET * bad) * frac
        drifting = (drifting & ~recover) | (alive & (rng.random(n) < start))
        when = lo + (rng.random(n) * width).astype(np.int64)
        last_ticket = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last_ticket, person, created)
        when = np.minimum(np.maximum(when, last_ticket + US_PER_DAY), hi - 1)  # churn follows the complaint
        churned_us[churn] = when[churn]

        s = (SATISFACTION_PERSISTENCE * s + (1 - SATISFACTION_PERSISTENCE) * pop.satisfaction_mean
             + rng.normal(0, SATISFACTION_NOISE, n) - BAD_TICKET_HIT * bad).astype(np.float32)
    return Latent(history, engagement, churned_us, concat(ticket_parts))


# ---------------------------------------------------------------------------------------
# Pass 2: baskets, orders, carts, web sessions, email
# ---------------------------------------------------------------------------------------

@dataclass
class Activity:
    baskets: Table  # basket, person, created_us, subtotal, discount (pence)
    lines: Table  # basket, line_no, product, quantity, unit_price, discount (pence)
    orders: Table  # order, person, basket, occurred_us, web, subtotal, discount, total, ...
    carts: Table  # abandoned carts: basket, person, added_us, value, completed_us (-1 never)
    web: Table  # web events (kind, ts, device, person, ...)
    email: Table  # email events (kind, ts, person, campaign, click)
    campaign_send_us: np.ndarray
    campaign_label: list[str]
    unsubscribed_us: np.ndarray  # -1 if still subscribed
    cleaned_us: np.ndarray  # -1 if never hard-bounced


class _Counters:
    def __init__(self):
        self.basket = 0
        self.order = 0
        self.session = 0
        self.click = 0

    def take(self, name: str, count: int) -> np.ndarray:
        start = getattr(self, name)
        setattr(self, name, start + count)
        return np.arange(start, start + count, dtype=np.int64)


def _baskets(rng, pop: Population, catalog: Catalog, person: np.ndarray, created_us: np.ndarray,
             counters: _Counters) -> tuple[Table, Table]:
    """Baskets of 1-5 lines from each person's preferred categories, with any discount used."""
    basket = counters.take("basket", len(person))
    line_count = np.minimum(1 + rng.poisson(0.5, len(person)), 5)
    owner, line_no = ragged(line_count)
    pref_cum = np.cumsum(pop.category_pref[person[owner]], axis=1)
    category = (rng.random(len(owner))[:, None] > pref_cum).sum(axis=1).clip(0, pref_cum.shape[1] - 1)
    product = catalog.sample(rng, category)
    quantity = rng.choice([1, 2, 3], len(owner), p=[0.82, 0.14, 0.04])
    unit_price = catalog.price_pence[product]
    # Discount hunters use codes more often; a code takes 10-25% off the basket.
    uses_discount = rng.random(len(person)) < 0.04 + 0.7 * pop.discount_sensitivity[person]
    discount_pct = np.where(uses_discount, rng.choice([0.10, 0.15, 0.20, 0.25], len(person)), 0.0)
    line_discount = np.round(quantity * unit_price * discount_pct[owner]).astype(np.int64)
    lines = {"basket": basket[owner], "line_no": (line_no + 1).astype(np.int16), "product": product.astype(np.int32),
             "quantity": quantity.astype(np.int16), "unit_price": unit_price, "discount": line_discount}
    subtotal = np.bincount(owner, weights=quantity * unit_price, minlength=len(person)).astype(np.int64)
    discount = np.bincount(owner, weights=line_discount, minlength=len(person)).astype(np.int64)
    baskets = {"basket": basket, "person": person.astype(np.int32), "created_us": created_us,
               "subtotal": subtotal, "discount": discount, "line_count": line_count,
               "line_start": np.cumsum(line_count) - line_count}
    return baskets, lines


def _session_events(rng, pop: Population, catalog: Catalog, sessions: Table, baskets: Table,
                    basket_lines: Table) -> Table:
    """Expand sessions into Segment events in a plausible order, seconds to minutes apart.

    sessions: person, device, start_us, logged_in, basket_row (-1 none, else a row of
    ``baskets``), items (add the basket's lines), order (-1 none), extra_views, search,
    checkout, identify_start, identify_checkout, consent.
    """
    n = len(sessions["person"])
    rows: list[Table] = []

    def add(session_idx, slot, kind, within=None, product=None, quantity=None):
        k = len(session_idx)
        rows.append({
            "session": session_idx, "slot": np.full(k, slot, dtype=np.int8),
            "within": np.zeros(k, dtype=np.int64) if within is None else within,
            "kind": np.full(k, kind, dtype=np.int8),
            "product": np.full(k, -1, dtype=np.int32) if product is None else product.astype(np.int32),
            "quantity": np.zeros(k, dtype=np.int16) if quantity is None else quantity.astype(np.int16),
        })

    all_sessions = np.arange(n)
    add(all_sessions, 0, PAGE)
    add(np.flatnonzero(sessions["identify_start"]), 1, IDENTIFY)
    add(np.flatnonzero(sessions["search"]), 2, SEARCHED)
    owner, within = ragged(sessions["extra_views"])
    pref_cum = np.cumsum(pop.category_pref[sessions["person"][owner]], axis=1)
    category = (rng.random(len(owner))[:, None] > pref_cum).sum(axis=1).clip(0, pref_cum.shape[1] - 1)
    add(owner, 3, VIEWED, within, catalog.sample(rng, category))
    with_items = np.flatnonzero(sessions["items"])
    basket_row = sessions["basket_row"][with_items]
    owner, within = ragged(baskets["line_count"][basket_row])
    line = baskets["line_start"][basket_row][owner] + within
    add(with_items[owner], 4, VIEWED, within, basket_lines["product"][line])
    add(with_items[owner], 5, ADDED, within, basket_lines["product"][line], basket_lines["quantity"][line])
    add(np.flatnonzero(sessions["checkout"]), 6, CHECKOUT)
    add(np.flatnonzero(sessions["identify_checkout"]), 7, IDENTIFY)
    add(np.flatnonzero(sessions["order"] >= 0), 8, ORDERED)
    add(np.flatnonzero(sessions["consent"]), 9, CONSENT)

    ev = concat(rows)
    order = np.lexsort((ev["within"], ev["slot"], ev["session"]))
    ev = take(ev, order)
    session = ev["session"]
    first_row = np.searchsorted(session, np.arange(n))
    position = np.arange(len(session)) - first_row[session]
    gap_us = rng.integers(15, 120, n) * US_PER_SECOND
    ts = sessions["start_us"][session] + position * gap_us[session] + rng.integers(0, 10 * US_PER_SECOND, len(session))
    k = len(session)
    basket = np.where(sessions["basket_row"][session] >= 0, baskets["basket"][sessions["basket_row"][session]], -1)
    in_cart = (ev["kind"] == ADDED) | (ev["kind"] == CHECKOUT) | (ev["kind"] == ORDERED)
    return {
        "ts": ts,
        "kind": ev["kind"],
        "device": sessions["device"][session].astype(np.int32),
        "person": sessions["person"][session].astype(np.int32),
        "logged_in": sessions["logged_in"][session],
        "product": ev["product"],
        "quantity": ev["quantity"],
        "basket": np.where(in_cart, basket, -1),
        "order": np.where(ev["kind"] == ORDERED, sessions["order"][session], -1),
        "search": np.where(ev["kind"] == SEARCHED, rng.integers(0, 1 << 15, k), -1).astype(np.int32),
        "consent": np.where(ev["kind"] == CONSENT, rng.integers(0, 4, k), -1).astype(np.int8),  # channel*2 + granted
        "click": np.full(k, -1, dtype=np.int64),
        "page": rng.integers(0, 1 << 15, k).astype(np.int32),  # which page a page view shows
    }


def _sessions_table(rng, pop: Population, person, start_us, basket_row, items, order, checkout,
                    guest_identify: float) -> Table:
    n = len(person)
    logged_in = pop.has_account[person] & (rng.random(n) < 0.6)
    is_order = order >= 0
    return {
        "person": person, "device": pop.devices.pick(rng, person), "start_us": start_us,
        "logged_in": logged_in, "basket_row": basket_row, "items": items, "order": order,
        "extra_views": np.where(items, rng.poisson(0.2, n), 1 + rng.poisson(0.6, n)) * (~is_order | items),
        "search": rng.random(n) < 0.15,
        "checkout": checkout,
        "identify_start": logged_in & (rng.random(n) < 0.2) | (rng.random(n) < 0.02),
        "identify_checkout": is_order & ~logged_in & (rng.random(n) < guest_identify),
        "consent": rng.random(n) < 0.004,
    }


def _identify_at_first_login(sessions: Table, first_login_us: np.ndarray, login_identify: float) -> None:
    """Segment semantics: a userId on a device means the site called ``identify(userId, traits)``
    when the person logged in there. A logged-in session earlier than any seen so far on its
    device (``first_login_us``, over all months: a cart bought later can start a session in a
    later month, so a device may get a second one) starts with an identify call, for the share
    ``login_identify`` of devices (fixed per device by a hash: the random streams are unchanged)."""
    first = np.flatnonzero(sessions["logged_in"])
    if not len(first):
        return
    first = first[np.lexsort((sessions["start_us"][first], sessions["device"][first]))]
    device = sessions["device"][first]
    first = first[np.concatenate([[True], device[1:] != device[:-1]])]  # each device's earliest here
    device, start = sessions["device"][first], sessions["start_us"][first]
    earlier = start < first_login_us[device]
    first, device = first[earlier], device[earlier]
    first_login_us[device] = start[earlier]
    sends = hashed_share(device, 61, login_identify)
    sessions["identify_start"][first[sends]] = True


def _cart_returns(rng, pop: Population, person, added_us, value, order_count, last_visit_us, engagement,
                  churned_us) -> np.ndarray:
    """When each abandoned cart is bought after all (-1: never).

    The chance of coming back within 7 days depends on observable things: cart value,
    purchase history, discount habits and how recently they visited (plus engagement).
    A few carts are bought later, 8-40 days on.
    """
    k = len(person)
    days_since_visit = np.clip((added_us - last_visit_us[person]) / US_PER_DAY, 0, 90)
    p_return = sigmoid(0.1 - 0.6 * np.log(value / 4000 + 0.05) + 0.45 * np.log1p(order_count[person])
                       - 2.5 * (pop.discount_sensitivity[person] - 0.28) - 0.03 * days_since_visit
                       + 0.6 * np.log(engagement[person]) + rng.normal(0, 0.5, k))
    u = rng.random(k)
    within_window = rng.beta(1.0, 2.2, k) * (CART_COMPLETION_WINDOW_US - US_PER_HOUR) + US_PER_HOUR
    delay = np.where(u < p_return, within_window,
                     np.where(u < p_return + 0.08, rng.uniform(8, 40, k) * US_PER_DAY, -1)).astype(np.int64)
    completed = np.where(delay > 0, added_us + delay, -1)
    gone = (churned_us[person] >= 0) & (completed > churned_us[person])  # churned people do not come back
    return np.where(gone, -1, completed)


def _click_through_pages(rng, pop: Population, clicks: Table) -> Table:
    """The landing page view of each email click that reaches the site (same tracking id)."""
    k = len(clicks["person"])
    return {
        "ts": clicks["ts"] + rng.integers(2, 40, k) * US_PER_SECOND,
        "kind": np.full(k, PAGE, dtype=np.int8),
        "device": pop.devices.pick(rng, clicks["person"]).astype(np.int32),
        "person": clicks["person"].astype(np.int32),
        "logged_in": np.zeros(k, bool),
        "product": clicks["product"].astype(np.int32),
        "quantity": np.zeros(k, dtype=np.int16),
        "basket": np.full(k, -1, dtype=np.int64),
        "order": np.full(k, -1, dtype=np.int64),
        "search": np.full(k, -1, dtype=np.int32),
        "consent": np.full(k, -1, dtype=np.int8),
        "click": clicks["click"],
        "page": np.zeros(k, dtype=np.int32),
    }


def simulate_activity(rng: np.random.Generator, pop: Population, catalog: Catalog, timeline: Timeline,
                      latent: Latent, login_identify: float = 1.0) -> Activity:
    """``login_identify``: share of devices whose first logged-in session sends identify with traits."""
    n = pop.n
    first_login_us = np.full(len(pop.devices), np.iinfo(np.int64).max)  # each device's first login so far
    counters = _Counters()
    churned_us = latent.churned_us
    order_count = np.zeros(n, dtype=np.int32)  # orders so far (observable purchase history)
    last_visit_us = np.full(n, timeline.start_us - 60 * US_PER_DAY, dtype=np.int64)
    unsubscribed_us = np.full(n, -1, dtype=np.int64)
    cleaned_us = np.full(n, -1, dtype=np.int64)
    baskets_parts, lines_parts, orders_parts, carts_parts, web_parts, email_parts = [], [], [], [], [], []
    campaign_send, campaign_label = [], []

    for m, month in enumerate(timeline.months):
        s = latent.satisfaction[m]
        lo, hi, width, frac = _active_window(pop, month, churned_us)
        in_history = month.start_us < timeline.cutoff_us
        engagement = latent.engagement[m]
        activity = engagement * frac

        def when(person):
            return lo[person] + (rng.random(len(person)) * width[person]).astype(np.int64)  # noqa: B023 (called in this iteration only)

        # Purchases in store and online, and (in history) carts left behind.
        store_person, _ = ragged(rng.poisson(pop.purchase_rate * (1 - pop.web_share) * activity))
        web_person, _ = ragged(rng.poisson(pop.purchase_rate * pop.web_share * activity))
        cart_person, _ = ragged(rng.poisson(pop.cart_rate * activity) if in_history else np.zeros(n, dtype=np.int64))
        person = np.concatenate([store_person, web_person, cart_person])
        baskets, lines = _baskets(rng, pop, catalog, person, when(person), counters)
        n_store, n_web = len(store_person), len(web_person)
        store_rows = np.arange(n_store)
        web_rows = np.arange(n_store, n_store + n_web)
        cart_rows = np.arange(n_store + n_web, len(person))

        value = baskets["subtotal"][cart_rows] - baskets["discount"][cart_rows]
        cp = person[cart_rows]
        added = baskets["created_us"][cart_rows]
        completed = _cart_returns(rng, pop, cp, added, value, order_count, last_visit_us, engagement, churned_us)
        carts_parts.append({"basket": baskets["basket"][cart_rows], "person": cp.astype(np.int32),
                            "added_us": added, "value": value, "completed_us": completed})
        done = np.flatnonzero(completed >= 0)

        # Orders: store, direct web, and carts completed later (same basket, later session).
        order_rows = np.concatenate([store_rows, web_rows, cart_rows[done]])
        order_ids = counters.take("order", len(order_rows))
        occurred = np.concatenate([baskets["created_us"][store_rows], baskets["created_us"][web_rows], completed[done]])
        is_web = np.concatenate([np.zeros(n_store, bool), np.ones(n_web + len(done), bool)])
        completes_cart = np.concatenate([np.zeros(n_store + n_web, bool), np.ones(len(done), bool)])

        if in_history:
            # Sessions: browsing, buying, leaving a cart, coming back to a cart.
            browse_person, _ = ragged(rng.poisson(pop.browse_rate * (activity + 0.1 * frac * (churned_us >= 0))))
            web_order_ids = order_ids[n_store:n_store + n_web]
            done_order_ids = order_ids[n_store + n_web:]
            parts = [
                _sessions_table(rng, pop, browse_person, when(browse_person), np.full(len(browse_person), -1),
                                np.zeros(len(browse_person), bool), np.full(len(browse_person), -1),
                                np.zeros(len(browse_person), bool), 0.0),
                _sessions_table(rng, pop, web_person, baskets["created_us"][web_rows], web_rows,
                                np.ones(n_web, bool), web_order_ids, np.ones(n_web, bool), 0.8),
                _sessions_table(rng, pop, cp, added, cart_rows, np.ones(len(cp), bool), np.full(len(cp), -1),
                                rng.random(len(cp)) < 0.35, 0.0),
                _sessions_table(rng, pop, cp[done], completed[done], cart_rows[done], np.zeros(len(done), bool),
                                done_order_ids, np.ones(len(done), bool), 0.6),
            ]
            sessions = concat(parts)
            _identify_at_first_login(sessions, first_login_us, login_identify)
            events = _session_events(rng, pop, catalog, sessions, baskets, lines)
            # An order happens at its order_completed event.
            ordered = events["kind"] == ORDERED
            occurred_by_order = np.full(len(order_ids), -1, dtype=np.int64)
            occurred_by_order[events["order"][ordered] - order_ids[0]] = events["ts"][ordered]
            occurred = np.where(is_web & (occurred_by_order >= 0), occurred_by_order, occurred)
            web_parts.append(events)
            np.maximum.at(last_visit_us, sessions["person"], sessions["start_us"])

            # Email campaigns this month, and the click-throughs they bring to the site.
            email, clicks = _email_month(rng, pop, month, timeline, s, engagement, churned_us, unsubscribed_us, cleaned_us,
                                         counters, len(campaign_send), len(catalog))
            for day in CAMPAIGN_DAYS:
                send = month_campaign_time(month, day)
                if month.start_us <= send < min(month.end_us, timeline.cutoff_us):
                    campaign_send.append(send)
                    campaign_label.append(f"CMP-{month.label.replace('-', '')}-{day:02d}")
            email_parts.append(email)
            web_parts.append(_click_through_pages(rng, pop, clicks))

        orders_parts.append({
            "order": order_ids, "person": person[order_rows].astype(np.int32),
            "basket": baskets["basket"][order_rows], "occurred_us": occurred, "web": is_web,
            "completes_cart": completes_cart,
            "subtotal": baskets["subtotal"][order_rows], "discount": baskets["discount"][order_rows],
        })
        order_count += np.bincount(person[order_rows], minlength=n).astype(np.int32)
        baskets_parts.append(baskets)
        lines_parts.append(lines)

    orders = concat(orders_parts)
    orders["total"] = orders["subtotal"] - orders["discount"]
    return Activity(
        baskets={k: v for k, v in concat(baskets_parts).items() if k not in ("line_start", "line_count")},
        lines=concat(lines_parts), orders=orders, carts=concat(carts_parts), web=concat(web_parts),
        email=concat(email_parts), campaign_send_us=np.array(campaign_send, dtype=np.int64),
        campaign_label=campaign_label, unsubscribed_us=unsubscribed_us, cleaned_us=cleaned_us,
    )


def month_campaign_time(month, day: int) -> int:
    """09:00 UTC on the given day of the month."""
    return month.day_us(day) + 9 * US_PER_HOUR


def _email_month(rng, pop: Population, month, timeline: Timeline, s, engagement, churned_us, unsubscribed_us, cleaned_us,
                 counters: _Counters, campaign_offset: int, n_products: int) -> tuple[Table, Table]:
    """Campaign sends and what follows: delivery or bounce, opens, clicks, unsubscribes."""
    parts, click_parts = [], []
    campaign = campaign_offset
    for day in CAMPAIGN_DAYS:  # a loop over 3 campaigns, each over all subscribers
        send = month_campaign_time(month, day)
        if not (month.start_us <= send < min(month.end_us, timeline.cutoff_us)):
            continue
        eligible = (pop.subscriber & ~pop.subscription_pending & (pop.subscribed_us < send)
                    & (unsubscribed_us < 0) & (cleaned_us < 0))
        person = np.flatnonzero(eligible & (rng.random(pop.n) < CAMPAIGN_REACH))
        k = len(person)
        sent_at = send + rng.integers(0, 90 * 60, k) * US_PER_SECOND
        bounced = rng.random(k) < 0.015
        hard = bounced & (rng.random(k) < 0.4)
        delivered = ~bounced
        churned = (churned_us[person] >= 0) & (churned_us[person] < sent_at)
        # Opens follow satisfaction, so they fall before churn; churned people rarely open.
        p_open = np.clip(pop.email_affinity[person] * engagement[person], 0, 0.9) * np.where(churned, 0.12, 1.0)
        opened = delivered & (rng.random(k) < p_open)
        open_at = sent_at + (rng.exponential(8, k) * US_PER_HOUR).astype(np.int64) + US_PER_MINUTE
        clicked = opened & (rng.random(k) < 0.08 + 0.3 * pop.email_affinity[person])
        click_at = open_at + (rng.exponential(3, k) * US_PER_MINUTE).astype(np.int64) + 5 * US_PER_SECOND
        unsubscribed = opened & (rng.random(k) < 0.004 + 0.03 * (s[person] < -1.0))
        spam = delivered & ~unsubscribed & (rng.random(k) < 0.0004)
        unsub_at = open_at + rng.integers(1, 30, k) * US_PER_MINUTE
        spam_at = sent_at + rng.integers(1, 72, k) * US_PER_HOUR
        cleaned_us[person[hard]] = sent_at[hard] + US_PER_MINUTE
        unsubscribed_us[person[unsubscribed]] = unsub_at[unsubscribed]
        unsubscribed_us[person[spam]] = spam_at[spam]
        click_ids = np.full(k, -1, dtype=np.int64)
        click_ids[clicked] = counters.take("click", int(clicked.sum()))
        click_product = rng.integers(0, n_products, k)  # the product the email link points at
        pieces = [
            (np.ones(k, bool), SENT, sent_at),
            (delivered, DELIVERED, sent_at + rng.integers(1, 60, k) * US_PER_SECOND),
            (bounced, BOUNCE, sent_at + rng.integers(1, 300, k) * US_PER_SECOND),
            (opened, OPEN, open_at),
            (clicked, CLICK, click_at),
            (unsubscribed, UNSUBSCRIBE, unsub_at),
            (spam, SPAM, spam_at),
        ]
        for mask, kind, ts in pieces:
            parts.append({"ts": ts[mask], "person": person[mask].astype(np.int32),
                          "kind": np.full(int(mask.sum()), kind, dtype=np.int8),
                          "campaign": np.full(int(mask.sum()), campaign, dtype=np.int32),
                          "click": np.where(kind == CLICK, click_ids, -1)[mask],
                          "product": np.where(kind == CLICK, click_product, -1)[mask].astype(np.int32)})
        # Most clicks land on the site and the page view repeats the link's tracking id.
        lands = clicked & (rng.random(k) < 0.92)
        click_parts.append({"person": person[lands], "ts": click_at[lands], "click": click_ids[lands],
                            "campaign": np.full(int(lands.sum()), campaign, dtype=np.int32),
                            "product": click_product[lands]})
        campaign += 1
    empty_email = {"ts": np.zeros(0, np.int64), "person": np.zeros(0, np.int32), "kind": np.zeros(0, np.int8),
                   "campaign": np.zeros(0, np.int32), "click": np.zeros(0, np.int64), "product": np.zeros(0, np.int32)}
    empty_clicks = {"person": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64), "click": np.zeros(0, np.int64),
                    "campaign": np.zeros(0, np.int32), "product": np.zeros(0, np.int64)}
    return concat(parts + [empty_email]), concat(click_parts + [empty_clicks])
