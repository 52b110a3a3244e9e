"""The segments file: marketers' rule-based segments, parsed and validated.

A file holds a list of segments; each has a ``name``, a ``description`` and a ``where`` tree::

    segments:
      - name: vip_recent
        description: Spent 500 or more and ordered in the last 30 days
        where:
          all:
            - {trait: revenue, op: ">=", value: 500}
            - {event: ordered, within_days: 30}

A node of the tree is one of ``all: [...]``, ``any: [...]``, ``not: {...}``, a trait condition
``{trait, op, value}`` or an event condition ``{event, within_days, at_least, min_total,
category}``. Each leaf is a pydantic model; every problem is reported with the segment's name,
the path of the condition (``where.all[1].value``) and what to write instead.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.yamlfile import YamlFileError, load_yaml
from segments.vocabulary import (
    EVENTS,
    INTEGER,
    LIST_OPERATORS,
    MAX_WINDOW_DAYS,
    NUMBER,
    OPERATOR_ALIASES,
    OPERATORS,
    TEXT,
    TRAITS,
    Trait,
)

NAME_PATTERN = r"[a-z][a-z0-9_]{0,62}"
# Built-in segment families own these prefixes in segment_membership.
RESERVED_PREFIXES = ("rfm_", "lifecycle_", "churn_", "intent_", "cart_intent_", "high_churn_risk")
MAX_DEPTH = 12
MAX_LIST_VALUES = 1000


class SegmentFileError(ValueError):
    """The segments file is missing or invalid; the message lists every problem."""


_MISSING = object()


def _closest(word: str, choices) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"did you mean {match[0]!r}? " if match else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Bounds of the warehouse types the traits are compared in (BIGINT; DOUBLE kept to values a
# shop's money or counts can reach): a value outside them passes YAML but fails in SQL.
MAX_INTEGER = 2**63 - 1
MAX_NUMBER = 1e15


def _coerce_scalar(trait: Trait, v: Any) -> Any:
    """A value of the trait's type, or ValueError saying what is expected."""
    if trait.kind in (NUMBER, INTEGER):
        if not _is_number(v):
            raise ValueError(f"{trait.name} is a number; got {_show(v)} - write a number without quotes")
        if trait.kind == INTEGER:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{trait.name} is a whole number; got {_show(v)}")
            if not -MAX_INTEGER <= v <= MAX_INTEGER:
                raise ValueError(f"{trait.name} is a whole number between {-MAX_INTEGER} and {MAX_INTEGER}; "
                                 f"got {_show(v)}")
            return int(v)
        if not -MAX_NUMBER <= v <= MAX_NUMBER:  # also refuses nan and inf
            raise ValueError(f"{trait.name} must be between {-MAX_NUMBER:g} and {MAX_NUMBER:g}; got {_show(v)}")
        return v
    if trait.kind == TEXT:
        if not isinstance(v, str):
            raise ValueError(f"{trait.name} is text; got {_show(v)} - write it in quotes")
        if trait.values and v not in trait.values:
            raise ValueError(f"{_show(v)} is not a value of {trait.name}; {_closest(v, trait.values)}"
                             f"use one of: {', '.join(trait.values)}")
        return v
    # TIMESTAMP: a date (end of that day is not implied: a date means its midnight) or an ISO time.
    if isinstance(v, datetime):
        return v.replace(tzinfo=None)
    if isinstance(v, date):
        return datetime.combine(v, time())
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).replace(tzinfo=None)
        except ValueError:
            pass
    raise ValueError(f"{trait.name} is a time; got {_show(v)} - write a date like 2026-01-31 "
                     f"or a time like '2026-01-31 12:00:00'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class TraitCondition(_Strict):
    """``{trait: revenue, op: ">=", value: 500}``: a comparison on one column of the traits."""

    trait: str = Field(description="A column of marts.customer_traits, or a score (churn_probability, ...).")
    op: str = Field(description=f"One of: {', '.join(OPERATORS)}.")
    has_value: bool = Field(default=False, exclude=True)  # set by the parser: was `value` written?
    value: Any = Field(default=None, validate_default=True)

    @field_validator("trait")
    @classmethod
    def _known_trait(cls, v: str) -> str:
        if v not in TRAITS:
            raise ValueError(f"unknown trait {_show(v)}; {_closest(v, TRAITS)}known traits: {', '.join(TRAITS)}")
        return v

    @field_validator("op", mode="before")
    @classmethod
    def _known_operator(cls, v: Any) -> str:
        op = " ".join(str(v).lower().split()) if isinstance(v, str) else v
        op = OPERATOR_ALIASES.get(op, op)
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {_show(v)}; use one of: {', '.join(OPERATORS)}")
        return op

    @field_validator("value")
    @classmethod
    def _value_fits(cls, v: Any, info) -> Any:
        if "trait" not in info.data or "op" not in info.data:
            return v  # the trait or operator is already reported
        trait, op, written = TRAITS[info.data["trait"]], info.data["op"], info.data.get("has_value", False)
        if op in ("is null", "is not null"):
            if written:
                raise ValueError(f"'{op}' takes no value; remove `value`")
            return None
        if not written or v is None:
            raise ValueError(f"'{op}' needs a `value` (to test for a missing value use op 'is null')")
        if trait.kind == TEXT and trait.values and op not in ("=", "!=", "in", "not in"):
            raise ValueError(f"{trait.name} is a category; compare it with =, !=, in or not in")
        if op in LIST_OPERATORS:
            if not isinstance(v, list) or not v:
                raise ValueError(f"'{op}' needs a non-empty list, e.g. value: [a, b]")
            if len(v) > MAX_LIST_VALUES:
                raise ValueError(f"'{op}' takes at most {MAX_LIST_VALUES} values")
            return [_coerce_scalar(trait, x) for x in v]
        if op == "between":
            if not isinstance(v, list) or len(v) != 2:
                raise ValueError("'between' needs a list of two values, low and high, e.g. value: [10, 20]")
            values = [_coerce_scalar(trait, x) for x in v]
            if values[0] > values[1]:
                raise ValueError(f"'between' needs low <= high; got {_show(v)} - swap them")
            return values
        if isinstance(v, (list, dict)):
            raise ValueError(f"'{op}' compares with one value; for a list use 'in'")
        return _coerce_scalar(trait, v)


class EventCondition(_Strict):
    """``{event: ordered, within_days: 30, at_least: 2, min_total: 100, category: shoes}``."""

    event: str = Field(description=f"One of: {', '.join(EVENTS)}.")
    within_days: int = Field(description=f"Window: the N days ending at the run's as_of, 1-{MAX_WINDOW_DAYS}.")
    at_least: int = Field(default=1, description="At least this many events in the window (default 1).")
    min_total: float | None = Field(default=None, description="Orders only: spent at least this in the window.")
    category: str | None = Field(default=None, description="Only events about products of this catalog category.")

    @field_validator("event")
    @classmethod
    def _known_event(cls, v: str) -> str:
        if v not in EVENTS:
            raise ValueError(f"unknown event {_show(v)}; {_closest(v, EVENTS)}use one of: {', '.join(EVENTS)}")
        return v

    @field_validator("within_days", "at_least", mode="before")
    @classmethod
    def _whole_number(cls, v: Any, info) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"must be a whole number of {'days' if info.field_name == 'within_days' else 'events'}; "
                             f"got {_show(v)}")
        return v

    @field_validator("within_days")
    @classmethod
    def _window_in_range(cls, v: int) -> int:
        if not 1 <= v <= MAX_WINDOW_DAYS:
            raise ValueError(f"must be between 1 and {MAX_WINDOW_DAYS} days; got {v}")
        return v

    @field_validator("at_least")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be 1 or more; got {v} (for 'never', wrap the condition in `not:`)")
        if v > MAX_INTEGER:
            raise ValueError(f"must be at most {MAX_INTEGER}; got {_show(v)}")
        return v

    @field_validator("min_total", mode="before")
    @classmethod
    def _money(cls, v: Any) -> Any:
        if v is not None and (not _is_number(v) or not 0 <= v <= MAX_NUMBER):
            raise ValueError(f"must be an amount of money between 0 and {MAX_NUMBER:g}; got {_show(v)}")
        return v

    @field_validator("category")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a category name; remove it to count every category")
        return v

    @model_validator(mode="after")
    def _options_fit_event(self) -> "EventCondition":
        event = EVENTS[self.event]
        if self.min_total is not None and event.amount_column is None:
            raise ValueError(f"min_total applies to orders only; remove it from event {self.event!r}")
        if self.category is not None and event.category_column is None:
            raise ValueError(f"event {self.event!r} has no product category; remove `category`")
        return self


@dataclass(frozen=True)
class AllOf:
    conditions: tuple["Condition", ...]


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple["Condition", ...]


@dataclass(frozen=True)
class NotOf:
    condition: "Condition"


Condition = Union[TraitCondition, EventCondition, AllOf, AnyOf, NotOf]


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    where: Condition
    definition: dict = field(compare=False)  # the `where` as written, for the catalog


@dataclass(frozen=True)
class SegmentFile:
    path: Path
    segments: tuple[Segment, ...]


class _SegmentHeader(_Strict):
    name: str
    description: str | None = ""
    where: Any

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not re.fullmatch(NAME_PATTERN, v):
            raise ValueError(f"{_show(v)} is not a segment name; use lower-case letters, digits and '_', "
                             f"starting with a letter (e.g. 'vip_recent'), at most 63 characters")
        if v.startswith(RESERVED_PREFIXES):
            raise ValueError(f"names starting with {', '.join(RESERVED_PREFIXES)} belong to built-in segments; "
                             f"choose another name")
        return v


class _FileModel(_Strict):
    version: Literal[1] = 1
    segments: list[Any] = Field(default_factory=list)


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def add_validation(self, where: str, err: ValidationError) -> None:
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling"
            elif e["type"] == "missing":
                msg = "required key is missing; add it"
            self.add(f"{where}.{loc}" if loc else where, msg)


LEAF_KEYS = {"trait", "event"}
LOGIC_KEYS = {"all", "any", "not"}


def _parse_node(node: Any, path: str, problems: _Problems, depth: int = 0) -> Condition | None:
    if depth > MAX_DEPTH:
        problems.add(path, f"conditions nest deeper than {MAX_DEPTH} levels; flatten them")
        return None
    if not isinstance(node, dict):
        problems.add(path, f"expected a condition (a mapping with one of: all, any, not, trait, event); got {_show(node)}")
        return None
    logic = LOGIC_KEYS & set(node)
    if logic:
        if len(node) != 1:
            problems.add(path, f"`{sorted(logic)[0]}` must stand alone in its mapping; move the other keys "
                               f"({', '.join(sorted(map(str, set(node) - logic)) or sorted(logic)[1:])}) into a condition of its own")
            return None
        ((key, value),) = node.items()
        if key == "not":
            inner = _parse_node(value, f"{path}.not", problems, depth + 1)
            return NotOf(inner) if inner is not None else None
        if not isinstance(value, list) or not value:
            problems.add(f"{path}.{key}", "expected a non-empty list of conditions")
            return None
        parsed = [_parse_node(v, f"{path}.{key}[{i}]", problems, depth + 1) for i, v in enumerate(value)]
        if any(p is None for p in parsed):
            return None
        return (AllOf if key == "all" else AnyOf)(tuple(parsed))
    if "trait" in node and "event" in node:
        problems.add(path, "a condition is on a trait or on an event, not both; split it into two conditions under `all:`")
        return None
    if "trait" in node:
        data = {**node, "has_value": "value" in node}
        if "has_value" in node:
            problems.add(f"{path}.has_value", "unknown key; remove it")
            return None
        try:
            return TraitCondition.model_validate(data)
        except ValidationError as e:
            problems.add_validation(path, e)
            return None
    if "event" in node:
        try:
            return EventCondition.model_validate(node)
        except ValidationError as e:
            problems.add_validation(path, e)
            return None
    problems.add(path, f"expected one of the keys all, any, not, trait, event; got {', '.join(map(str, node)) or 'nothing'}")
    return None


def parse_segments(data: Any, path: Path | str = "segments.yaml") -> SegmentFile:
    """Validate a loaded segments file (a mapping with `segments:`). Raises SegmentFileError
    listing every problem, each with the segment's name and the condition's path."""
    path = Path(path)
    problems = _Problems()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SegmentFileError(f"{path}: the top level must be a mapping with a `segments:` list")
    try:
        file_model = _FileModel.model_validate(data)
    except ValidationError as e:
        problems.add_validation(str(path), e)
        raise SegmentFileError(_report(path, problems)) from None
    segments: list[Segment] = []
    seen: set[str] = set()
    for i, raw in enumerate(file_model.segments):
        label = f"segments[{i}]"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label = f"segment {raw['name']!r} (segments[{i}])"
        if not isinstance(raw, dict):
            problems.add(label, "expected a mapping with name, description and where")
            continue
        try:
            header = _SegmentHeader.model_validate(raw)
        except ValidationError as e:
            problems.add_validation(label, e)
            continue
        if header.name in seen:
            problems.add(label, f"the name {header.name!r} is used twice; segment names must be unique")
            continue
        seen.add(header.name)
        where = _parse_node(header.where, f"{label} where", problems)
        if where is not None:
            segments.append(Segment(header.name, (header.description or "").strip(), where, raw["where"]))
    if problems.items:
        raise SegmentFileError(_report(path, problems))
    return SegmentFile(path, tuple(segments))


def _report(path: Path, problems: _Problems) -> str:
    lines = [f"{path}: invalid segments ({len(problems.items)} problem(s)):"]
    lines += [f"  - {p}" for p in problems.items]
    return "\n".join(lines)


def load_segments(path: Path | str) -> SegmentFile:
    path = Path(path)
    if not path.is_file():
        raise SegmentFileError(f"{path}: segments file not found; create it (`cdp init` writes an example) "
                               f"or point cdp.yaml's `segments.file` at it")
    try:
        data = load_yaml(path)
    except YamlFileError as e:
        raise SegmentFileError(str(e)) from None
    return parse_segments(data, path)
