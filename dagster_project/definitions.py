"""Dagster entry point (workspace.yaml loads this module). Wiring only: each stage's
assets live in ``dagster_project/defs/<stage>.py`` and its logic in its own package.

``build_definitions(config_path)`` is the one place the code location is assembled; ``defs`` is
the code location Dagster loads, for the project named by $CDP_CONFIG (as `make dev` sets it).
`cdp run` builds its own per call, so one process can run several projects.
"""

import os

from dagster import Definitions, in_process_executor

from core.config import CONFIG_ENV
from core.pii import install_log_masking
from dagster_project.defs.activation import sync_defs
from dagster_project.defs.automation import daily_refresh, ingest_job, landing_files_sensor, refresh_job
from dagster_project.defs.dbt_marts import DBT_ASSETS, DBT_PROJECT, DBT_RESOURCES
from dagster_project.defs.experiments import EXPERIMENT_ASSETS
from dagster_project.defs.identity import IDENTITY_ASSETS
from dagster_project.defs.ingestion import RAW_ASSETS
from dagster_project.defs.privacy import PRIVACY_ASSETS
from dagster_project.defs.quality import build_quality_defs, build_source_checks
from dagster_project.defs.resources import TesseraResource, tessera_from_env
from dagster_project.defs.scoring import SCORING_ASSETS
from dagster_project.defs.segments import SEGMENT_ASSETS

# Every log record of this code location is masked for emails and phone numbers at creation,
# before Dagster's handlers copy it into the event log (see core/pii.py).
install_log_masking()

PIPELINE_ASSETS = [*RAW_ASSETS, *PRIVACY_ASSETS, *IDENTITY_ASSETS, *DBT_ASSETS, *EXPERIMENT_ASSETS, *SCORING_ASSETS, *SEGMENT_ASSETS]
# The quality gate's checks and publish/snapshot, wired to the published marts defined above; the
# list of published marts is the dbt manifest's (models tagged `published`), prepared by dbt_marts.
PUBLISH_ASSETS, GATE_CHECKS = build_quality_defs({key for a in PIPELINE_ASSETS for key in a.keys},
                                                 DBT_PROJECT.manifest_path)
SOURCE_CHECKS = build_source_checks()


def build_definitions(config_path: str | os.PathLike | None = None) -> Definitions:
    """The definitions for one project: its TesseraResource and its configured syncs. Without a
    path, the code location's: syncs from $CDP_CONFIG as the module loads, and a resource that
    reads $CDP_CONFIG when a run starts (Dagster's EnvVar)."""
    if config_path is None:
        sync_assets, sync_schedules = sync_defs(os.environ.get(CONFIG_ENV))
        tessera = tessera_from_env()
    else:
        sync_assets, sync_schedules = sync_defs(config_path)
        tessera = TesseraResource(config_path=str(config_path))
    return Definitions(
        assets=[*PIPELINE_ASSETS, *PUBLISH_ASSETS, *sync_assets],
        asset_checks=[*GATE_CHECKS, SOURCE_CHECKS],
        jobs=[ingest_job, refresh_job],
        schedules=[daily_refresh, *sync_schedules],
        sensors=[landing_files_sensor],
        resources={"tessera": tessera, **DBT_RESOURCES},
        # Steps run one after another in the run's process: every stage writes the same
        # DuckDB file, which allows one writer at a time.
        executor=in_process_executor,
    )


defs = build_definitions()
