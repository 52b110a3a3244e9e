"""``cdp run``: the Dagster asset graph, executed in this process, with a readable summary.

The same assets, checks and run history as in the Dagster UI (runs are recorded in the
config's ``paths.dagster_home``), without a web server. The project reaches the assets through
the definitions' TesseraResource and the Dagster instance is opened from its folder: nothing is
set in the process environment, so calls for different projects can follow each other (or
interleave) in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path

from cdp import unchanged
from core.config import Config, find_config_path, load_config
from core.pii import mask_obj, mask_pii
from dagster_project.run_guard import project_run
from expectations.gate import latest_gate

# `cdp run --only STAGE` → the Dagster asset groups it runs. Later stages add theirs.
STAGES: dict[str, list[str]] = {
    "ingestion": ["ingestion"],
    "privacy": ["privacy"],  # erasure requests (cdp forget), between ingestion and identity
    "identity": ["identity"],
    # dbt (dagster_project/defs/dbt_marts.py): one group per dbt layer, and the stages the marts
    # tagged after_scoring read: scoring (defs/scoring.py) and declarative segments (defs/segments.py).
    "marts": ["staging", "intermediate", "experiments", "scoring", "segments", "marts"],
    "scoring": ["scoring"],
    # Experiment assignment and results (defs/experiments.py), between the core marts and scoring.
    "experiments": ["experiments"],
    # Declarative segments: the segments file evaluated against the current marts.
    "segments": ["segments"],
    # The quality gate's checks on the built marts, then publish/snapshot (defs/quality.py).
    "publish": ["publish"],
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
    gate: dict | None = None  # the quality gate's outcome in this run (expectations/gate.py)
    as_of: str | None = None  # the run's one as_of, naive UTC "YYYY-MM-DD HH:MM:SS" (every step's)
    # Set when nothing changed since a previous run (cdp/unchanged.py): that run's id, as_of, finish.
    unchanged_since: dict | None = None
    changed: list[str] | None = None  # what changed since the last complete run (a whole run)

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        """The run succeeded and no ERROR-severity check failed."""
        return self.success and not any(c.severity == "ERROR" for c in self.failed_checks)

    def to_dict(self) -> dict:
        out = {
            "run_id": self.run_id,
            "ok": self.ok,
            "success": self.success,
            "failures": self.failures,
            "materialized": [{"asset": a.asset, "metadata": a.metadata} for a in self.materialized],
            "checks": [c.__dict__ for c in self.checks],
            "gate": self.gate,
            "as_of": self.as_of,
            "unchanged_since": self.unchanged_since,
            "changed": self.changed,
        }
        # `cdp run --json` and last_run.json: metadata and messages may quote data
        return mask_obj(out)


def quiet_tools() -> None:
    """No telemetry from the tools a run loads (process-wide and the same for every project, so
    set once and never restored; an explicit setting in the environment wins)."""
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _metadata_value(v):
    value = getattr(v, "value", v)
    if isinstance(value, (int, float, str, bool, dict, list)) or value is None:
        return value
    return str(value)


def run_pipeline(config_path: str | os.PathLike | None = None, only: list[str] | None = None,
                 accept_drift: bool = False, keep_going: bool = False, as_of: date | datetime | None = None,
                 force: bool = False) -> RunSummary:
    """Run the pipeline, or the stages in `only`. `as_of`: the run's reference time (a date: the
    end of that day, UTC), else cdp.yaml's, else now; fixed here, once, for every step. `force`:
    run everything even when nothing changed since the last complete run (cdp/unchanged.py)."""
    unknown = [s for s in (only or []) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    cfg_path = find_config_path(config_path).resolve()
    config = load_config(cfg_path)
    quiet_tools()
    return _execute(config, cfg_path, only, accept_drift, keep_going, resolve_as_of(config, as_of), force,
                    as_of_given=as_of is not None or config.as_of is not None)


def resolve_as_of(config: Config, given: date | datetime | None = None) -> datetime:
    """The run's one as_of, naive UTC to the second: `given` (a date means the end of that day),
    else cdp.yaml's `as_of` (the end of that day), else now."""
    if isinstance(given, datetime):
        value = given.astimezone(timezone.utc) if given.tzinfo else given.replace(tzinfo=timezone.utc)
    elif isinstance(given, date):
        value = datetime.combine(given, time(23, 59, 59), tzinfo=timezone.utc)
    else:
        value = config.as_of_datetime()
    return value.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)


def _execute(config: Config, cfg_path: Path, only: list[str] | None, accept_drift: bool = False,
             keep_going: bool = False, as_of: datetime | None = None, force: bool = False,
             as_of_given: bool = False) -> RunSummary:
    as_of = as_of or resolve_as_of(config)
    # One run at a time, and nothing a killed run left behind blocks this one (run_guard.py);
    # taken before the definitions load, so a second `cdp run` is turned away at once.
    with project_run(config, trigger="cdp run") as claim:
        return _execute_claimed(config, cfg_path, only, accept_drift, claim, keep_going, as_of, force, as_of_given)


# A whole run is two Dagster runs: landing (ingestion, then the erasure requests), then, unless
# nothing changed since the last complete run, everything else.
LANDING_GROUPS = ("ingestion", "privacy")


def _execute_claimed(config: Config, cfg_path: Path, only: list[str] | None, accept_drift: bool,
                     claim, keep_going: bool = False, as_of: datetime | None = None,
                     force: bool = False, as_of_given: bool = False) -> RunSummary:

    from dagster import AssetSelection
    from dagster._core.utils import make_new_run_id

    # lazy: the definitions load (dbt manifest, every stage) only once the run lock is held
    from dagster_project.definitions import GATE_CHECKS, build_definitions
    from dagster_project.defs.ingestion import KEEP_GOING_TAG
    from dagster_project.defs.quality import ACCEPT_DRIFT_TAG
    from dagster_project.defs.resources import AS_OF_FORMAT, AS_OF_TAG, project_instance

    as_of = as_of or resolve_as_of(config)
    defs = build_definitions(cfg_path)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()

    def subset(selection):
        return job.get_subset(asset_selection=set(selection.resolve(graph)),
                              asset_check_selection=set(selection.resolve_checks(graph)))

    tags = {"tessera/trigger": "cli", "tessera/stages": ",".join(only or ["all"]), **claim.tags,
            AS_OF_TAG: as_of.strftime(AS_OF_FORMAT)}
    if accept_drift:
        tags[ACCEPT_DRIFT_TAG] = "true"
    if keep_going:
        tags[KEEP_GOING_TAG] = "true"

    def execute(part, run_id: str, phase: str):
        with project_instance(config) as instance:
            return part.execute_in_process(
                instance=instance,
                run_id=run_id,
                raise_on_error=False,
                tags={**tags, "tessera/phase": phase},
                # Dagster's own console lines only for warnings and errors; the stages'
                # progress comes through the `tessera` Python logger (see cli.py).
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )

    if only:
        unchanged.forget(config)  # a partial run: the next whole run compares with nothing
        selection = AssetSelection.groups(*[g for s in only for g in STAGES[s]])
        if "publish" in only:
            # Publishing the current build re-runs the gate's checks on the marts, not the build.
            selection = selection | AssetSelection.checks(*GATE_CHECKS)
        results = [execute(subset(selection), claim.run_id, "stages")]
    else:
        landing = AssetSelection.groups(*LANDING_GROUPS)
        results = [execute(subset(landing), claim.run_id, "landing")]
        if results[0].success:
            fingerprint = unchanged.fingerprint(config, as_of, as_of_given)
            previous, changed = unchanged.compare(config, fingerprint)
            if previous is not None and not changed and not force:
                summary = _summarise(results, config)
                summary.as_of = previous.get("as_of")
                summary.unchanged_since = previous
                _save_last_run(config, summary)
                return summary
            unchanged.forget(config)
            rest = AssetSelection.all() - landing
            results.append(execute(subset(rest), make_new_run_id(), "build"))
            summary = _summarise(results, config)
            summary.as_of = as_of.strftime(AS_OF_FORMAT)
            summary.changed = ["forced"] if force and not changed else changed
            if summary.ok:
                unchanged.remember(config, fingerprint, summary.run_id, summary.as_of)
            _save_last_run(config, summary)
            return summary
    summary = _summarise(results, config)
    summary.as_of = as_of.strftime(AS_OF_FORMAT)
    _save_last_run(config, summary)
    return summary


def _summarise(results: list, config: Config) -> RunSummary:
    """One summary of the run's Dagster runs (its id: the last one's)."""
    summary = RunSummary(run_id=results[-1].run_id, success=all(r.success for r in results))
    for result in results:
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            summary.materialized.append(AssetOutcome(
                mat.asset_key.to_user_string(), {k: _metadata_value(v) for k, v in mat.metadata.items()}))
        for ev in result.get_asset_check_evaluations():
            summary.checks.append(
                CheckOutcome(
                    asset=ev.asset_key.to_user_string(),
                    check=ev.check_name,
                    passed=ev.passed,
                    severity=ev.severity.value,
                    detail=mask_pii("; ".join(
                        f"{k}: {_metadata_value(v)}" for k, v in ev.metadata.items() if not ev.passed
                    )),
                )
            )
        for event in result.all_events:
            if event.is_step_failure:
                err = event.event_specific_data.error
                summary.failures.append(mask_pii(f"{event.step_key}: {err.message.strip() if err else 'failed'}"))
    gate = latest_gate(config.reports_dir)
    if gate and gate.get("dagster_run_id") == summary.run_id:
        summary.gate = gate
    return summary


LAST_RUN_FILE = "last_run.json"


def _save_last_run(config: Config, summary: RunSummary) -> None:
    """Keep the latest `cdp run` summary beside Dagster's history, for `cdp status`."""
    import json

    record = {**summary.to_dict(), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (config.dagster_home / LAST_RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
