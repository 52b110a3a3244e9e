"""The one file a user edits: ``cdp.yaml``.

Loaded with :func:`load_config`, validated by pydantic models (unknown keys are errors,
so a typo never silently falls back to a default), and turned into a ``ConfigError``
whose message names the key and says what to fix. Relative paths resolve against the
folder that holds the config file.
"""

from __future__ import annotations

import os
import warnings
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.contracts import SOURCE_KINDS, WEB_TRACK_EVENTS, entities_of
from core.expressions import ExpressionError, compile_sql, is_condition
from core.expressions import columns as expression_columns
from core.expressions import parse as parse_expression
from core.settings.activation import Syncs
from core.settings.engine import DuckDBSettings, Engine, SparkSettings
from core.settings.expectations import ExpectationsSettings
from core.settings.experiments import Experiment, check_experiments
from core.settings.identity import IdentitySettings
from core.settings.names import snake_name
from core.settings.privacy import PrivacySettings
from core.settings.scoring import CartIntentSettings, ChurnSettings, OffersSettings, RecommendationsSettings
from core.settings.segments import SegmentsSettings
from core.settings.serve import ServeSettings
from core.yamlfile import YamlFileError, load_yaml

CONFIG_ENV = "CDP_CONFIG"
DEFAULT_CONFIG_NAME = "cdp.yaml"


class ConfigError(ValueError):
    """The config file is missing or invalid; the message says where and what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lookup(_Strict):
    """A column taken from another entity's landed file(s) of the same source, matched on a key:
    Olist's orders carry customer_id, the person key customer_unique_id is in the customers file."""

    entity: str = Field(description="Another entity of this source; its files (its `path` glob) are read.")
    key: str = Field(description="The column of this file whose value is looked up.")
    match: str | None = Field(default=None, description="The column of the other file that holds the key "
                                                         "(defaults to `key`).")
    column: str = Field(description="The column of the other file whose value is taken.")
    missing: Literal["quarantine", "null"] = Field(
        default="quarantine",
        description="A key the other file lacks: 'quarantine' the row (reason lookup_no_match), or 'null' "
                    "(the looked-up column is empty).")


class EntityFiles(_Strict):
    """Where one entity of a source lands, and how its columns map onto the contract."""

    path: str = Field(description="Glob relative to paths.landing, e.g. 'pos/transactions_*.csv'.")
    format: Literal["csv", "jsonl"] | None = Field(
        default=None, description="Defaults to the contract's format."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Landed column name -> contract field name."
    )
    formats: dict[str, str] = Field(
        default_factory=dict,
        description="Contract field -> strptime format for dates/timestamps not in ISO 8601.",
    )
    delimiter: str = ","
    event_names: dict[str, str] = Field(
        default_factory=dict,
        description="web events only: a shop's own track event name -> canonical name "
        f"({', '.join(WEB_TRACK_EVENTS)}). Spec names (Title Case or snake_case) need no entry. "
        "Applies to events loaded after the change.",
    )
    expressions: dict[str, str] = Field(
        default_factory=dict,
        description="Contract field -> expression over landed columns (core/expressions.py), e.g. "
                    "'cast_integer(CustomerID)' or 'Quantity * UnitPrice'.",
    )
    lookups: dict[str, Lookup] = Field(
        default_factory=dict,
        description="Name -> a column looked up in another entity's file (see Lookup); the name is then read "
                    "like a landed column by `columns`, `expressions` and `skip_when`.",
    )
    skip_when: str | None = Field(
        default=None,
        description="A condition over landed columns (expression language, e.g. \"order_status = 'canceled'\"): "
                    "rows where it holds are left out and counted in the load's rows_skipped.",
    )
    rows: Literal["records", "lines"] = Field(
        default="records",
        description="'lines': the file has one row per receipt line (an invoice-lines export); rows with "
                    "the same key become one record, decimal fields summed, others from the first line; "
                    "rows without the key are no record of this entity and are skipped.",
    )
    number_lines: bool = Field(
        default=False,
        description="pos.line_items: derive line_no as each row's position within its transaction, in file order.",
    )

    @field_validator("expressions")
    @classmethod
    def _expressions_parse(cls, v: dict[str, str]) -> dict[str, str]:
        for target, text in v.items():
            try:
                compile_sql(parse_expression(text), lambda c: "NULL")  # (types checked too)
            except ExpressionError as e:
                raise ValueError(f"expressions.{target}: {e}") from None
        return v

    @field_validator("skip_when")
    @classmethod
    def _skip_when_is_condition(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            node = parse_expression(v)
            if not is_condition(node):
                raise ExpressionError("it is no condition; compare a column with a value, e.g. "
                                      "order_status = 'canceled' or order_status = 'unavailable'")
        except ExpressionError as e:
            raise ValueError(f"skip_when: {e}") from None
        return v

    def read_columns(self) -> set[str]:
        """The landed (or looked-up) columns that expressions and skip_when read."""
        texts = list(self.expressions.values()) + ([self.skip_when] if self.skip_when else [])
        return {c for text in texts for c in expression_columns(parse_expression(text))}


SourceName = snake_name("pos_north")


class Source(_Strict):
    name: SourceName = Field(description="Instance name, unique: 'web', 'pos_north', 'pos_outlet'.")
    kind: str = Field(description=f"One of: {', '.join(SOURCE_KINDS)}.")
    entities: dict[str, EntityFiles]
    enabled: bool = True

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {v!r}; use one of: {', '.join(SOURCE_KINDS)}")
        return v

    @model_validator(mode="after")
    def _entities_match_contracts(self) -> "Source":
        known = {e.name: e for e in entities_of(self.kind)}
        for entity_name, files in self.entities.items():
            if entity_name not in known:
                raise ValueError(
                    f"entities: {entity_name!r} is not an entity of kind {self.kind!r}; "
                    f"use one of: {', '.join(known)}"
                )
            contract_fields = set(known[entity_name].field_names)
            for landed, target in files.columns.items():
                if target not in contract_fields:
                    raise ValueError(
                        f"entities.{entity_name}.columns: {landed!r} maps to {target!r}, which is "
                        f"not a field of the {self.kind}.{entity_name} contract; fields are: "
                        f"{', '.join(sorted(contract_fields))}"
                    )
            if files.event_names and (self.kind, entity_name) != ("web", "events"):
                raise ValueError(f"entities.{entity_name}.event_names: only web events have event names")
            for own, target in files.event_names.items():
                if not own.strip():
                    raise ValueError(f"entities.{entity_name}.event_names: an empty event name cannot be mapped")
                if target not in WEB_TRACK_EVENTS:
                    raise ValueError(
                        f"entities.{entity_name}.event_names: {own!r} maps to {target!r}, which is not a "
                        f"canonical event name; use one of: {', '.join(WEB_TRACK_EVENTS)}"
                    )
            for target in files.expressions:
                if target not in contract_fields:
                    raise ValueError(
                        f"entities.{entity_name}.expressions: {target!r} is not a field of the "
                        f"{self.kind}.{entity_name} contract; fields are: {', '.join(sorted(contract_fields))}"
                    )
                if target in files.columns.values():
                    raise ValueError(
                        f"entities.{entity_name}.expressions: {target!r} is also the target of a column in "
                        "`columns`; map it one way only"
                    )
            for name, lookup in files.lookups.items():
                where = f"entities.{entity_name}.lookups.{name}"
                if lookup.entity == entity_name:
                    raise ValueError(f"{where}: entity is this entity itself; name another entity of this source")
                if lookup.entity not in self.entities:
                    raise ValueError(f"{where}: entity {lookup.entity!r} is not an entity of this source; "
                                     f"use one of: {', '.join(e for e in self.entities if e != entity_name)}")
                other = self.entities[lookup.entity]
                if lookup.entity not in known:
                    continue  # (reported as no entity of this kind when its turn comes)
                if (other.format or known[lookup.entity].format) != "csv" or (files.format or known[entity_name].format) != "csv":
                    raise ValueError(f"{where}: lookups join CSV files; {entity_name} and {lookup.entity} must "
                                     "both land as CSV (set `format: csv`)")
                for column in (lookup.key, lookup.match or lookup.key, lookup.column):
                    if not column.strip():
                        raise ValueError(f"{where}: key, match and column must name columns")
            if files.skip_when and files.rows == "lines":
                raise ValueError(f"entities.{entity_name}.skip_when: not supported with rows: 'lines' yet")
            if files.number_lines and (self.kind, entity_name) != ("pos", "line_items"):
                raise ValueError(f"entities.{entity_name}.number_lines: only pos line_items have line numbers")
            if files.rows == "lines" and len(known[entity_name].key) != 1:
                raise ValueError(f"entities.{entity_name}.rows: 'lines' needs an entity with a one-field key")
            for target in files.formats:
                if target not in contract_fields:
                    raise ValueError(
                        f"entities.{entity_name}.formats: {target!r} is not a field of the "
                        f"{self.kind}.{entity_name} contract"
                    )
        return self


class Paths(_Strict):
    landing: Path = Path("landing")
    warehouse: Path = Path("warehouse/tessera.duckdb")
    published: Path = Path("published")
    dagster_home: Path = Path(".dagster")
    reports: Path = Path("reports")


class Ingestion(_Strict):
    max_bad_row_rate: float = Field(
        default=0.05, ge=0, le=1,
        description="A file whose share of quarantined rows exceeds this is rejected whole.",
    )
    earliest_date: date = Field(
        default=date(2000, 1, 1),
        description="Timestamps before this are implausible (a typo'd year, an epoch-zero default) and their "
                    "rows quarantined as impossible_timestamp; set it earlier to load older history.",
    )


# Sections renamed: old key -> new key (the old one is read, with a warning, for one release).
RENAMED_SECTIONS = {"quality": "expectations"}


class Config(_Strict):
    """A validated ``cdp.yaml``. ``root`` is the folder relative paths resolve against."""

    version: Literal[1] = 1
    project: str = "tessera"
    engine: Engine = Field(
        default="duckdb",
        description="What holds and computes the warehouse: duckdb (one file, one machine) or spark "
                    "(Parquet tables in a Spark catalog; settings in `spark:`).",
    )
    spark: SparkSettings = Field(default_factory=SparkSettings)
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    as_of: date | None = Field(
        default=None, description="Reference date of a run; empty = now. Set for backtests."
    )
    paths: Paths = Paths()
    ingestion: Ingestion = Ingestion()
    sources: list[Source] = Field(default_factory=list)
    # Sections filled in by later stages; kept as plain mappings until their stage
    # defines a model, so a config written today keeps loading.
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    segments: SegmentsSettings = Field(default_factory=SegmentsSettings)
    churn: ChurnSettings = Field(default_factory=ChurnSettings)
    cart_intent: CartIntentSettings = Field(default_factory=CartIntentSettings)
    offers: OffersSettings = Field(default_factory=OffersSettings)
    recommendations: RecommendationsSettings = Field(default_factory=RecommendationsSettings)
    syncs: Syncs = Field(default_factory=list)
    expectations: ExpectationsSettings = Field(default_factory=ExpectationsSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    experiments: list[Experiment] = Field(default_factory=list)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, data: Any) -> Any:
        """Sections renamed in a release: the old key still loads, with a warning, for one
        release (the gate's section is ``expectations`` since 0.1: README "Expectations: the gate and publishing")."""
        if isinstance(data, dict):
            for old, new in RENAMED_SECTIONS.items():
                if old not in data:
                    continue
                if new in data:
                    raise ValueError(f"both '{old}' (the old name) and '{new}' are set; move the settings of "
                                     f"'{old}' into '{new}' and remove '{old}'")
                warnings.warn(f"cdp.yaml: the '{old}:' section is now called '{new}:' (one name for the stage, "
                              f"like its package expectations/); '{old}:' is still read in this release only: "
                              f"rename it", FutureWarning, stacklevel=2)
                data = {**{k: v for k, v in data.items() if k != old}, new: data[old]}
        return data

    @model_validator(mode="after")
    def _unique_source_names(self) -> "Config":
        seen: set[str] = set()
        for s in self.sources:
            if s.name in seen:
                raise ValueError(f"sources: the name {s.name!r} is used twice; names must be unique")
            seen.add(s.name)
        check_experiments(self.experiments, {s.name for s in self.syncs})
        return self

    def experiment(self, name: str) -> Experiment | None:
        return next((e for e in self.experiments if e.name == name), None)

    @property
    def offers_experiment(self) -> Experiment | None:
        """The experiment next-best-offer takes its holdout from, if one is attached."""
        return next((e for e in self.experiments if e.offers), None)

    # Resolved paths -----------------------------------------------------------------
    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.root / p).resolve()

    @property
    def landing_dir(self) -> Path:
        return self.resolve(self.paths.landing)

    @property
    def warehouse_path(self) -> Path:
        return self.resolve(self.paths.warehouse)

    @property
    def spark_warehouse(self) -> str:
        """spark.sql.warehouse.dir: a URI as given, a path resolved against the config's folder."""
        w = self.spark.warehouse
        return w if self.spark.is_uri_warehouse else self.resolve(Path(w)).as_uri()

    @property
    def published_dir(self) -> Path:
        return self.resolve(self.paths.published)

    @property
    def dagster_home(self) -> Path:
        return self.resolve(self.paths.dagster_home)

    @property
    def dbt_target_dir(self) -> Path:
        """dbt's target/ for this project: the parsed manifest, the partial-parse state and one
        folder per dbt invocation (runs/). Beside Dagster's run history, not in the installed
        code, so projects sharing one install keep their own parse state."""
        return self.dagster_home / "dbt_target"

    @property
    def serve_spool(self) -> Path:
        return self.resolve(self.serve.spool)

    @property
    def segments_file(self) -> Path:
        return self.resolve(self.segments.file)

    @property
    def reports_dir(self) -> Path:
        return self.resolve(self.paths.reports)

    def enabled_sources(self, kind: str | None = None) -> list[Source]:
        return [s for s in self.sources if s.enabled and (kind is None or s.kind == kind)]

    def as_of_datetime(self) -> datetime:
        """The run's reference time: end of the as_of day (UTC), or now."""
        from datetime import time, timezone

        if self.as_of is None:
            return datetime.now(timezone.utc)
        return datetime.combine(self.as_of, time(23, 59, 59), tzinfo=timezone.utc)


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required key is missing; add it"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  - {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def find_config_path(path: str | os.PathLike | None = None) -> Path:
    """The config file to use: the given path, else $CDP_CONFIG, else ./cdp.yaml."""
    candidate = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)
    return candidate.expanduser().resolve()


def load_config(path: str | os.PathLike | None = None) -> Config:
    cfg_path = find_config_path(path)
    if not cfg_path.is_file():
        raise ConfigError(
            f"{cfg_path}: config file not found. Create one with `cdp init DIR`, "
            f"or pass --config PATH (or set {CONFIG_ENV})."
        )
    try:
        data = load_yaml(cfg_path) or {}
    except YamlFileError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of keys (project, paths, sources, ...)")
    if "root" in data:
        raise ConfigError(f"{cfg_path}: 'root' is not a config key; paths resolve against the file's folder")
    try:
        return Config.model_validate({**data, "root": cfg_path.parent})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(cfg_path, e)) from None


def config_from_dict(data: dict[str, Any], root: Path) -> Config:
    """Build a config from a mapping (tests, tools); validated like a file."""
    try:
        return Config.model_validate({**data, "root": Path(root)})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(Path(root) / DEFAULT_CONFIG_NAME, e)) from None

