"""Canonical landing contracts: what each source kind delivers, field by field.

One ``Entity`` per landed table (a source kind can land several, e.g. POS lands
transactions, line items and loyalty members). Each becomes one ``raw.<kind>_<entity>``
table; several instances of a kind (two store systems) share the table and are told
apart by the ``_source`` lineage column.

A user whose files have other column names or date formats maps them in ``cdp.yaml``
(``columns`` / ``formats`` of a source entity); the contract itself never changes per
deployment. Bump ``CONTRACT_VERSION`` when a contract changes incompatibly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONTRACT_VERSION = 1

# Field types the loader knows how to check and cast.
STRING, TIMESTAMP, DATE, INTEGER, DECIMAL, JSON, BOOLEAN = (
    "string", "timestamp", "date", "integer", "decimal", "json", "boolean",
)
DUCKDB_TYPES = {
    STRING: "VARCHAR",
    TIMESTAMP: "TIMESTAMPTZ",
    DATE: "DATE",
    INTEGER: "BIGINT",
    DECIMAL: "DOUBLE",
    JSON: "JSON",
    BOOLEAN: "BOOLEAN",
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str = STRING
    required: bool = False
    values: tuple[str, ...] = ()  # allowed values (an enum), empty = any
    pii: bool = False  # personal data: masked in logs, check samples and reports (core/pii.py)
    # an unparseable value of an optional field is nulled (and recorded in raw.quarantine as a
    # field-level issue) instead of quarantining the row: a bad birthday must not lose the person
    null_if_invalid: bool = False
    description: str = ""


@dataclass(frozen=True)
class Entity:
    kind: str  # source kind: web, email, pos, support, catalog
    name: str  # entity within the kind: events, subscribers, ...
    format: str  # default landing format: jsonl or csv
    key: tuple[str, ...]  # natural key within one source instance
    fields: tuple[Field, ...]
    description: str = ""
    # Row-level rules beyond single fields: (SQL condition that must hold, with {field}
    # placeholders for the landed values; "reason: field").
    row_rules: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def table(self) -> str:
        return f"{self.kind}_{self.name}"

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def get(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


# Segment's six call types (RudderStack's are the same).
WEB_EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# Canonical track event names: snake_case after Segment's e-commerce spec v2. The loader maps
# the spec's Title Case names and a shop's own names onto them (core.segment_spec).
WEB_TRACK_EVENTS = (
    "product_viewed",
    "product_added",
    "checkout_started",
    "order_completed",
    "products_searched",
    "consent_updated",
)
EMAIL_EVENT_TYPES = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "spam_complaint")
SUBSCRIBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")
TICKET_CHANNELS = ("email", "phone", "chat", "web_form")
TICKET_STATUSES = ("open", "pending", "solved", "closed")
SATISFACTION = ("good", "bad")
POS_CHANNELS = ("store", "web")

ENTITIES: tuple[Entity, ...] = (
    Entity(
        kind="web",
        name="events",
        format="jsonl",
        key=("messageId",),
        description=(
            "Segment-spec events (as Segment's and RudderStack's SDKs send them), one JSON object "
            "per line, all six call types. `properties` carries product_id/sku, price, quantity, "
            "cart_id, order_id, revenue (else total), discount, products[], query, and for "
            "consent_updated: channel + granted. `context` carries page {url, path, referrer}, "
            "campaign {source, medium, name}, traits, userAgent, ip. An email click-through lands "
            "on a page whose url holds `tid=<link_tracking_id>`. Stored as core.segment_spec "
            "reads them: event time corrected, event names canonical, person traits merged; a "
            "messageId already loaded from the same source is a re-delivery and is skipped."
        ),
        fields=(
            Field("messageId", STRING, required=True, description="Unique event id."),
            Field("type", STRING, required=True, values=WEB_EVENT_TYPES),
            Field("event", STRING, description="Track event name, canonical (snake_case spec names, a shop's "
                  "own names mapped by event_names); as sent for other names and call types."),
            Field("anonymousId", STRING, pii=True, description="Device/browser id."),
            Field("userId", STRING, pii=True, description="Site account id, set once logged in."),
            Field("traits", JSON, pii=True, description="The person's traits: context.traits overlaid by the call's "
                  "traits (not a group's), plus email, first_name, last_name, phone, address_line1, city, "
                  "postcode read in camelCase or snake_case."),
            Field("properties", JSON, pii=True, description="Event properties (may carry an email)."),
            Field("context", JSON, pii=True, description="page, campaign, traits, userAgent, ip."),
            Field("previousId", STRING, pii=True, description="alias: the id the person had before userId."),
            Field("groupId", STRING, description="group: the account the person belongs to (kept, links nobody)."),
            Field("originalTimestamp", TIMESTAMP, description="The device's clock when the event happened."),
            Field("sentAt", TIMESTAMP, description="The device's clock when the event was sent."),
            Field("receivedAt", TIMESTAMP, description="The collector's clock when it arrived."),
            Field("timestamp", TIMESTAMP, required=True, description="Event time: timestamp as sent, else "
                  "originalTimestamp + (receivedAt - sentAt), else receivedAt."),
        ),
        row_rules=(
            ("coalesce({anonymousId}, {userId}) IS NOT NULL", "missing_required: anonymousId|userId"),
        ),
    ),
    Entity(
        kind="email",
        name="subscribers",
        format="csv",
        key=("subscriber_id",),
        description="The email tool's audience export: one row per subscriber.",
        fields=(
            Field("subscriber_id", STRING, required=True, pii=True),
            Field("email", STRING, required=True, pii=True),
            Field("first_name", STRING, pii=True),
            Field("last_name", STRING, pii=True),
            Field("status", STRING, required=True, values=SUBSCRIBER_STATUSES),
            Field("opted_in_at", TIMESTAMP),
            Field("opted_out_at", TIMESTAMP),
            Field("created_at", TIMESTAMP, required=True),
            Field("updated_at", TIMESTAMP),
        ),
    ),
    Entity(
        kind="email",
        name="events",
        format="csv",
        key=("event_id",),
        description="Email activity. A click carries the link's tracking id, which the landing page view repeats.",
        fields=(
            Field("event_id", STRING, required=True),
            Field("subscriber_id", STRING, required=True, pii=True),
            Field("email", STRING, pii=True),
            Field("campaign_id", STRING),
            Field("event_type", STRING, required=True, values=EMAIL_EVENT_TYPES),
            Field("occurred_at", TIMESTAMP, required=True),
            Field("link_tracking_id", STRING),
            Field("url", STRING),
        ),
    ),
    Entity(
        kind="pos",
        name="transactions",
        format="csv",
        key=("transaction_id",),
        description=(
            "Receipts. Identity is optional: a receipt may carry a loyalty id, only an email or "
            "a phone, or nothing. Web orders fulfilled through the store system appear here too "
            "with channel=web and order_ref = the web order_id (count them once). card_token: "
            "the payment processor's token for the card that paid (a fingerprint, the same for "
            "every payment with that card; never the card number), empty for cash."
        ),
        fields=(
            Field("transaction_id", STRING, required=True),
            Field("store_id", STRING, description="Store that issued the receipt; empty for an online-only shop."),
            Field("occurred_at", TIMESTAMP, required=True),
            Field("loyalty_id", STRING, pii=True),
            Field("email", STRING, pii=True),
            Field("phone", STRING, pii=True),
            Field("channel", STRING, values=POS_CHANNELS),
            Field("order_ref", STRING),
            Field("subtotal", DECIMAL),
            Field("discount", DECIMAL),
            Field("total", DECIMAL, description=(
                "Amount paid; empty = the sum of the receipt's line items (an order export whose amounts are "
                "only on its lines).")),
            Field("payment_method", STRING),
            Field("card_token", STRING, pii=True),
            Field("is_return", BOOLEAN, description=(
                "A return or cancellation (refund) rather than a sale; empty = a return when the total is "
                "negative. Its lines carry negative quantities.")),
        ),
    ),
    Entity(
        kind="pos",
        name="line_items",
        format="csv",
        key=("transaction_id", "line_no"),
        fields=(
            Field("transaction_id", STRING, required=True),
            Field("line_no", INTEGER, required=True),
            Field("sku", STRING, required=True),
            Field("quantity", INTEGER, required=True, description="Negative on a return or cancellation line."),
            Field("unit_price", DECIMAL, required=True),
            Field("discount", DECIMAL),
        ),
    ),
    Entity(
        kind="pos",
        name="loyalty_members",
        format="csv",
        key=("loyalty_id",),
        description="Loyalty programme members as exported by a store system.",
        fields=(
            Field("loyalty_id", STRING, required=True, pii=True),
            Field("first_name", STRING, pii=True),
            Field("last_name", STRING, pii=True),
            Field("email", STRING, pii=True),
            Field("phone", STRING, pii=True),
            Field("address_line1", STRING, pii=True),
            Field("city", STRING, pii=True),
            Field("postcode", STRING, pii=True),
            Field("date_of_birth", DATE, pii=True, null_if_invalid=True),
            Field("enrolled_at", TIMESTAMP, description="When the member joined; empty = unknown (the first receipt "
                  "with their loyalty id stands in for it)."),
        ),
    ),
    Entity(
        kind="support",
        name="tickets",
        format="jsonl",
        key=("ticket_id",),
        description="Help-desk tickets, one JSON object per line. tags may hold 'do_not_contact'.",
        fields=(
            Field("ticket_id", STRING, required=True),
            Field("requester_name", STRING, pii=True),
            Field("requester_email", STRING, pii=True),
            Field("requester_phone", STRING, pii=True),
            Field("channel", STRING, values=TICKET_CHANNELS),
            Field("category", STRING),
            Field("status", STRING, values=TICKET_STATUSES),
            Field("satisfaction", STRING, values=SATISFACTION),
            Field("tags", JSON),
            Field("created_at", TIMESTAMP, required=True),
            Field("resolved_at", TIMESTAMP),
        ),
    ),
    Entity(
        kind="catalog",
        name="products",
        format="csv",
        key=("sku",),
        description="Product catalog.",
        fields=(
            Field("sku", STRING, required=True),
            Field("name", STRING, required=True),
            Field("category", STRING, required=True),
            Field("price", DECIMAL, required=True),
            Field("margin", DECIMAL, description="Gross margin as a fraction of price, 0..1."),
            Field("non_product", BOOLEAN, description=(
                "True for a code that is no goods (postage, fees, adjustments): never a category of a "
                "person's interest, never recommended. Empty = false.")),
        ),
    ),
)

SOURCE_KINDS = tuple(dict.fromkeys(e.kind for e in ENTITIES))
_BY_KEY = {(e.kind, e.name): e for e in ENTITIES}


def entity(kind: str, name: str) -> Entity:
    return _BY_KEY[(kind, name)]


def entities_of(kind: str) -> list[Entity]:
    return [e for e in ENTITIES if e.kind == kind]
