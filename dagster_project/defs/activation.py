"""Activation assets: one asset per configured sync, ``activation/<name>``, downstream of the
published snapshot, and one schedule per sync that has a cron. The syncs only read the
published snapshot and write their own state file, so they take no warehouse lock."""


import logging
import os

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
)

from activation.sync import run_sync
from core.config import CONFIG_ENV, ConfigError, load_config
from core.settings.activation import SyncConfig
from dagster_project.defs.resources import TesseraResource

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
        metadata = {
            "snapshot": report.snapshot or "",
            **{f"planned_{k}": v for k, v in report.planned.items()},
            "sent": report.sent, "rejected": report.rejected, "failed": report.failed,
            "requests": report.requests, "seconds": report.seconds,
            "not_sent": MetadataValue.json(report.skipped),
        }
        if report.failed:
            raise Failure(
                f"sync {sync.name}: {report.failed} change(s) not acknowledged ({report.error}); they stay "
                "pending and the next run sends them", metadata=metadata)
        return MaterializeResult(metadata=metadata)

    return _sync


def build_sync_schedule(sync: SyncConfig) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=f"sync_{sync.name}",
        target=AssetSelection.assets(sync_key(sync.name)),
        cron_schedule=sync.schedule,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Runs the {sync.name} sync on its cron ({sync.schedule}, UTC).",
    )


def configured_syncs() -> list[SyncConfig]:
    """The enabled syncs of the config Dagster was started with ($CDP_CONFIG); none without one."""
    try:
        return [s for s in load_config(os.environ.get(CONFIG_ENV)).syncs if s.enabled]
    except ConfigError as e:
        log.warning("no sync assets: %s", str(e).splitlines()[0])
        return []


SYNCS = configured_syncs()
SYNC_ASSETS = [build_sync_asset(s) for s in SYNCS]
SYNC_SCHEDULES = [build_sync_schedule(s) for s in SYNCS if s.schedule]
