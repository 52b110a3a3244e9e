"""Running GX suites against DataFrames, and building Data Docs.

Suites come from the repository (``expectations/gx/expectations/*.json``) or, for the published
tables, are handed in as built from the dbt manifest (``expectations.suites.published_suite``).

Great Expectations is imported lazily (the import alone takes seconds) and one file data
context is created per process and reports folder, then reused by every validation of the run.
The repository's ``expectations/gx/`` (config and suites) is copied into
``<paths.reports>/gx`` first, so validation results and Data Docs land in the project's
reports folder and never in the repository.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from expectations.suites import GX_DIR

log = logging.getLogger("tessera.expectations")

_RUNNERS: dict[Path, "GxRunner"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExpectationOutcome:
    check: str
    table: str
    blocking: bool
    column: str | None
    success: bool
    observed: object  # the metric value (GX's observed/unexpected value), no row data


def _bound(value, parameters: dict):
    if isinstance(value, dict) and "$PARAMETER" in value:
        return parameters[value["$PARAMETER"]]  # a missing parameter is an error, as in GX
    return value


def evaluate(expectation: dict, columns: list[str], row: dict, parameters: dict) -> bool:
    """One expectation of the gate's suites on its one-row frame, without GX: what GX computes for
    the two expectation types the suites use (a null or NaN value is not "unexpected": it passes)."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind == "expect_table_columns_to_match_set":
        wanted = set(kwargs["column_set"])
        return wanted == set(columns) if kwargs.get("exact_match", True) else wanted <= set(columns)
    if kind == "expect_column_values_to_be_between":
        value = row.get(kwargs["column"])
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return True
        lo, hi = _bound(kwargs.get("min_value"), parameters), _bound(kwargs.get("max_value"), parameters)
        if lo is not None and (value <= lo if kwargs.get("strict_min") else value < lo):
            return False
        if hi is not None and (value >= hi if kwargs.get("strict_max") else value > hi):
            return False
        return True
    raise ValueError(f"no native evaluation of {kind}: validate it with GX")


class NativeRunner:
    """The gate's suites evaluated in Python, with the GX runner's interface: a daily gate's
    checks are bounds on one-row frames of metrics measured in SQL, for which GX's validation
    machinery (a validation definition, a batch and a result per suite: most of the gate's CPU)
    adds nothing but Data Docs. Full gates, and a daily gate that fails, validate with GX."""

    def suite_data(self, name: str, data: dict | None = None) -> dict:
        return data if data is not None else json.loads((GX_DIR / "expectations" / f"{name}.json").read_text())

    def validate(self, suite_name: str, frame, parameters: dict | None = None,
                 suite: dict | None = None) -> list[ExpectationOutcome]:
        columns = list(frame.columns)
        row = {c: (None if frame[c].isna().iloc[0] else float(frame[c].iloc[0])) for c in columns}
        outcomes = []
        for e in self.suite_data(suite_name, suite)["expectations"]:
            meta, kwargs = e.get("meta") or {}, e["kwargs"]
            try:
                success = evaluate(e, columns, row, parameters or {})
            except KeyError as missing:  # an unknown parameter: GX reports an error, which fails
                success = False
                row.setdefault(kwargs.get("column") or "", f"error: no parameter {missing}")
            outcomes.append(ExpectationOutcome(
                check=meta.get("check", e["type"]), table=meta.get("table", ""),
                blocking=bool(meta.get("blocking", True)), column=kwargs.get("column"),
                success=success, observed=row.get(kwargs.get("column")) if kwargs.get("column") else columns,
            ))
        return outcomes

    def build_docs(self) -> None:
        return None


def runner_for(reports_dir: Path) -> "GxRunner":
    """The process's GX runner for this reports folder (created on first use)."""
    root = (Path(reports_dir) / "gx").resolve()
    with _LOCK:
        if root not in _RUNNERS:
            _RUNNERS[root] = GxRunner(root)
        return _RUNNERS[root]


def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


class GxRunner:
    def __init__(self, root: Path) -> None:
        _quiet_gx()
        import great_expectations as gx  # noqa: PLC0415 - lazily, it is slow to import

        self._gx = gx
        self.root = root
        self._seed_context()
        self.context = gx.get_context(mode="file", context_root_dir=str(root))
        source = self.context.data_sources.add_or_update_pandas("tessera")
        asset = source.get_asset("frames") if "frames" in source.get_asset_names() else source.add_dataframe_asset("frames")
        self._batch_definition = (
            asset.get_batch_definition("whole") if any(b.name == "whole" for b in asset.batch_definitions)
            else asset.add_batch_definition_whole_dataframe("whole")
        )
        self._suites: dict = {}
        self._suite_data: dict = {}
        self._definitions: dict = {}

    def _seed_context(self) -> None:
        """Copy the repository's context (config + suites) into the reports folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        yml = self.root / "great_expectations.yml"
        if not yml.exists():
            shutil.copy(GX_DIR / "great_expectations.yml", yml)
        # Suites come fresh from the repository; validation results and Data Docs of earlier
        # processes are dropped, so the docs show this run's validations (and stay quick to build).
        for sub in ("expectations", "validation_definitions", "uncommitted/validations", "uncommitted/data_docs"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def suite(self, name: str, data: dict | None = None):
        """The named suite: ``data`` when given (rebuilt if it changed), else the repository's file."""
        if data is not None and data != self._suite_data.get(name):
            self._suites.pop(name, None)
            self._definitions.pop(name, None)
        if name not in self._suites:
            data = data if data is not None else json.loads((GX_DIR / "expectations" / f"{name}.json").read_text())
            self._suite_data[name] = data
            suite = self._gx.ExpectationSuite(name=data["name"], notes=data.get("notes"), meta=data.get("meta"))
            from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

            for e in data["expectations"]:
                suite.add_expectation_configuration(
                    ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"])
                )
            self._suites[name] = self.context.suites.add_or_update(suite)
        return self._suites[name]

    def validate(self, suite_name: str, frame, parameters: dict | None = None,
                 suite: dict | None = None) -> list[ExpectationOutcome]:
        """Validate a DataFrame against a suite (``suite``, or the stored one of that name);
        one outcome per expectation."""
        gx = self._gx
        gx_suite = self.suite(suite_name, suite)
        if suite_name not in self._definitions:
            definition = gx.ValidationDefinition(name=suite_name, data=self._batch_definition, suite=gx_suite)
            self._definitions[suite_name] = self.context.validation_definitions.add_or_update(definition)
        result = self._definitions[suite_name].run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {}, result_format="SUMMARY",
        )
        outcomes = []
        for r in result.results:
            cfg = r.expectation_config
            res = r.result or {}
            observed = res.get("observed_value")
            if observed is None and res.get("partial_unexpected_list"):
                observed = res["partial_unexpected_list"][0]
            if r.exception_info and r.exception_info.get("raised_exception"):
                observed = f"error: {r.exception_info.get('exception_message')}"
            outcomes.append(ExpectationOutcome(
                check=cfg.meta.get("check", cfg.type), table=cfg.meta.get("table", ""),
                blocking=bool(cfg.meta.get("blocking", True)), column=cfg.kwargs.get("column"),
                success=bool(r.success), observed=observed,
            ))
        return outcomes

    def build_docs(self) -> Path:
        self.context.build_data_docs()
        return self.root / "uncommitted" / "data_docs" / "local_site" / "index.html"
