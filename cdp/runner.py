"""``cdp run``: the Dagster asset graph, executed in this process, with a readable summary.

The same assets, checks and run history as in the Dagster UI (runs are recorded in the
config's ``paths.dagster_home``), without a web server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cdp.config import CONFIG_ENV, Config, find_config_path, load_config
from cdp.scaffold import ensure_dagster_home

# `cdp run --only STAGE` → the Dagster asset groups it runs. Later stages add theirs.
STAGES: dict[str, list[str]] = {
    "ingestion": ["ingestion"],
    "identity": ["identity"],
    # dbt (dagster_project/defs/dbt_marts.py): one group per dbt layer.
    "marts": ["staging", "intermediate", "marts"],
    # Declarative segments (dagster_project/defs/segments.py): the segments file evaluated.
    "segments": ["segments"],
}


@dataclass
class AssetOutcome:
    asset: str
    metadata: dict = field(default_factory=dict)


@dataclass
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    severity: str
    detail: str = ""


@dataclass
class RunSummary:
    run_id: str
    success: bool
    materialized: list[AssetOutcome] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        """The run succeeded and no ERROR-severity check failed."""
        return self.success and not any(c.severity == "ERROR" for c in self.failed_checks)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "success": self.success,
            "failures": self.failures,
            "materialized": [{"asset": a.asset, "metadata": a.metadata} for a in self.materialized],
            "checks": [c.__dict__ for c in self.checks],
        }


def prepare_environment(config: Config, config_path: Path) -> None:
    """Point Dagster and the definitions at this project (before importing definitions)."""
    os.environ[CONFIG_ENV] = str(config_path)
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(config.dagster_home))
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _metadata_value(v):
    value = getattr(v, "value", v)
    if isinstance(value, (int, float, str, bool, dict, list)) or value is None:
        return value
    return str(value)


def run_pipeline(config_path: str | os.PathLike | None = None, only: list[str] | None = None) -> RunSummary:
    unknown = [s for s in (only or []) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    cfg_path = find_config_path(config_path)
    config = load_config(cfg_path)
    saved = {k: os.environ.get(k) for k in (CONFIG_ENV, "DAGSTER_HOME")}
    prepare_environment(config, cfg_path)
    try:
        return _execute(config, only)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(config: Config, only: list[str] | None) -> RunSummary:

    from dagster import AssetSelection, DagsterInstance

    from dagster_project.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    if only:
        groups = [g for s in only for g in STAGES[s]]
        keys = list(AssetSelection.groups(*groups).resolve(graph))
    else:
        keys = list(graph.get_all_asset_keys())

    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=keys,
            raise_on_error=False,
            tags={"tessera/trigger": "cli", "tessera/stages": ",".join(only or ["all"])},
            # Dagster's own console lines only for warnings and errors; the stages'
            # progress comes through the `tessera` Python logger (see cli.py).
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    summary = RunSummary(run_id=result.run_id, success=result.success)
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        summary.materialized.append(
            AssetOutcome(mat.asset_key.to_user_string(), {k: _metadata_value(v) for k, v in mat.metadata.items()})
        )
    for ev in result.get_asset_check_evaluations():
        summary.checks.append(
            CheckOutcome(
                asset=ev.asset_key.to_user_string(),
                check=ev.check_name,
                passed=ev.passed,
                severity=ev.severity.value,
                detail="; ".join(
                    f"{k}: {_metadata_value(v)}" for k, v in ev.metadata.items() if not ev.passed
                ),
            )
        )
    for event in result.all_events:
        if event.is_step_failure:
            err = event.event_specific_data.error
            summary.failures.append(f"{event.step_key}: {err.message.strip() if err else 'failed'}")
    _save_last_run(config, summary)
    return summary


LAST_RUN_FILE = "last_run.json"


def _save_last_run(config: Config, summary: RunSummary) -> None:
    """Keep the latest `cdp run` summary beside Dagster's history, for `cdp status`."""
    import json
    from datetime import datetime, timezone

    record = {**summary.to_dict(), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (config.dagster_home / LAST_RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
