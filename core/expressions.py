"""The small expression language of ``cdp.yaml``'s ``expressions:`` (a source entity's
computed fields), parsed here and compiled to DuckDB SQL.

An export rarely has the contract's fields as columns: an id written as a float (``12345.0``),
a line total that is quantity times price. ``expressions`` maps a contract field to a formula
over the landed columns:

    expressions:
      loyalty_id: "cast_integer(CustomerID)"
      total: "Quantity * UnitPrice"
      occurred_at: "parse_date(InvoiceDate, '%m/%d/%Y %H:%M')"

Grammar (nothing else parses, so no SQL reaches DuckDB that this module did not write)::

    cond   := conj ('or' conj)*
    conj   := neg ('and' neg)*
    neg    := 'not' neg | cmp
    cmp    := expr (('=' | '!=' | '<' | '<=' | '>' | '>=') expr)?
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := '-' factor | number | 'string' | column | "quoted column" | name '(' args ')' | '(' expr ')'

A column is a landed column's name (letters, digits, ``_``), or any name in double quotes
(``"Unit Price"``). String literals are single-quoted (``''`` for a quote) and are written back
escaped; numbers must look like numbers. Functions: cast_integer, cast_decimal, trim, lower,
upper, coalesce, concat, parse_date(text, 'format'). Comparisons (``order_status = 'canceled'``,
``Quantity < 0``) and ``and``/``or``/``not`` make a condition: true or false as a field's value
(an ``is_return``), or a source entity's ``skip_when`` (rows left out of the load, counted). A
comparison of text with text compares the text; with a number on either side both are numbers.
``and``, ``or`` and ``not`` are words of the language: a column so named is written in double
quotes. A value that cannot be computed (text in
arithmetic, ``12.5`` to cast_integer, a date not in its format) is NULL, which the loader
reports as ``invalid_expression`` when the inputs were there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

MAX_LENGTH = 500  # a formula, not a program


class ExpressionError(ValueError):
    """The text is not an expression of the language; the message says where."""


# Functions: name -> (min args, max args or None for any). parse_date's 2nd argument must be a
# string literal (a strptime format), checked below.
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "cast_integer": (1, 1),
    "cast_decimal": (1, 1),
    "trim": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "coalesce": (1, None),
    "concat": (1, None),
    "parse_date": (2, 2),
}

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<string>'(?:[^']|'')*')"
    r"|(?P<quoted>\"(?:[^\"]|\"\")+\")"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|!=|<>|[-+*/(),=<>]))"
)

TEXT, NUMBER, TIMESTAMP, BOOLEAN = "text", "number", "timestamp", "boolean"
COMPARISONS = ("=", "!=", "<>", "<", "<=", ">", ">=")
_WORDS = ("and", "or", "not")  # reserved: a column so named is written in double quotes


@dataclass(frozen=True)
class Node:
    kind: str  # number | string | column | neg | binop | call | compare | and | or | not
    value: str = ""
    args: tuple["Node", ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot read the expression at character {pos + 1}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse(text: str) -> Node:
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    toks = _tokens(text)
    i = 0

    def peek() -> tuple[str, str] | None:
        return toks[i] if i < len(toks) else None

    def take(expected: str | None = None) -> tuple[str, str]:
        nonlocal i
        tok = peek()
        if tok is None:
            raise ExpressionError("the expression ends too early" + (f"; expected '{expected}'" if expected else ""))
        if expected is not None and tok != ("op", expected):
            raise ExpressionError(f"expected '{expected}' at token {i + 1}")
        i += 1
        return tok

    def word(w: str) -> bool:
        return peek() is not None and peek()[0] == "name" and peek()[1].lower() == w  # type: ignore[index]

    def cond() -> Node:
        node = conj()
        while word("or"):
            take()
            node = Node("or", args=(node, conj()))
        return node

    def conj() -> Node:
        node = negation()
        while word("and"):
            take()
            node = Node("and", args=(node, negation()))
        return node

    def negation() -> Node:
        if word("not"):
            take()
            return Node("not", args=(negation(),))
        node = expr()
        if peek() is not None and peek()[0] == "op" and peek()[1] in COMPARISONS:  # type: ignore[index]
            op = take()[1]
            node = Node("compare", "!=" if op == "<>" else op, (node, expr()))
        return node

    def expr() -> Node:
        node = term()
        while peek() in (("op", "+"), ("op", "-")):
            node = Node("binop", take()[1], (node, term()))
        return node

    def term() -> Node:
        node = factor()
        while peek() in (("op", "*"), ("op", "/")):
            node = Node("binop", take()[1], (node, factor()))
        return node

    def factor() -> Node:
        kind, value = take()
        if (kind, value) == ("op", "-"):
            return Node("neg", args=(factor(),))
        if (kind, value) == ("op", "("):
            node = cond()
            take(")")
            return node
        if kind == "number":
            return Node("number", value)
        if kind == "string":
            return Node("string", value[1:-1].replace("''", "'"))
        if kind == "quoted":
            return Node("column", value[1:-1].replace('""', '"'))
        if kind == "name":
            if value.lower() in _WORDS:
                raise ExpressionError(f"unexpected '{value}' at token {i}; a column of that name is written in "
                                      f'double quotes ("{value}")')
            if peek() == ("op", "("):
                return call(value)
            return Node("column", value)
        raise ExpressionError(f"unexpected '{value}' at token {i}")

    def call(name: str) -> Node:
        if name.lower() not in FUNCTIONS:
            raise ExpressionError(f"unknown function {name!r}; use one of: {', '.join(FUNCTIONS)}")
        take("(")
        args: list[Node] = []
        if peek() != ("op", ")"):
            args.append(cond())
            while peek() == ("op", ","):
                take(",")
                args.append(cond())
        take(")")
        lo, hi = FUNCTIONS[name.lower()]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = str(lo) if lo == hi else f"{lo} or more"
            raise ExpressionError(f"{name.lower()} takes {want} argument(s), got {len(args)}")
        if name.lower() == "parse_date" and args[1].kind != "string":
            raise ExpressionError("parse_date's second argument must be a quoted format, e.g. '%d/%m/%Y %H:%M'")
        return Node("call", name.lower(), tuple(args))

    node = cond()
    if peek() is not None:
        raise ExpressionError(f"unexpected '{peek()[1]}' at token {i + 1}")  # type: ignore[index]
    return node


def columns(node: Node) -> list[str]:
    """The landed columns an expression reads, in order of first use."""
    found: dict[str, None] = {}

    def walk(n: Node) -> None:
        if n.kind == "column":
            found.setdefault(n.value)
        for a in n.args:
            walk(a)

    walk(node)
    return list(found)


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def compile_sql(node: Node, column_sql: Callable[[str], str]) -> str:
    """DuckDB SQL for the expression, as VARCHAR (what the loader's checks and casts read).
    ``column_sql`` turns a landed column name into SQL for its text value (the loader's
    reference to the staged column; it raises for a column the file lacks)."""
    sql, typ = _compile(node, column_sql)
    return sql if typ == TEXT else f"CAST({sql} AS VARCHAR)"


def is_condition(node: Node) -> bool:
    """True when the expression is a condition (a comparison, or and/or/not of them)."""
    return _compile(node, lambda c: "NULL")[1] == BOOLEAN


def compile_condition(node: Node, column_sql: Callable[[str], str]) -> str:
    """DuckDB SQL for a condition, true only where it holds: a comparison with no value on
    one side (an empty cell, text that is no number) is not true."""
    sql, typ = _compile(node, column_sql)
    if typ != BOOLEAN:
        raise ExpressionError("the expression is no condition; compare a value, e.g. order_status = 'canceled'")
    return f"coalesce({sql}, false)"


def _as(sql: str, typ: str, want: str) -> str:
    if typ == want:
        return sql
    if typ == BOOLEAN:
        raise ExpressionError("a condition is no value for arithmetic or a function; compare values instead")
    if want == NUMBER:
        return f"try_cast({sql} AS DOUBLE)"
    return f"CAST({sql} AS VARCHAR)"


def _compile(node: Node, column_sql: Callable[[str], str]) -> tuple[str, str]:
    if node.kind == "number":
        float(node.value)  # (the tokenizer admits only digits, a point and an exponent)
        return f"CAST({node.value} AS DOUBLE)", NUMBER
    if node.kind == "string":
        return _lit(node.value), TEXT
    if node.kind == "column":
        return column_sql(node.value), TEXT
    if node.kind == "compare":
        (a, ta), (b, tb) = (_compile(x, column_sql) for x in node.args)
        if BOOLEAN in (ta, tb):
            raise ExpressionError("a condition cannot be compared; join conditions with 'and' / 'or'")
        want = ta if ta == tb else NUMBER if NUMBER in (ta, tb) else TEXT
        if want == TEXT:  # an empty cell is no value: it equals nothing
            a, b = f"nullif({_as(a, ta, TEXT)}, '')", f"nullif({_as(b, tb, TEXT)}, '')"
        else:
            a, b = _as(a, ta, want), _as(b, tb, want)
        return f"({a} {node.value} {b})", BOOLEAN
    if node.kind in ("and", "or", "not"):
        parts = [_compile(x, column_sql) for x in node.args]
        if any(t != BOOLEAN for _, t in parts):
            raise ExpressionError(f"'{node.kind}' joins conditions (comparisons), e.g. "
                                  "order_status = 'canceled' or order_status = 'unavailable'")
        if node.kind == "not":
            return f"(NOT {parts[0][0]})", BOOLEAN
        return f"({parts[0][0]} {node.kind.upper()} {parts[1][0]})", BOOLEAN
    if node.kind == "neg":
        sql, typ = _compile(node.args[0], column_sql)
        return f"(-{_as(sql, typ, NUMBER)})", NUMBER
    if node.kind == "binop":
        (a, ta), (b, tb) = (_compile(x, column_sql) for x in node.args)
        a, b = _as(a, ta, NUMBER), _as(b, tb, NUMBER)
        if node.value == "/":  # division by zero is no value, not an error that stops the load
            return f"({a} / nullif({b}, 0))", NUMBER
        return f"({a} {node.value} {b})", NUMBER
    name = node.value
    parts = [_compile(a, column_sql) for a in node.args]
    if name == "cast_integer":  # 12345.0 -> 12345; 12.5 is no integer (NULL)
        d = _as(*parts[0], NUMBER)
        return f"(CASE WHEN {d} = floor({d}) THEN CAST({d} AS BIGINT) END)", NUMBER
    if name == "cast_decimal":
        return _as(*parts[0], NUMBER), NUMBER
    if name in ("trim", "lower", "upper"):
        return f"{name}({_as(*parts[0], TEXT)})", TEXT
    if name == "coalesce":
        types = {t for _, t in parts}
        typ = types.pop() if len(types) == 1 else TEXT
        # an empty cell is no value: the next argument is taken
        args = [f"nullif({_as(s, t, typ)}, '')" if typ == TEXT else _as(s, t, typ) for s, t in parts]
        return f"coalesce({', '.join(args)})", typ
    if name == "concat":
        return f"concat({', '.join(_as(s, t, TEXT) for s, t in parts)})", TEXT
    if name == "parse_date":
        text, fmt = _as(*parts[0], TEXT), node.args[1].value
        return f"try_strptime({text}, {_lit(fmt)})", TIMESTAMP
    raise ExpressionError(f"unknown function {name!r}")  # (parse() admits none)
