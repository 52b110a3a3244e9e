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
