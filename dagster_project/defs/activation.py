"""Activation assets: one asset per configured sync, ``activation/<name>``, downstream of the
published snapshot, and one schedule per sync that has a cron. The syncs only read the
published snapshot and write their own state file, so they take no warehouse lock."""


import logging
import os

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
)

from activation.sync import SyncReport, run_sync
from core.config import Config, ConfigError, load_config
from core.settings.activation import SyncConfig
from dagster_project.defs.resources import TesseraResource, project_instance

ACTIVATION_GROUP = "activation"
PUBLISH_KEY = AssetKey(["publish", "snapshot"])
log = logging.getLogger("tessera.activation")


def sync_key(name: str) -> AssetKey:
    return AssetKey(["activation", name])


def build_sync_asset(sync: SyncConfig):
    @asset(
        key=sync_key(sync.name),
        deps=[PUBLISH_KEY],
        group_name=ACTIVATION_GROUP,
        kinds={"python", sync.destination.type},
        description=f"Reverse-ETL sync {sync.name}: {sync.source.describe()} -> {sync.destination.type} "
                    f"({sync.mode}; consent: {sync.consent.channel if sync.consent else 'not required'}). "
                    "Sends only the changes since the last delivery.",
    )
    def _sync(context: AssetExecutionContext, tessera: TesseraResource) -> MaterializeResult:
        report = run_sync(tessera.load(), sync.name, progress=context.log.info)
        metadata = sync_metadata(report)
        if report.failed:
            raise Failure(
                f"sync {sync.name}: {report.failed} change(s) not acknowledged ({report.error}); they stay "
                "pending and the next run sends them", metadata=metadata)
        return MaterializeResult(metadata=metadata)

    return _sync


def sync_metadata(report: SyncReport) -> dict:
    return {
        "snapshot": report.snapshot or "",
        **{f"planned_{k}": v for k, v in report.planned.items()},
        "sent": report.sent, "rejected": report.rejected, "failed": report.failed,
        "requests": report.requests, "seconds": report.seconds,
        "not_sent": MetadataValue.json(report.skipped),
    }


def record_cli_syncs(config: Config, reports: list[SyncReport]) -> None:
    """Record `cdp sync` deliveries in the project's Dagster instance, as the asset would (a
    materialization for a delivery that completed, nothing for a dry run or a failed one), so
    the UI shows when each sync last ran whether it ran in Dagster or from the command line."""
    done = [r for r in reports if not r.dry_run and r.ok]
    if not done:
        return
    with project_instance(config) as instance:
        for report in done:
            instance.report_runless_asset_event(AssetMaterialization(
                asset_key=sync_key(report.sync),
                description=f"cdp sync {report.sync} (run {report.run_id}), outside Dagster",
                metadata={**sync_metadata(report), "trigger": "cli"},
            ))


def build_sync_schedule(sync: SyncConfig) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=f"sync_{sync.name}",
        target=AssetSelection.assets(sync_key(sync.name)),
        cron_schedule=sync.schedule,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Runs the {sync.name} sync on its cron ({sync.schedule}, UTC).",
    )


def configured_syncs(config_path: str | os.PathLike | None) -> list[SyncConfig]:
    """The enabled syncs of a config; none without one."""
    if not config_path:
        return []
    try:
        return [s for s in load_config(config_path).syncs if s.enabled]
    except ConfigError as e:
        log.warning("no sync assets: %s", str(e).splitlines()[0])
        return []


def sync_defs(config_path: str | os.PathLike | None) -> tuple[list, list[ScheduleDefinition]]:
    """The sync assets and schedules of a config (the code location's: $CDP_CONFIG)."""
    syncs = configured_syncs(config_path)
    return [build_sync_asset(s) for s in syncs], [build_sync_schedule(s) for s in syncs if s.schedule]
