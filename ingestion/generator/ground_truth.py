"""Ground truth in ``out/ground_truth/``: who is who, what happens next, what mess was applied.

The pipeline never reads this folder; tests and model evaluation do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import names
from .behaviour import IDENTIFY, PAGE, Activity, Latent, Table  # event kinds
from .catalog import CATEGORY_NAMES
from .population import Population
from .textops import S, strings
from .timeline import US_PER_DAY, Timeline
from .writers import Landing

OPEN_CART_LOOKBACK_DAYS = 30  # carts added in the last 30 days and not bought by as_of count as open
CART_INTENT_DAYS = 7


def write_people(landing: Landing, pop: Population, latent: Latent) -> None:
    emails = pop.emails
    all_emails = S.add(S.add(S.add(S.add(emails[:, 0], ";"), emails[:, 1]), ";"), emails[:, 2])
    all_emails = S.rstrip(all_emails, ";")
    city_names = strings([c[0] for c in names.CITIES])
    landing.register("gt_people", {
        "person": np.arange(pop.n), "person_id": pop.person_id, "first_name": pop.first_name, "last_name": pop.last_name,
        "primary_email": emails[:, 0], "emails": all_emails, "mobile": pop.mobile, "landline": pop.landline,
        "dob_days": pop.dob_days, "street": pop.street, "city": city_names[pop.city], "postcode": pop.postcode,
        "moved": pop.moved, "old_street": pop.old_street, "old_city": city_names[pop.old_city],
        "old_postcode": pop.old_postcode, "moved_us": pop.moved_us, "household_id": pop.household_id,
        "signup_us": pop.signup_us, "user_id": pop.user_id, "loyalty_id": pop.loyalty_id,
        "outlet_id": pop.outlet_id, "subscriber_id": pop.subscriber_id, "web_user": pop.web_user,
        "purchase_rate": pop.purchase_rate, "web_share": pop.web_share, "browse_rate": pop.browse_rate,
        "cart_rate": pop.cart_rate, "discount_sensitivity": pop.discount_sensitivity,
        "email_affinity": pop.email_affinity, "ticket_rate": pop.ticket_rate,
        "satisfaction_mean": pop.satisfaction_mean, "hazard_base": pop.hazard_base,
        "preferred_category": np.asarray(CATEGORY_NAMES, dtype=object)[pop.category_pref.argmax(axis=1)].astype(str),
        "churned_us": latent.churned_us,
    })
    landing.copy("""
        SELECT person_id, first_name, last_name, primary_email, emails, mobile, txt(landline) AS landline,
            DATE '1970-01-01' + CAST(dob_days AS INTEGER) AS date_of_birth, street, city, postcode,
            moved, CASE WHEN moved THEN old_street END AS old_street, CASE WHEN moved THEN old_city END AS old_city,
            CASE WHEN moved THEN old_postcode END AS old_postcode, iso_s(moved_us) AS moved_at,
            CASE WHEN household_id >= 0 THEN 'H' || lpad(CAST(household_id + 1 AS VARCHAR), 6, '0') END AS household_id,
            iso_s(signup_us) AS signup_at, txt(user_id) AS user_id, txt(loyalty_id) AS loyalty_id,
            txt(outlet_id) AS outlet_id, txt(subscriber_id) AS subscriber_id, web_user,
            round(purchase_rate, 4) AS purchase_rate, round(web_share, 4) AS web_share,
            round(browse_rate, 4) AS browse_rate, round(cart_rate, 4) AS cart_rate,
            round(discount_sensitivity, 4) AS discount_sensitivity, round(email_affinity, 4) AS email_affinity,
            round(ticket_rate, 5) AS ticket_rate, round(satisfaction_mean, 4) AS satisfaction_mean,
            round(hazard_base, 4) AS hazard_base, preferred_category, iso_s(churned_us) AS churned_at
        FROM gt_people ORDER BY person_id""", "ground_truth/people.csv")


def write_record_person(landing: Landing, pop: Population, records: dict[str, Table], web: Table,
                        timeline: Timeline) -> None:
    """Every landed record that belongs to a person, and whether it carries an identifier."""

    written = web["ts"] < timeline.cutoff_us
    device = web["device"][written]
    n_devices = len(pop.devices)
    seen = np.zeros(n_devices, bool)
    seen[device] = True
    linked = np.zeros(n_devices, bool)
    traits = records["devices"]
    traits_usable = records["devices_identifiable"]
    identify = written & (web["kind"] == IDENTIFY)
    linked[web["device"][identify][traits_usable[web["device"][identify]]]] = True
    linked[web["device"][written & web["logged_in"]]] = True
    linked[web["device"][written & (web["kind"] == PAGE) & (web["click"] >= 0)]] = True
    logged_in_people = np.unique(web["person"][written & web["logged_in"]])

    parts = [
        ("web", "anonymous_id", traits["anonymous_id"][seen], pop.devices.person[seen], linked[seen]),
        ("web", "user_id", pop.user_id[logged_in_people], logged_in_people, np.ones(len(logged_in_people), bool)),
    ]
    sub = records["subscribers"]
    parts.append(("email", "subscribers", sub["subscriber_id"], sub["person"], sub["identifiable"]))
    for source, key in (("pos", "loyalty"), ("pos_outlet", "outlet")):
        m = records[key]
        parts.append((source, "loyalty_members", m["loyalty_id"], m["person"], m["identifiable"]))
    landing.register("gt_records", {
        "source": np.concatenate([np.full(len(p[2]), p[0], dtype=object) for p in parts]).astype(str),
        "entity": np.concatenate([np.full(len(p[2]), p[1], dtype=object) for p in parts]).astype(str),
        "record_id": np.concatenate([p[2] for p in parts]),
        "person": np.concatenate([p[3] for p in parts]).astype(np.int64),
        "identifiable": np.concatenate([p[4] for p in parts]),
    })
    t = records["transactions"]
    tk = records["tickets"]
    landing.register("gt_transactions", {"number": t["transaction_number"], "person": t["person"],
                                         "identifiable": t["identifiable"]})
    landing.register("gt_tickets", {"number": tk["ticket_number"], "person": tk["person"],
                                    "identifiable": tk["identifiable"]})
    landing.copy("""
        SELECT r.source, r.entity, r.record_id, p.person_id, r.identifiable FROM (
            SELECT *, 0 AS part, 0 AS number FROM gt_records
            UNION ALL SELECT 'pos', 'transactions', transaction_id(number), person, identifiable, 1, number FROM gt_transactions
            UNION ALL SELECT 'support', 'tickets', ticket_id(number), person, identifiable, 2, number FROM gt_tickets
        ) r JOIN gt_people p ON p.person = r.person
        ORDER BY r.part, r.source, r.entity, r.number, r.record_id""", "ground_truth/record_person.csv")


def write_future(landing: Landing, activity: Activity, timeline: Timeline) -> None:
    cutoff = timeline.cutoff_us
    carts = activity.carts
    open_cart = ((carts["added_us"] < cutoff) & (carts["added_us"] >= cutoff - OPEN_CART_LOOKBACK_DAYS * US_PER_DAY)
                 & ((carts["completed_us"] < 0) | (carts["completed_us"] >= cutoff)))
    landing.register("gt_open_carts", {
        "basket": carts["basket"][open_cart], "person": carts["person"][open_cart].astype(np.int64),
        "added_us": carts["added_us"][open_cart], "value": carts["value"][open_cart],
        "bought_7d": (carts["completed_us"][open_cart] >= cutoff)
        & (carts["completed_us"][open_cart] < cutoff + CART_INTENT_DAYS * US_PER_DAY),
    })
    landing.copy("""
        SELECT p.person_id, cart_id(c.basket) AS cart_id, iso_s(c.added_us) AS added_at, pounds(c.value) AS value,
            c.bought_7d AS purchased_within_7d
        FROM gt_open_carts c JOIN gt_people p ON p.person = c.person ORDER BY c.added_us, c.basket""",
                 "ground_truth/open_carts.csv")
    o = activity.orders
    future = (o["occurred_us"] >= cutoff) & (o["occurred_us"] < timeline.future_end_us)
    landing.register("gt_future", {
        "person": o["person"][future].astype(np.int64), "occurred_us": o["occurred_us"][future],
        "total": o["total"][future], "web": o["web"][future], "basket": o["basket"][future],
        "order": o["order"][future],
        "completes_open_cart": o["completes_cart"][future] & np.isin(o["basket"][future], carts["basket"][open_cart]),
    })
    landing.copy("""
        SELECT p.person_id, iso_s(f.occurred_us) AS occurred_at, pounds(f.total) AS total,
            CASE WHEN f.web THEN 'web' ELSE 'store' END AS channel,
            CASE WHEN f.completes_open_cart THEN cart_id(f.basket) END AS cart_id
        FROM gt_future f JOIN gt_people p ON p.person = f.person ORDER BY f.occurred_us, f."order" """,
                 "ground_truth/future_purchases.csv")


def write_mess(out: Path, mess_rates, bad_row_rates, mess_counts, bad_row_counts, clean: bool, summary: dict) -> None:
    path = out / "ground_truth" / "mess.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "mess_rates": mess_rates.as_dict(),
        "bad_row_rates": bad_row_rates.as_dict(),
        "clean": clean,
        "mess_applied": dict(sorted(mess_counts.items())),
        "bad_rows": {k: bad_row_counts[k] for k in sorted(bad_row_counts)},
        "bad_rows_total": sum(sum(v.values()) for v in bad_row_counts.values()),
        **summary,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
