"""Writing landing files: numpy columns -> Arrow -> DuckDB ``COPY (SELECT ...) TO``.

Tables arrive as dicts of numpy columns (numbers, and StringDType strings). Lookups of
dimension values (a device's anonymousId, a product's sku) are done with Arrow ``take``
before DuckDB sees the rows, so each COPY is a plain projection: DuckDB formats the text
multithreaded and, with insertion order preserved, writes rows in the order given — which
keeps files byte-identical for the same inputs without a costly ORDER BY.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .behaviour import IDENTIFY, ORDERED
from .timeline import Timeline

Table = dict[str, np.ndarray]
WRITER_THREADS = 2

# Formatting macros shared by all writers (times are int64 microseconds, money int64 pence).
MACROS = """
CREATE OR REPLACE MACRO iso_ms(us) AS strftime(make_timestamp(us), '%Y-%m-%dT%H:%M:%S.%gZ');
CREATE OR REPLACE MACRO iso_s(us) AS CASE WHEN us >= 0 THEN strftime(make_timestamp(us), '%Y-%m-%dT%H:%M:%SZ') END;
CREATE OR REPLACE MACRO pounds(p) AS (CAST(p AS DECIMAL(18, 2)) / 100)::DECIMAL(12, 2);
CREATE OR REPLACE MACRO txt(s) AS NULLIF(s, '');
CREATE OR REPLACE MACRO order_id(o) AS 'ORD-' || lpad(CAST(o AS VARCHAR), 9, '0');
CREATE OR REPLACE MACRO cart_id(b) AS 'cart_' || lpad(CAST(b AS VARCHAR), 10, '0');
CREATE OR REPLACE MACRO transaction_id(t) AS 'T' || lpad(CAST(t AS VARCHAR), 9, '0');
CREATE OR REPLACE MACRO ticket_id(t) AS 'TCK-' || lpad(CAST(t AS VARCHAR), 7, '0');
CREATE OR REPLACE MACRO tracking_id(c) AS 'lt_' || printf('%012x', (c * 2654435761 + 97531) % 281474976710655);
CREATE OR REPLACE MACRO shop_url(path) AS 'https://shop.example.co.uk' || path;
"""


def to_arrow(table: Table | pa.Table) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in table.items()})


def flat_array(values) -> pa.Array:
    """One contiguous Arrow array. ``pa.array`` of a large numpy string array can return a
    ChunkedArray, and ``take`` from one is ~20x slower than from a single chunk."""
    values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def lookup(values, index: np.ndarray, small: bool = False) -> pa.Array:
    """values[index] as an Arrow array, null where index < 0: a join without a join.

    ``small``: few distinct values (user agents, categories) -> a dictionary array, which
    avoids copying the same long strings millions of times. Pass large ``values`` through
    :func:`flat_array` once, not per call.
    """
    values = flat_array(values)
    index = np.asarray(index)
    missing = index < 0
    indices = pa.array(np.where(missing, 0, index).astype(np.int32 if small else np.int64), mask=missing)
    if small:
        return pa.DictionaryArray.from_arrays(indices, values)
    return pc.take(values, indices)


class Landing:
    """One DuckDB connection writing files under ``out``; counts rows per written file."""

    def __init__(self, out: Path, timeline: Timeline, progress: Callable[[str], None]):
        self.out = out
        self.timeline = timeline
        self.progress = progress
        self.con = duckdb.connect()
        self.con.execute("SET enable_progress_bar = false; SET preserve_insertion_order = true; SET threads = 2;")
        self.con.execute(MACROS)
        self.rows: dict[str, int] = {}  # relative path -> good rows written

    def register(self, name: str, table: Table | pa.Table) -> None:
        self.con.register(name, table if isinstance(table, pa.Table) else to_arrow(table))

    def copy(self, sql: str, relative: str, con: duckdb.DuckDBPyConnection | None = None) -> int:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "(FORMAT json)" if relative.endswith(".jsonl") else "(FORMAT csv, HEADER)"
        rows = (con or self.con).execute(f"COPY ({sql}) TO '{path.as_posix()}' {fmt}").fetchall()[0][0]
        self.rows[relative] = int(rows)
        return int(rows)

    def monthly(self, table: Table, ts_column: str, view: str, sql: str, relative_pattern: str,
                after_write: Callable[[str, str, int], None] | None = None,
                month_columns: Callable[[Table], dict] | None = None) -> int:
        """Write one file per history month from a table sorted by ``ts_column``.

        ``sql`` selects from ``view`` (the month's rows) without joins, so rows keep their
        order. ``month_columns`` turns a month's rows into the columns the SQL reads (lookups
        are done a month at a time to bound memory). Rows at or after the cutoff are never
        written. Two months are written at a time (one DuckDB cursor each): a single
        JSON/CSV COPY barely uses a second core.
        """
        ts = table[ts_column]
        assert np.all(ts[:-1] <= ts[1:]), f"{view} must be sorted by {ts_column}"

        def write_month(month) -> tuple[str, str, int]:
            lo = int(np.searchsorted(ts, month.start_us, side="left"))
            hi = int(np.searchsorted(ts, min(month.end_us, self.timeline.cutoff_us), side="left"))
            relative = relative_pattern.format(month=month.label)
            if hi == lo:  # no activity that month: no file (an empty export would be rejected)
                return relative, month.label, 0
            rows_of_month = {k: v[lo:hi] for k, v in table.items()}
            cursor = self.con.cursor()
            cursor.register(view, to_arrow(month_columns(rows_of_month) if month_columns else rows_of_month))
            rows = self.copy(sql, relative, cursor)
            cursor.close()
            return relative, month.label, rows

        with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
            written = list(pool.map(write_month, self.timeline.history_months))
        for relative, label, rows in written:  # in month order, so bad rows are deterministic
            if after_write and rows:
                after_write(relative, label, rows)
        return sum(rows for _, _, rows in written)


# ---------------------------------------------------------------------------------------
# One function per source: the SQL that renders the contract's columns.
# ---------------------------------------------------------------------------------------

# Context and traits have a fixed shape: DuckDB structs (much faster to write than json_object).
# Properties differ per event: json_object per kind.
WEB_SQL = """
WITH e AS (
    SELECT *,
        CASE
            WHEN click >= 0 THEN '/p/' || lower(sku) || '?utm_source=email&utm_campaign=' || campaign_label
                || '&tid=' || tracking_id(click)
            WHEN kind IN (2, 3) THEN '/p/' || lower(sku)
            WHEN kind IN (1, 4) THEN '/checkout'
            WHEN kind = 5 THEN '/checkout/complete'
            WHEN kind = 6 THEN '/search'
            WHEN kind = 7 THEN '/account/preferences'
            ELSE page_path
        END AS path
    FROM month_events
)
SELECT
    printf('%016x', message_key) AS messageId,
    CASE kind WHEN 0 THEN 'page' WHEN 1 THEN 'identify' ELSE 'track' END AS type,
    CASE kind WHEN 2 THEN 'product_viewed' WHEN 3 THEN 'product_added' WHEN 4 THEN 'checkout_started'
        WHEN 5 THEN 'order_completed' WHEN 6 THEN 'products_searched' WHEN 7 THEN 'consent_updated' END AS event,
    anonymous_id AS anonymousId,
    user_id AS userId,
    CASE WHEN kind = 1 THEN {'email': txt(email), 'first_name': txt(first_name), 'last_name': txt(last_name),
        'phone': txt(phone)} END AS traits,
    CASE kind
        WHEN 0 THEN json_object('url', shop_url(path), 'path', split_part(path, '?', 1))
        WHEN 2 THEN json_object('product_id', sku, 'name', product_name, 'category', category, 'price', pounds(price))
        WHEN 3 THEN json_object('cart_id', cart_id(basket), 'product_id', sku, 'price', pounds(price),
            'quantity', quantity)
        WHEN 4 THEN json_object('cart_id', cart_id(basket), 'value', pounds(basket_value))
        WHEN 5 THEN json_object('order_id', order_id("order"), 'cart_id', cart_id(basket),
            'revenue', pounds(basket_value), 'discount', pounds(basket_discount), 'currency', 'GBP',
            'products', json(products))
        WHEN 6 THEN json_object('query', search_query)
        WHEN 7 THEN json_object('channel', CASE WHEN consent // 2 = 0 THEN 'email_marketing' ELSE 'web_personalisation' END,
            'granted', consent % 2 = 1)
    END AS properties,
    {
        'page': {'url': shop_url(path), 'path': split_part(path, '?', 1),
                 'referrer': CASE WHEN click >= 0 THEN 'https://mail.google.com/' END},
        'campaign': CASE WHEN click >= 0 THEN {'source': 'email', 'medium': 'email', 'name': campaign_label} END,
        'userAgent': user_agent,
        'ip': ip
    } AS context,
    iso_ms(ts) AS timestamp
FROM e
"""


def write_catalog(landing: Landing, catalog, category_names) -> None:
    landing.register("products", {
        "product": np.arange(len(catalog)), "sku": catalog.sku, "name": catalog.name,
        "category": np.asarray(category_names, dtype=object)[catalog.category].astype(str),
        "price": catalog.price_pence, "margin": catalog.margin,
    })
    landing.copy("SELECT sku, name, category, pounds(price) AS price, margin FROM products ORDER BY product",
                 "catalog/products.csv")


def write_web(landing: Landing, web: Table, devices: Table, people_user_id: np.ndarray, catalog,
              category_names, web_baskets: Table, lines: Table, click_campaign_label: np.ndarray,
              search_terms, user_agents, after_write) -> int:
    """web: events sorted by time. web_baskets: basket ids (sorted) with value and discount."""

    # Each web order's products, as JSON text, built once.
    landing.register("web_basket_ids", {"basket": web_baskets["basket"]})
    landing.register("lines", lines)
    products_json = landing.con.sql("""
        SELECT to_json(list({'product_id': pr.sku, 'price': pounds(l.unit_price), 'quantity': l.quantity}
                            ORDER BY l.line_no))::VARCHAR AS products
        FROM web_basket_ids b LEFT JOIN lines l USING (basket) LEFT JOIN products pr ON pr.product = l.product
        GROUP BY b.basket ORDER BY b.basket""").to_arrow_table().column(0).combine_chunks()

    # Dimension values as Arrow arrays once; each month's rows look them up by index.
    dims = {k: flat_array(devices[k]) for k in ("anonymous_id", "ip", "email", "first_name", "last_name", "phone")}
    user_id, sku, product_name = flat_array(people_user_id), flat_array(catalog.sku), flat_array(catalog.name)
    page_paths = ["/", "/sale", "/new-in"] + [f"/c/{c}" for c in category_names]
    click_campaign_label = flat_array(click_campaign_label)

    def month_columns(web: Table) -> dict:
        basket_row = np.where(web["basket"] >= 0, np.searchsorted(web_baskets["basket"], web["basket"]), -1)
        product = web["product"].astype(np.int64)
        identify_device = np.where(web["kind"] == IDENTIFY, web["device"], -1)
        return {
            "ts": web["ts"], "kind": web["kind"], "message_key": web["message_key"], "page": web["page"],
            "click": web["click"], "basket": web["basket"], "order": web["order"], "quantity": web["quantity"],
            "search": web["search"], "consent": web["consent"],
            "anonymous_id": lookup(dims["anonymous_id"], web["device"]),
            "user_agent": lookup(user_agents, devices["user_agent_index"][web["device"]], small=True),
            "ip": lookup(dims["ip"], web["device"]),
            "email": lookup(dims["email"], identify_device),
            "first_name": lookup(dims["first_name"], identify_device),
            "last_name": lookup(dims["last_name"], identify_device),
            "phone": lookup(dims["phone"], identify_device),
            "user_id": lookup(user_id, np.where(web["logged_in"], web["person"], -1)),
            "sku": lookup(sku, product), "product_name": lookup(product_name, product),
            "category": lookup(list(category_names), np.where(product >= 0, catalog.category[product], -1), small=True),
            "price": lookup(catalog.price_pence, product),
            "basket_value": lookup(web_baskets["value"], basket_row),
            "basket_discount": lookup(web_baskets["discount"], basket_row),
            "products": lookup(products_json, np.where(web["kind"] == ORDERED, basket_row, -1)),
            "campaign_label": lookup(click_campaign_label, web["click"]),
            "page_path": lookup(page_paths, web["page"] % len(page_paths), small=True),
            "search_query": lookup(list(search_terms),
                                   np.where(web["search"] >= 0, web["search"] % len(search_terms), -1), small=True),
        }

    return landing.monthly(web, "ts", "month_events", WEB_SQL, "web/events_{month}.jsonl", after_write, month_columns)


def write_email(landing: Landing, subscribers: Table, events: Table, campaign_labels: list[str], catalog,
                n_people: int, after_write) -> int:
    landing.register("subscribers", subscribers)
    landing.copy("""
        SELECT subscriber_id, txt(email) AS email, txt(first_name) AS first_name, txt(last_name) AS last_name, status,
            iso_s(opted_in_us) AS opted_in_at, iso_s(opted_out_us) AS opted_out_at,
            iso_s(created_us) AS created_at, iso_s(updated_us) AS updated_at
        FROM subscribers ORDER BY created_us, subscriber_id""", "email/subscribers.csv")
    subscriber_row = np.full(n_people, -1, dtype=np.int64)
    subscriber_row[subscribers["person"]] = np.arange(len(subscribers["person"]))
    subscriber_id, email = flat_array(subscribers["subscriber_id"]), flat_array(subscribers["email"])
    labels, sku = flat_array(np.asarray(campaign_labels, dtype=object).astype(str)), flat_array(catalog.sku)

    def month_columns(events: Table) -> dict:
        row = subscriber_row[events["person"]]
        return {
            "ts": events["ts"], "kind": events["kind"], "message_key": events["message_key"], "click": events["click"],
            "subscriber_id": lookup(subscriber_id, row), "email": lookup(email, row),
            "campaign_id": lookup(labels, events["campaign"]),
            "sku": lookup(sku, events["product"].astype(np.int64)),
        }

    sql = """
        SELECT printf('ev_%016x', message_key) AS event_id, subscriber_id, txt(email) AS email, campaign_id,
            ['sent', 'delivered', 'open', 'click', 'bounce', 'unsubscribe', 'spam_complaint'][kind + 1] AS event_type,
            iso_s(ts) AS occurred_at,
            CASE WHEN click >= 0 THEN tracking_id(click) END AS link_tracking_id,
            CASE WHEN click >= 0 THEN shop_url('/p/' || lower(sku) || '?utm_source=email&utm_campaign='
                || campaign_id || '&tid=' || tracking_id(click)) END AS url
        FROM month_events"""
    return landing.monthly(events, "ts", "month_events", sql, "email/events_{month}.csv", after_write, month_columns)


def write_pos(landing: Landing, transactions: Table, line_items: Table, members: Table, catalog, loyalty_ids,
              payment_methods, after_write) -> None:
    """transactions: numbers per receipt plus the rendered emails/phones of the receipts that carry one."""
    landing.register("members", members)
    landing.copy(f"SELECT {_MEMBER_COLUMNS} FROM members ORDER BY enrolled_us, loyalty_id", "pos/loyalty_members.csv")
    emails, phones = flat_array(transactions["emails"]), flat_array(transactions["phones"])
    loyalty = flat_array(loyalty_ids)
    numbers = {k: v for k, v in transactions.items() if k not in ("emails", "phones")}  # one value per receipt

    def month_columns(rows: Table) -> dict:
        return {
            "transaction_number": rows["transaction_number"], "occurred_us": rows["occurred_us"],
            "store": rows["store"], "web": rows["web"], "order_ref_number": rows["order_ref_number"],
            "subtotal": rows["subtotal"], "discount": rows["discount"], "total": rows["total"],
            "loyalty_id": lookup(loyalty, rows["loyalty_person"]),
            "email": lookup(emails, rows["email_row"]), "phone": lookup(phones, rows["phone_row"]),
            "payment_method": lookup(list(payment_methods), rows["payment_method"], small=True),
            "card_token": rows["card_token"],
        }

    landing.monthly(numbers, "occurred_us", "month_transactions", """
        SELECT transaction_id(transaction_number) AS transaction_id,
            CASE WHEN web THEN 'WEB' ELSE 'ST' || lpad(CAST(store AS VARCHAR), 3, '0') END AS store_id,
            iso_s(occurred_us) AS occurred_at, txt(loyalty_id) AS loyalty_id, txt(email) AS email, txt(phone) AS phone,
            CASE WHEN web THEN 'web' ELSE 'store' END AS channel,
            CASE WHEN order_ref_number >= 0 THEN order_id(order_ref_number) END AS order_ref,
            pounds(subtotal) AS subtotal, pounds(discount) AS discount, pounds(total) AS total, payment_method,
            CASE WHEN card_token >= 0 THEN printf('ct_%016x', card_token) END AS card_token
        FROM month_transactions""", "pos/transactions_{month}.csv", after_write, month_columns)
    sku = flat_array(catalog.sku)
    landing.monthly(line_items, "occurred_us", "month_lines", """
        SELECT transaction_id(transaction_number) AS transaction_id, line_no, sku, quantity,
            pounds(unit_price) AS unit_price, pounds(discount) AS discount
        FROM month_lines""", "pos/line_items_{month}.csv", after_write,
                    lambda lines: dict(lines, sku=lookup(sku, lines["product"].astype(np.int64))))


_MEMBER_COLUMNS = """loyalty_id, txt(first_name) AS first_name, txt(last_name) AS last_name, txt(email) AS email,
    txt(phone) AS phone, txt(address_line1) AS address_line1, txt(city) AS city, txt(postcode) AS postcode,
    CASE WHEN dob_days <> -999999 THEN strftime(DATE '1970-01-01' + CAST(dob_days AS INTEGER), '%Y-%m-%d') END AS date_of_birth,
    iso_s(enrolled_us) AS enrolled_at"""

# The outlet store system's export has its own headers and date formats; cdp.yaml maps them.
OUTLET_COLUMN_MAP = {
    "MemberNo": "loyalty_id", "FirstName": "first_name", "Surname": "last_name", "EmailAddress": "email",
    "Mobile": "phone", "Street": "address_line1", "Town": "city", "PostCode": "postcode",
    "DOB": "date_of_birth", "JoinedOn": "enrolled_at",
}
OUTLET_FORMATS = {"date_of_birth": "%d/%m/%Y", "enrolled_at": "%d/%m/%Y %H:%M"}


def write_outlet(landing: Landing, members: Table) -> None:
    landing.register("outlet_members", members)
    landing.copy("""
        SELECT loyalty_id AS MemberNo, txt(first_name) AS FirstName, txt(last_name) AS Surname,
            txt(email) AS EmailAddress, txt(phone) AS Mobile, txt(address_line1) AS Street, txt(city) AS Town,
            txt(postcode) AS PostCode,
            CASE WHEN dob_days <> -999999 THEN strftime(DATE '1970-01-01' + CAST(dob_days AS INTEGER), '%d/%m/%Y') END AS DOB,
            strftime(make_timestamp(enrolled_us), '%d/%m/%Y %H:%M') AS JoinedOn
        FROM outlet_members ORDER BY loyalty_id""", "pos_outlet/members.csv")


def write_support(landing: Landing, tickets: Table, after_write) -> int:
    return landing.monthly({k: v for k, v in tickets.items() if k not in ("person",)},
                           "created_us", "month_tickets", """
        SELECT ticket_id(ticket_number) AS ticket_id, txt(requester_name) AS requester_name,
            txt(requester_email) AS requester_email, txt(requester_phone) AS requester_phone,
            channel, category, status, CASE satisfaction WHEN 1 THEN 'good' WHEN 2 THEN 'bad' END AS satisfaction,
            CASE WHEN do_not_contact THEN [category, 'do_not_contact'] ELSE [category] END AS tags,
            iso_s(created_us) AS created_at, iso_s(resolved_us) AS resolved_at
        FROM month_tickets""", "support/tickets_{month}.jsonl", after_write)

