"""Dagster entry point (workspace.yaml loads this module). Wiring only: each stage's
assets live in ``dagster_project/defs/<stage>.py`` and its logic in its own package."""

from dagster import Definitions, in_process_executor

from core.pii import install_log_masking
from dagster_project.defs.activation import SYNC_ASSETS, SYNC_SCHEDULES
from dagster_project.defs.automation import daily_refresh, ingest_job, landing_files_sensor, refresh_job
from dagster_project.defs.dbt_marts import DBT_ASSETS, DBT_RESOURCES
from dagster_project.defs.experiments import EXPERIMENT_ASSETS
from dagster_project.defs.identity import IDENTITY_ASSETS
from dagster_project.defs.ingestion import RAW_ASSETS
from dagster_project.defs.privacy import PRIVACY_ASSETS
from dagster_project.defs.quality import build_quality_defs, build_source_checks
from dagster_project.defs.resources import tessera_from_env
from dagster_project.defs.scoring import SCORING_ASSETS
from dagster_project.defs.segments import SEGMENT_ASSETS

# Every log record of this code location is masked for emails and phone numbers at creation,
# before Dagster's handlers copy it into the event log (see privacy/masking.py).
install_log_masking()

PIPELINE_ASSETS = [*RAW_ASSETS, *PRIVACY_ASSETS, *IDENTITY_ASSETS, *DBT_ASSETS, *EXPERIMENT_ASSETS, *SCORING_ASSETS, *SEGMENT_ASSETS]
# The quality gate's checks and publish/snapshot, wired to the published marts defined above.
PUBLISH_ASSETS, GATE_CHECKS = build_quality_defs({key for a in PIPELINE_ASSETS for key in a.keys})

defs = Definitions(
    assets=[*PIPELINE_ASSETS, *PUBLISH_ASSETS, *SYNC_ASSETS],
    asset_checks=[*GATE_CHECKS, build_source_checks()],
    jobs=[ingest_job, refresh_job],
    schedules=[daily_refresh, *SYNC_SCHEDULES],
    sensors=[landing_files_sensor],
    resources={"tessera": tessera_from_env(), **DBT_RESOURCES},
    # Steps run one after another in the run's process: every stage writes the same
    # DuckDB file, which allows one writer at a time.
    executor=in_process_executor,
)
