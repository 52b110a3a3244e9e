"""What a declarative segment may refer to: the traits (columns) and the events (windows).

This is the whitelist the compiler draws identifiers from. Nothing a user writes ever becomes an
identifier in SQL: a trait or event name is looked up here, and the SQL uses this module's
spelling of the column and table.
"""

from __future__ import annotations

from dataclasses import dataclass

NUMBER, INTEGER, TEXT, TIMESTAMP = "number", "integer", "text", "timestamp"


@dataclass(frozen=True)
class Trait:
    name: str
    kind: str  # NUMBER, INTEGER, TEXT or TIMESTAMP
    table: str = "customer_traits"  # a key of TRAIT_TABLES
    values: tuple[str, ...] = ()  # the allowed values of a text trait, when they are a closed set


RFM_SEGMENTS = ("champions", "loyal", "potential_loyalist", "new_customer", "promising", "need_attention",
                "about_to_sleep", "at_risk", "cant_lose", "hibernating", "lost")
LIFECYCLE_STAGES = ("never_purchased", "new", "active", "lapsing", "lapsed")

# Columns of marts.customer_traits (tests check this list against the built table).
_CUSTOMER_TRAITS = [
    Trait("order_count", INTEGER), Trait("revenue", NUMBER), Trait("avg_order_value", NUMBER),
    Trait("first_order_at", TIMESTAMP), Trait("last_order_at", TIMESTAMP), Trait("recency_days", INTEGER),
    Trait("r_score", INTEGER), Trait("f_score", INTEGER), Trait("m_score", INTEGER), Trait("rfm_score", TEXT),
    Trait("rfm_segment", TEXT, values=RFM_SEGMENTS), Trait("lifecycle_stage", TEXT, values=LIFECYCLE_STAGES),
    Trait("customer_since", TIMESTAMP), Trait("tenure_days", INTEGER),
    Trait("web_sessions", INTEGER), Trait("web_sessions_30d", INTEGER), Trait("web_sessions_90d", INTEGER),
    Trait("last_web_session_at", TIMESTAMP),
    Trait("email_opens_30d", INTEGER), Trait("email_opens_90d", INTEGER),
    Trait("email_clicks_30d", INTEGER), Trait("email_clicks_90d", INTEGER),
    Trait("support_tickets", INTEGER), Trait("support_tickets_90d", INTEGER),
    Trait("support_tickets_bad_satisfaction", INTEGER), Trait("last_ticket_at", TIMESTAMP),
    Trait("preferred_category", TEXT),
]
# Model outputs, written by the scoring stage between the two dbt selections. A segment that
# uses one of these needs the scoring tables to exist when it is evaluated.
_SCORING_TRAITS = [
    Trait("churn_probability", NUMBER, table="churn"),
    Trait("risk_tier", TEXT, table="churn"),
    Trait("purchase_probability", NUMBER, table="cart"),
    Trait("intent_group", TEXT, table="cart", values=("likely", "on_the_fence", "unlikely")),
]
TRAITS: dict[str, Trait] = {t.name: t for t in _CUSTOMER_TRAITS + _SCORING_TRAITS}

# Where each trait table is read from: the first candidate that exists and has the columns a
# segment uses - the scoring stage's own tables (fresh in this run), else the marts.
TRAIT_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "customer_traits": (("marts", "customer_traits"),),
    "churn": (("scoring", "churn_predictions"), ("marts", "churn_scores")),
    "cart": (("scoring", "cart_predictions"), ("marts", "cart_intent")),
}


@dataclass(frozen=True)
class Event:
    """A kind of event a time-window condition counts, and where it lives in the warehouse."""

    name: str
    schema: str
    table: str
    time_column: str
    description: str
    where: str = ""  # fixed SQL filter, written here (never from user input)
    category_column: str | None = None  # set when `category:` may filter it
    amount_column: str | None = None  # set when `min_total:` may be used (money spent)
    count_expr: str = "count(*)"  # what `at_least:` counts


EVENTS: dict[str, Event] = {e.name: e for e in [
    Event("ordered", "intermediate", "int_orders", "ordered_at",
          "orders, web and store, each once (with `category:`, orders holding a product of that category)",
          amount_column="order_total", category_column="category"),  # category: see ORDERED_IN_CATEGORY
    Event("viewed_product", "intermediate", "int_web_product_events", "occurred_at",
          "product page views on the web", where="event_name = 'product_viewed'", category_column="category"),
    Event("added_to_cart", "intermediate", "int_web_product_events", "occurred_at",
          "products added to a cart on the web", where="event_name = 'product_added'", category_column="category"),
    Event("email_opened", "intermediate", "int_email_activity", "occurred_at",
          "marketing email opens", where="event_type = 'open'"),
    Event("email_clicked", "intermediate", "int_email_activity", "occurred_at",
          "marketing email clicks", where="event_type = 'click'"),
]}

# `ordered` with `category:` counts the orders that hold a product of the category, and
# `min_total:` then sums those lines.
ORDERED_IN_CATEGORY = Event(
    "ordered", "intermediate", "int_order_lines", "ordered_at", "order lines", category_column="category",
    amount_column="line_total", count_expr="count(distinct order_key)",
)

COMPARISON_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
LIST_OPERATORS = ("in", "not in")
OPERATORS = COMPARISON_OPERATORS + LIST_OPERATORS + ("between", "is null", "is not null")
# Spellings people type that mean one of OPERATORS.
OPERATOR_ALIASES = {"==": "=", "<>": "!=", "not_in": "not in", "is_null": "is null", "is_not_null": "is not null"}
MAX_WINDOW_DAYS = 3650
