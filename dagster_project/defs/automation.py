"""Jobs, the daily schedule and the sensor that notices newly landed files."""


import hashlib
import json

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from core.config import ConfigError
from core.contracts import entity
from dagster_project.defs.ingestion import INGESTION_GROUP
from dagster_project.defs.resources import TesseraResource
from dagster_project.run_guard import prepare_requested_run
from ingestion.loader import landed_files

ingest_job = define_asset_job(
    "ingest_landing_files",
    selection=AssetSelection.groups(INGESTION_GROUP),
    description="Load newly landed files into raw.* (what the landing-file sensor starts).",
)
refresh_job = define_asset_job(
    "full_refresh",
    selection=AssetSelection.all(),
    description="Every stage, landing files to published snapshot (what the daily schedule starts).",
)

@schedule(
    name="daily_refresh",
    job=refresh_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily full refresh at 03:00 UTC. Turn it on in the UI (Automation) or with `dagster schedule start`.",
)
def daily_refresh(context: ScheduleEvaluationContext, tessera: TesseraResource):
    # Not while another run holds the project; stale runs are cleared first, or their pool
    # slot would keep the requested run waiting forever (dagster_project/run_guard.py).
    try:
        busy = prepare_requested_run(tessera.load(), context.instance)
    except ConfigError as e:
        return SkipReason(f"config problem: {e}")
    return SkipReason(f"skipped: {busy}") if busy else RunRequest()


def landing_signature(tessera: TesseraResource) -> dict[str, str]:
    """Each landed file matching a configured glob -> a signature of its size and mtime."""
    config = tessera.load()
    found: dict[str, str] = {}
    for source in config.enabled_sources():
        for entity_name in source.entities:
            table = entity(source.kind, entity_name).table
            for path, rel in landed_files(config, source, entity_name):
                st = path.stat()
                found[f"{source.name}|{table}|{rel}"] = f"{st.st_size}:{st.st_mtime_ns}"
    return found


@sensor(
    name="landing_files_sensor",
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Starts ingestion of the raw tables whose landing folders have new or changed files.",
)
def landing_files_sensor(context: SensorEvaluationContext, tessera: TesseraResource):
    try:
        current = landing_signature(tessera)
    except ConfigError as e:
        return SkipReason(f"config problem: {e}")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    changed = sorted(k for k, sig in current.items() if seen.get(k) != sig)
    if not changed:
        return SkipReason(f"no new landing files ({len(current)} known)")
    # The files stay unseen (cursor untouched) while another run holds the project, so a later
    # tick requests them; stale runs are cleared first (dagster_project/run_guard.py).
    busy = prepare_requested_run(tessera.load(), context.instance)
    if busy:
        return SkipReason(f"{len(changed)} new landing file(s) wait: {busy}")
    tables = sorted({k.split("|")[1] for k in changed})
    context.update_cursor(json.dumps(current, sort_keys=True))
    run_key = hashlib.sha256("\n".join(f"{k}={current[k]}" for k in changed).encode()).hexdigest()[:16]
    return RunRequest(
        run_key=run_key,
        asset_selection=[AssetKey(["raw", t]) for t in tables],
        tags={"tessera/trigger": "landing_files", "tessera/new_files": str(len(changed))},
    )
