"""Segment definitions -> one SQL query each, with every value a bound parameter.

Safety by construction:
- identifiers (tables, columns) come only from ``segments.vocabulary``, are checked against a
  plain-identifier pattern and quoted;
- operators come only from the fixed set in the vocabulary (validated before we get here, and
  mapped through a dict here, never formatted from input);
- every value the user wrote - numbers, text, dates, categories, window bounds - becomes a
  numbered parameter (``$1``, ``$2``, ...) that DuckDB binds in a prepared statement.

The query returns the person_id of every member. Windows are the N days ending at the run's
as_of: ``(as_of - N days, as_of]``, like the dbt models' ``within_days_of_as_of``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from segments.model import AllOf, AnyOf, Condition, EventCondition, NotOf, Segment, TraitCondition
from segments.vocabulary import EVENTS, ORDERED_IN_CATEGORY, TRAIT_TABLES, TRAITS, Event

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# The SQL of each operator: a lookup, so no operator text from input reaches the query.
_COMPARISONS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

TRAITS_ALIAS = '"traits"'  # the traits table's alias, quoted like every identifier


def quote(identifier: str) -> str:
    """A whitelisted identifier, double-quoted. Anything but a plain lower-case name is refused
    (the vocabulary never holds one; this guards against a future edit that would)."""
    if not _IDENTIFIER.fullmatch(identifier):
        raise ValueError(f"refusing identifier {identifier!r}: not a plain name")
    return '"' + identifier + '"'


@dataclass
class CompiledSegment:
    name: str
    sql: str
    params: list = field(default_factory=list)
    tables: dict[str, tuple[str, str]] = field(default_factory=dict)  # trait table key -> (schema, table) used


class _Builder:
    def __init__(self, as_of: datetime, trait_tables: dict[str, tuple[str, str]]):
        self.as_of = as_of
        self.trait_tables = trait_tables
        self.params: list = []
        self.joined: dict[str, tuple[str, str]] = {}

    def param(self, value) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def column(self, trait_name: str) -> str:
        trait = TRAITS[trait_name]  # KeyError = not whitelisted; validation rejects it earlier
        if trait.table == "customer_traits":
            alias = TRAITS_ALIAS
        else:
            alias = quote(trait.table)
            self.joined[trait.table] = self.trait_tables[trait.table]
        return f"{alias}.{quote(trait.name)}"

    def condition(self, node: Condition) -> str:
        if isinstance(node, AllOf):
            return "(" + " AND ".join(self.condition(c) for c in node.conditions) + ")"
        if isinstance(node, AnyOf):
            return "(" + " OR ".join(self.condition(c) for c in node.conditions) + ")"
        if isinstance(node, NotOf):
            return f"(NOT {self.condition(node.condition)})"
        if isinstance(node, TraitCondition):
            return self.trait(node)
        if isinstance(node, EventCondition):
            return self.event(node)
        raise TypeError(f"not a condition: {type(node).__name__}")

    def trait(self, c: TraitCondition) -> str:
        col = self.column(c.trait)
        if c.op == "is null":
            return f"({col} IS NULL)"
        if c.op == "is not null":
            return f"({col} IS NOT NULL)"
        if c.op in ("in", "not in"):
            placeholders = ", ".join(self.param(v) for v in c.value)
            keyword = "IN" if c.op == "in" else "NOT IN"
            expr = f"{col} {keyword} ({placeholders})"
        elif c.op == "between":
            low, high = c.value
            expr = f"{col} BETWEEN {self.param(low)} AND {self.param(high)}"
        else:
            expr = f"{col} {_COMPARISONS[c.op]} {self.param(c.value)}"
        # A missing value never matches a comparison (two-valued logic, so `not:` is the complement).
        return f"COALESCE({expr}, FALSE)"

    def event(self, c: EventCondition) -> str:
        event: Event = ORDERED_IN_CATEGORY if (c.event == "ordered" and c.category is not None) else EVENTS[c.event]
        time_col = quote(event.time_column)
        filters = [
            f"{quote('person_id')} IS NOT NULL",
            f"{time_col} > {self.param(self.as_of - timedelta(days=c.within_days))}",
            f"{time_col} <= {self.param(self.as_of)}",
        ]
        if event.where:
            filters.append(f"({event.where})")  # fixed text from the vocabulary
        if c.category is not None:
            filters.append(f"{quote(event.category_column)} = {self.param(c.category)}")
        having = [f"{event.count_expr} >= {self.param(c.at_least)}"]
        if c.min_total is not None:
            having.append(f"COALESCE(SUM({quote(event.amount_column)}), 0) >= {self.param(c.min_total)}")
        return (
            f"({TRAITS_ALIAS}.{quote('person_id')} IN (\n"
            f"        SELECT {quote('person_id')} FROM {quote(event.schema)}.{quote(event.table)}\n"
            f"        WHERE {' AND '.join(filters)}\n"
            f"        GROUP BY {quote('person_id')}\n"
            f"        HAVING {' AND '.join(having)}))"
        )


def default_trait_tables() -> dict[str, tuple[str, str]]:
    """The first candidate of each trait table (what the SQL reads when the warehouse is not
    at hand, e.g. `cdp segments validate`)."""
    return {key: candidates[0] for key, candidates in TRAIT_TABLES.items()}


def compile_segment(segment: Segment, as_of: datetime,
                    trait_tables: dict[str, tuple[str, str]] | None = None) -> CompiledSegment:
    """The query that lists the segment's members at as_of (a naive UTC datetime)."""
    builder = _Builder(as_of, trait_tables or default_trait_tables())
    where = builder.condition(segment.where)
    schema, table = builder.trait_tables["customer_traits"]
    joins = "".join(
        f"\nLEFT JOIN {quote(s)}.{quote(t)} AS {quote(key)} ON {quote(key)}.{quote('person_id')} = "
        f"{TRAITS_ALIAS}.{quote('person_id')}"
        for key, (s, t) in sorted(builder.joined.items())
    )
    sql = (
        f"SELECT DISTINCT {TRAITS_ALIAS}.{quote('person_id')}\n"
        f"FROM {quote(schema)}.{quote(table)} AS {TRAITS_ALIAS}{joins}\n"
        f"WHERE {where}"
    )
    return CompiledSegment(segment.name, sql, builder.params, {"customer_traits": (schema, table), **builder.joined})
