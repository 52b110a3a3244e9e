"""The published tables, read from the dbt manifest: dbt is the one place they are declared.

A published table is a dbt model tagged ``published`` (under ``dbt/models/marts``). Everything
that publishes or checks one - the gate and its GX suites, the Dagster publish asset and its
checks, the snapshot writer, the marketer commands - takes the list and the facts below from
``published_tables()``; adding a published mart is one dbt model and its YAML, no Python.

What each fact is read from (the convention, in the model's YAML):

- name, relation: the model's alias and schema (``marts.<name>``); description: its description.
- columns and types: the enforced contract (``config: {contract: {enforced: true}}`` and a
  ``data_type`` per column); the gate's schema check requires every contract column.
- not-null columns: column ``constraints: [{type: not_null}]`` (dbt-duckdb enforces them).
- key: the model-level ``unique_key`` data test (``dbt/tests/generic/unique_key.sql``: the
  combination is unique and never null). Not a ``primary_key`` constraint: dbt-duckdb enforces
  that with an index on every build, which costs time and memory on the large marts, and a key
  dbt enforced could never be caught broken by the gate. No ``unique_key`` test, no key.
- probabilities: ``value_between`` tests with bounds 0 and 1 (nullable unless not_null);
  non-negative columns: ``value_between`` with min_value 0 and another max; value sets:
  ``accepted_values`` tests; person column: the ``relationships``/``exists_in`` test to
  ``customers.person_id``.
- what dbt cannot express lives in the model's ``meta: {tessera: {...}}``: ``not_empty``
  (the gate blocks an empty table), ``profile`` (position of the table in a person's profile),
  ``asset`` (Dagster asset path, default ``<layer>/<name>``); and a column's
  ``config: {meta: {pii: true}}``.

The manifest is ``dbt parse``'s ``target/manifest.json``; ``manifest_path()`` is the one place
that says where it is (the Dagster definitions pass their ``DbtProject``'s path explicitly).
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.dbt_project import cache_target_dir, installed_manifest

CONSENT_CHANNELS = ("email_marketing", "sms_marketing", "web_personalisation")
# dbt's copy is the var `consent_channels` in dbt/dbt_project.yml (dbt cannot import Python and
# passing it with --vars would make dbt re-parse the project); a test keeps the two equal.

# Persons reachable by a marketing channel: a granted consent on one of these.
CONTACT_CHANNELS = ("email_marketing", "sms_marketing")

PUBLISHED_TAG = "published"
KEY_TEST = "unique_key"
# Points the published-table registry at another dbt manifest (tests; a relocated dbt target).
MANIFEST_ENV = "TESSERA_DBT_MANIFEST"

# What `cdp serve` scores live cart intent with (serve/cart_model.py), published with the
# snapshot so the server never opens the warehouse (a run's writer would wait on it). They are
# not dbt models (a saved model record; the score rows of an intermediate model), so they are
# the publish step's own tables (publish/snapshot.py serve_tables). No PII: ids, the model, numbers.
SERVE_CART_MODEL = "serve_cart_model"              # the saved cart_intent model record (one row)
SERVE_CART_FEATURES = "serve_cart_features"        # each person's open carts' features at the score cutoff
SERVE_CART_RETURN_GAPS = "serve_cart_return_gaps"  # hours from abandonment to return, for expected_return_hours
SERVE_PERSON_HISTORY = "serve_person_history"      # each person's history at the score cutoff (int_person_history)
# int_cart_features columns the live features start from (scoring.cart.FEATURES but
# hours_since_added, which is computed live from last_added_at)
CART_FEATURE_COLUMNS = ("person_id", "cart_id", "cutoff_at", "last_added_at", "cart_value", "items_added",
                        "checkout_started", "orders_total", "orders_365d", "discounted_order_share",
                        "days_since_last_order", "web_sessions_30d", "days_since_previous_visit", "email_opens_90d",
                        "past_abandoned_carts", "past_carts_returned")
# int_person_history columns: what a cart the batch did not see is scored on
PERSON_HISTORY_COLUMNS = ("person_id", "cutoff_at", "orders_total", "orders_365d", "discounted_orders",
                          "last_ordered_at", "web_sessions_30d", "last_session_at", "previous_session_at",
                          "email_opens_90d", "past_abandoned_carts", "past_carts_returned")
SERVE_TABLES = (SERVE_CART_MODEL, SERVE_CART_FEATURES, SERVE_CART_RETURN_GAPS, SERVE_PERSON_HISTORY)


class ManifestError(RuntimeError):
    """The dbt manifest is missing or declares no published table."""


@dataclass(frozen=True)
class PublishedTable:
    name: str  # the published name (table in the snapshot's main schema)
    relation: str  # where the build writes it in the warehouse
    keys: tuple[str, ...] = ()  # unique and not null together
    columns: tuple[str, ...] = ()  # every column of the contract, in order
    data_types: dict[str, str] = field(default_factory=dict)  # column -> contract data_type
    not_null: tuple[str, ...] = ()  # columns with a not_null constraint
    probabilities: tuple[str, ...] = ()  # each in [0, 1] (and not null)
    nullable_probabilities: tuple[str, ...] = ()  # in [0, 1] when present
    value_sets: dict[str, tuple] = field(default_factory=dict)  # column -> allowed values (nulls allowed)
    non_negative: tuple[str, ...] = ()  # numeric columns that must be >= 0 when present
    person_column: str | None = None  # every value must be a person in customers
    not_empty: bool = False
    pii_columns: tuple[str, ...] = ()  # masked in reports
    asset: tuple[str, ...] | None = None  # Dagster asset that builds it (default marts/<name>)
    profile: int | None = None  # position among a person's profile sections (None: after those, by name)
    description: str = ""

    @property
    def asset_path(self) -> tuple[str, ...]:
        return self.asset or ("marts", self.name)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return self.columns

    @property
    def schema(self) -> str:
        return self.relation.split(".")[0]

    @property
    def table(self) -> str:
        return self.relation.split(".")[1]


def manifest_path(parse: bool = True) -> Path:
    """The manifest the registry reads: ``$TESSERA_DBT_MANIFEST`` when set, else the installed
    dbt project's, parsed into the per-user cache when missing or stale (``parse=False``: the
    cached file as it is, which may not exist yet)."""
    if os.environ.get(MANIFEST_ENV):
        return Path(os.environ[MANIFEST_ENV])
    return installed_manifest() if parse else cache_target_dir() / "manifest.json"


_CACHE: dict[tuple[str, int], tuple[PublishedTable, ...]] = {}
_LOCK = threading.Lock()


def published_tables(manifest: Path | str | dict | None = None) -> tuple[PublishedTable, ...]:
    """Every published table, in the manifest's order of model names. ``manifest``: a path,
    an already loaded manifest, or None for ``manifest_path()``. Read once per file version."""
    if isinstance(manifest, dict):
        return tables_from_manifest(manifest)
    path = Path(manifest) if manifest is not None else manifest_path()
    try:
        version = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ManifestError(
            f"no dbt manifest at {path}: the published tables are read from it. Run `dbt parse` in the dbt "
            f"project (loading the Dagster definitions or `cdp run` does it), or point {MANIFEST_ENV} at one"
        ) from None
    key = (str(path), version)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = tables_from_manifest(json.loads(path.read_text()), source=str(path))
        return _CACHE[key]


def published_table(name: str, manifest: Path | str | dict | None = None) -> PublishedTable:
    for t in published_tables(manifest):
        if t.name == name:
            return t
    raise KeyError(f"{name} is not a published table (no dbt model tagged '{PUBLISHED_TAG}' has that name)")


def published_names(manifest: Path | str | dict | None = None) -> tuple[str, ...]:
    return tuple(t.name for t in published_tables(manifest))


# --------------------------------------------------------------------------- reading the manifest
def _tests_by_model(manifest: dict) -> dict[str, list[dict]]:
    tests: dict[str, list[dict]] = {}
    for node in manifest.get("nodes", {}).values():
        if node.get("resource_type") == "test" and node.get("test_metadata") and node.get("attached_node"):
            if node.get("config", {}).get("enabled", True):
                tests.setdefault(node["attached_node"], []).append(node)
    return tests


def _arguments(test: dict) -> dict:
    kwargs = dict(test["test_metadata"].get("kwargs") or {})
    # dbt 1.10+ nests a test's arguments under `arguments:` in YAML; the manifest keeps them flat.
    kwargs.update(kwargs.pop("arguments", None) or {})
    return kwargs


# Test arguments that name a dbt var stay unrendered in the manifest ("{{ var('x') }}"); the
# vars a published table's tests may use, with the Python constant each one equals.
_VARS = {"consent_channels": CONSENT_CHANNELS}
_VAR_RE = re.compile(r"^\{\{\s*var\(\s*['\"](\w+)['\"]\s*\)\s*\}\}$")


def _values(values, model: str) -> tuple:
    if isinstance(values, str):
        found = _VAR_RE.match(values.strip())
        if not found or found.group(1) not in _VARS:
            raise ManifestError(f"accepted_values of {model}: cannot resolve {values!r} (vars known to "
                                f"core/published.py: {', '.join(_VARS)})")
        return tuple(_VARS[found.group(1)])
    return tuple(values)


def _refers_to_customers(to) -> bool:
    return isinstance(to, str) and to.replace('"', "'").replace(" ", "") == "ref('customers')"


def _column_meta(column: dict) -> dict:
    return {**(column.get("meta") or {}), **((column.get("config") or {}).get("meta") or {})}


def _table(node: dict, tests: list[dict]) -> PublishedTable:
    name = node.get("alias") or node["name"]
    meta = ({**(node.get("meta") or {}), **(node.get("config", {}).get("meta") or {})}).get("tessera") or {}
    columns = node.get("columns") or {}
    keys: tuple[str, ...] = ()
    probabilities, nullable_probabilities, non_negative = [], [], []
    value_sets: dict[str, tuple] = {}
    person_column = None
    not_null = tuple(c for c, col in columns.items()
                     if any(k.get("type") == "not_null" for k in col.get("constraints") or []))
    for test in sorted(tests, key=lambda t: t["unique_id"]):
        kind, args = test["test_metadata"]["name"], _arguments(test)
        column = test.get("column_name") or args.get("column_name")
        if kind == KEY_TEST:
            if keys:
                raise ManifestError(f"model {name} has more than one `{KEY_TEST}` test: a published table has one key")
            keys = tuple(args["columns"])
        elif kind == "value_between" and column:
            lo, hi = args.get("min_value"), args.get("max_value")
            if lo == 0 and hi == 1:
                (probabilities if column in not_null else nullable_probabilities).append(column)
            elif lo == 0:
                non_negative.append(column)
        elif kind == "accepted_values" and column:
            value_sets[column] = _values(args["values"], name)
        elif kind in ("relationships", "exists_in") and column and args.get("field") == "person_id" \
                and _refers_to_customers(args.get("to")):
            person_column = column
    asset = meta.get("asset")
    if asset is None:
        fqn = node.get("fqn") or []
        asset = [fqn[1], name] if len(fqn) > 2 else None
    return PublishedTable(
        name=name, relation=f"{node['schema']}.{name}", keys=keys, columns=tuple(columns),
        data_types={c: col.get("data_type") or "" for c, col in columns.items()}, not_null=not_null,
        probabilities=tuple(probabilities), nullable_probabilities=tuple(nullable_probabilities),
        value_sets=value_sets, non_negative=tuple(non_negative), person_column=person_column,
        not_empty=bool(meta.get("not_empty")),
        pii_columns=tuple(c for c, col in columns.items() if _column_meta(col).get("pii")),
        asset=tuple(asset) if asset else None, profile=meta.get("profile"),
        description=" ".join((node.get("description") or "").split()),
    )


def tables_from_manifest(manifest: dict, source: str = "the dbt manifest") -> tuple[PublishedTable, ...]:
    tests = _tests_by_model(manifest)
    models = sorted((n for n in manifest.get("nodes", {}).values()
                     if n.get("resource_type") == "model" and PUBLISHED_TAG in (n.get("tags") or [])
                     and n.get("config", {}).get("enabled", True)), key=lambda n: n["name"])
    if not models:
        raise ManifestError(f"{source} declares no published table (no dbt model tagged '{PUBLISHED_TAG}')")
    for n in models:
        if not n.get("config", {}).get("contract", {}).get("enforced"):
            raise ManifestError(f"published model {n['name']} has no enforced contract: its YAML must set "
                                f"`config: {{contract: {{enforced: true}}}}` and a data_type per column")
    return tuple(_table(n, tests.get(n["unique_id"], [])) for n in models)
