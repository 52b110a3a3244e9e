"""Source records: what each system holds about people, identifiers rendered with the mess.

Each function returns a table (dict of numpy columns) ready for writers.py, including a
``person`` column (never written to landing files, used for ground truth) and, where the
record takes part in identity resolution, an ``identifiable`` column.
"""

from __future__ import annotations

import numpy as np

from . import names
from .behaviour import IDENTIFY, SATISFACTION_BAD, Activity, Latent, Table
from .identity_mess import MISSING_DAYS, MessRates, MessRenderer, usable
from .population import Population
from .textops import hashed_share, pick, scramble
from .timeline import US_PER_DAY, US_PER_HOUR, US_PER_MINUTE, Timeline

RECEIPT_LOYALTY, RECEIPT_EMAIL, RECEIPT_PHONE, RECEIPT_NOTHING = range(4)
STORES_PER_CITY = 2
PAYMENT_METHODS = ("card", "contactless", "cash", "apple_pay", "gift_card")
CARD_PAYMENTS = (0, 1, 3)  # the methods a payment card (so a card token) stands behind


def _name_plus_something(first, last, *others) -> np.ndarray:
    has_name = usable(first) & usable(last)
    return has_name & np.logical_or.reduce([usable(o) if o.dtype.kind == "T" else (o != MISSING_DAYS) for o in others])


def loyalty_members(pop: Population, mess: MessRenderer, timeline: Timeline, outlet: bool) -> Table:
    """Main store loyalty export (old address for movers) or the outlet system's (current address)."""
    source = "pos_outlet" if outlet else "pos"
    member = pop.outlet_member if outlet else pop.loyalty_member
    joined = pop.outlet_joined_us if outlet else pop.loyalty_enrolled_us
    person = np.flatnonzero(member & (joined < timeline.cutoff_us))
    first, last = mess.names(source, person)
    email = mess.email(source, person, gmail_variants=False)
    phone = mess.phone(source, person)
    street, city, postcode = mess.address(source, person, old=not outlet)
    dob = mess.date_of_birth(source, person)
    return {
        "person": person,
        "loyalty_id": (pop.outlet_id if outlet else pop.loyalty_id)[person],
        "first_name": first, "last_name": last, "email": email, "phone": phone,
        "address_line1": street, "city": city, "postcode": postcode, "dob_days": dob,
        "enrolled_us": joined[person],
        "identifiable": usable(email) | usable(phone) | _name_plus_something(first, last, street, postcode, dob),
    }


def subscribers(pop: Population, mess: MessRenderer, activity: Activity, timeline: Timeline, rng) -> Table:
    person = np.flatnonzero(pop.subscriber & (pop.subscribed_us < timeline.cutoff_us))
    first, last = mess.names("email", person)
    email = mess.email("email", person, gmail_variants=False)
    subscribed = pop.subscribed_us[person]
    unsub = activity.unsubscribed_us[person]
    cleaned = activity.cleaned_us[person]
    pending = pop.subscription_pending[person]
    status = np.where(pending, "pending", np.where(unsub >= 0, "unsubscribed", np.where(cleaned >= 0, "cleaned", "subscribed")))
    opted_out = np.where(unsub >= 0, unsub, -1)
    created = subscribed - rng.integers(0, 600, len(person)) * 1_000_000
    updated = np.maximum.reduce([subscribed, unsub, cleaned])
    return {
        "person": person, "subscriber_id": pop.subscriber_id[person], "email": email,
        "first_name": first, "last_name": last, "status": status,
        "opted_in_us": np.where(pending, -1, subscribed), "opted_out_us": opted_out,
        "created_us": created, "updated_us": updated, "identifiable": usable(email),
    }


def device_traits(pop: Population, mess: MessRenderer) -> Table:
    """What each browser's identify calls carry (a device is one web record)."""
    person = pop.devices.person.astype(np.int64)
    first, last = mess.names("web", person)
    return {
        "device": np.arange(len(person)), "person": person,
        "anonymous_id": pop.devices.anonymous_id,
        "email": mess.email("web", person, gmail_variants=True),
        "first_name": first, "last_name": last, "phone": mess.phone("web", person),
        "user_agent_index": pop.devices.user_agent, "ip": pop.devices.ip,
    }


def tickets(pop: Population, latent: Latent, mess: MessRenderer, timeline: Timeline, rng) -> Table:
    t = latent.tickets
    keep = t["created_us"] < timeline.cutoff_us
    person = t["person"][keep].astype(np.int64)
    created = t["created_us"][keep]
    order = np.argsort(created, kind="stable")
    person, created, satisfaction = person[order], created[order], t["satisfaction"][keep][order]
    k = len(person)
    channel = rng.choice(len(("email", "phone", "chat", "web_form")), k, p=[0.4, 0.2, 0.25, 0.15])
    name = mess.full_name("support", person)
    email = mess.email("support", person, gmail_variants=True)
    phone = mess.phone("support", person)
    # Phone tickets always know the number; other channels sometimes; emails are rare by phone.
    phone = np.where((channel == 1) | (rng.random(k) < 0.2), phone, "")
    email = np.where((channel != 1) | (rng.random(k) < 0.3), email, "")
    resolved = created + (rng.lognormal(3.0, 1.0, k) * US_PER_HOUR).astype(np.int64)
    done = resolved < timeline.cutoff_us
    status = np.where(done, np.where(resolved + 4 * US_PER_DAY < timeline.cutoff_us, "closed", "solved"),
                      np.where(rng.random(k) < 0.5, "open", "pending"))
    dnc = rng.random(k) < 0.02
    category = pick(names.TICKET_CATEGORIES, rng.integers(0, len(names.TICKET_CATEGORIES), k))
    return {
        "person": person, "ticket_number": np.arange(1, k + 1), "requester_name": name,
        "requester_email": email, "requester_phone": phone,
        "channel": pick(("email", "phone", "chat", "web_form"), channel), "category": category,
        "status": status, "satisfaction": np.where(done, satisfaction, 0).astype(np.int8),
        "do_not_contact": dnc, "created_us": created, "resolved_us": np.where(done, resolved, -1),
        "bad": satisfaction == SATISFACTION_BAD,
        "identifiable": usable(email) | usable(phone),
    }


def contacts_in_use(pop: Population, mess: MessRenderer, records: dict[str, Table], activity: Activity,
                    timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Which of each person's emails (n, MAX_EMAILS) and whether their mobile (n,) some landed
    record holds, usable: loyalty and outlet members, subscribers, support tickets, and the
    traits of web devices that sent an identify call before as_of."""
    email_used = np.zeros(pop.emails.shape, bool)
    mobile_used = np.zeros(pop.n, bool)
    sent = (activity.web["kind"] == IDENTIFY) & (activity.web["ts"] < timeline.cutoff_us)
    identified_devices = np.zeros(len(pop.devices), bool)
    identified_devices[activity.web["device"][sent]] = True
    held = [  # (source, table, row mask, email column, phone column)
        ("pos", records["loyalty"], None, "email", "phone"),
        ("pos_outlet", records["outlet"], None, "email", "phone"),
        ("email", records["subscribers"], None, "email", None),
        ("support", records["tickets"], None, "requester_email", "requester_phone"),
        ("web", records["devices"], identified_devices, "email", "phone"),
    ]
    for source, table, rows, email, phone in held:  # a loop over 5 sources, each over all its records
        person = table["person"].astype(np.int64)
        keep = np.ones(len(person), bool) if rows is None else rows
        has = keep & usable(table[email])
        email_used[person[has], mess.email_column(source, person[has])] = True
        if phone is not None:
            has = keep & usable(table[phone])
            mobile_used[person[has & ~mess.uses_landline(source, person)]] = True
    return email_used, mobile_used


def pos_transactions(pop: Population, activity: Activity, mess: MessRenderer, rates: MessRates,
                     timeline: Timeline, rng, email_used: np.ndarray, mobile_used: np.ndarray) -> Table:
    """Receipts: every store order, plus ~30% of web orders (channel=web, order_ref set).

    ``email_used``/``mobile_used`` (from ``contacts_in_use``): the values each person's other
    records hold; an email or phone typed at the till is one of these (``receipt_contact_known``)."""
    o = activity.orders
    in_pos = ~o["web"] | (rng.random(len(o["order"])) < rates.web_order_in_pos)
    keep = np.flatnonzero(in_pos & (o["occurred_us"] < timeline.cutoff_us))
    # Web orders reach the store system a few minutes after the web order.
    occurred = o["occurred_us"][keep] + np.where(o["web"][keep], rng.integers(1, 30, len(keep)) * US_PER_MINUTE, 0)
    keep = keep[np.argsort(occurred, kind="stable")]
    occurred = np.sort(occurred)
    person = o["person"][keep].astype(np.int64)
    k = len(keep)
    # What identity the receipt carries: loyalty id (members, once enrolled), email, phone, or nothing.
    member = pop.loyalty_member[person] & (pop.loyalty_enrolled_us[person] <= occurred)
    member_share = max(member.mean(), 1e-9) if k else 1.0
    p_loyalty = min(rates.receipt_loyalty / member_share, 0.97)
    u = rng.random(k)
    v = rng.random(k)
    w = rng.random(k)
    loyalty = member & (u < p_loyalty)
    # People the shop knows an email (a mobile) of can give it at the till; the rest of the
    # people (1 - receipt_contact_known of them) may give any, as the main store system holds it.
    anything = ~hashed_share(person, 67, rates.receipt_contact_known)
    can_email = ~loyalty & (email_used[person].any(axis=1) | anything)
    p_email = min(rates.receipt_email_only * k / max(np.count_nonzero(can_email), 1), 1.0)
    by_email_mask = can_email & (v < p_email)
    can_phone = ~loyalty & ~by_email_mask & (mobile_used[person] | anything)
    p_phone = min(rates.receipt_phone_only * k / max(np.count_nonzero(can_phone), 1), 1.0)
    mode = np.where(loyalty, RECEIPT_LOYALTY, np.where(by_email_mask, RECEIPT_EMAIL,
                    np.where(can_phone & (w < p_phone), RECEIPT_PHONE, RECEIPT_NOTHING)))
    # A receipt that carries only an email or a phone always has it (that is its identity).
    # Strings are rendered only for those receipts; the writer looks them up by row.
    by_email = np.flatnonzero(mode == RECEIPT_EMAIL)
    by_phone = np.flatnonzero(mode == RECEIPT_PHONE)
    # The email: one of those the person's other records hold, the same at every visit.
    payer = person[by_email]
    used = email_used[payer]
    pick_nth = (scramble(payer, 71) % np.maximum(used.sum(axis=1), 1).astype(np.uint64)).astype(np.int64)
    column = np.where(used.any(axis=1) & ~anything[by_email],
                      np.argmax(np.cumsum(used, axis=1) > pick_nth[:, None], axis=1), mess.email_column("pos", payer))
    emails = mess.email("pos", payer, gmail_variants=False, may_be_missing=False, column=column)
    phones = mess.phone("pos", person[by_phone], mobile_only=True, may_be_missing=False)
    email_row = np.full(k, -1, dtype=np.int64)
    email_row[by_email] = np.arange(len(by_email))
    phone_row = np.full(k, -1, dtype=np.int64)
    phone_row[by_phone] = np.arange(len(by_phone))
    identifiable = mode == RECEIPT_LOYALTY
    identifiable[by_email] = usable(emails)
    identifiable[by_phone] = usable(phones)
    city = pop.city[person]
    store = np.where(rng.random(k) < 0.85, city * STORES_PER_CITY + rng.integers(0, STORES_PER_CITY, k),
                     rng.integers(0, len(names.CITIES) * STORES_PER_CITY, k))
    web = o["web"][keep]
    payment = rng.choice(len(PAYMENT_METHODS), k, p=[0.45, 0.3, 0.1, 0.1, 0.05])
    second = hashed_share(person, 89, rates.second_card) & hashed_share(np.arange(k), 83, rates.second_card_use)
    card_token = np.where(np.isin(payment, CARD_PAYMENTS),
                          (scramble(person * 2 + second, 97) >> np.uint64(1)).astype(np.int64), -1)
    return {
        "person": person, "transaction_number": np.arange(1, k + 1), "order": o["order"][keep],
        "basket": o["basket"][keep], "occurred_us": occurred,
        "store": np.where(web, -1, store + 1),  # -1: the web shop
        "loyalty_person": np.where(mode == RECEIPT_LOYALTY, person, -1),  # whose loyalty id it carries
        "email_row": email_row, "emails": emails, "phone_row": phone_row, "phones": phones,
        "web": web, "order_ref_number": np.where(web, o["order"][keep], -1),
        "subtotal": o["subtotal"][keep], "discount": o["discount"][keep], "total": o["total"][keep],
        "payment_method": payment, "card_token": card_token,  # -1: no card (cash, gift card)
        "identity_mode": mode.astype(np.int8),
        "identifiable": identifiable,
    }
