"""Privacy asset: apply pending erasure requests (`cdp forget`) after ingestion, before identity."""


import logging

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, asset

from dagster_project.defs.ingestion import RAW_ASSET_KEYS, WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource
from privacy.erasure import process_requests
from privacy.requests import pending_requests, reports_dir

PRIVACY_GROUP = "privacy"
ERASURE_KEY = AssetKey(["privacy", "erasure"])
log = logging.getLogger("tessera.privacy")


@asset(
    key=ERASURE_KEY,
    group_name=PRIVACY_GROUP,
    deps=RAW_ASSET_KEYS,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "python"},  # (engine: spark: also the Spark warehouse's Parquet tables)
    description="Applies pending erasure requests (`cdp forget`): removes every row about the person from raw.*, "
                "identity, marts, the kept published snapshots and the sync destinations, and keeps salted hashes "
                "of their identifiers (privacy.erased_identifiers) so that the loader drops them if they are landed "
                "again. One JSON report per request, without PII, in the privacy folder's reports/.",
)
def privacy_erasure(context: AssetExecutionContext, tessera: TesseraResource) -> MaterializeResult:
    config = tessera.load()
    if not pending_requests(config):
        return MaterializeResult(metadata={"requests_applied": 0})
    if config.engine == "spark":
        # on the driver's working copy, then the Spark warehouse brought to the same state
        # (privacy/spark_erasure.py) before each request is marked done
        from privacy.spark_erasure import check_supported, erase_in_spark

        check_supported(config)
        with tessera.spark() as spark, tessera.warehouse(spark_writes=()) as con:
            reports = process_requests(config, con, progress=log.info,
                                       other_store=lambda c, removed: erase_in_spark(spark, config, c, removed))
    else:
        with tessera.warehouse() as con:
            reports = process_requests(config, con, progress=log.info)
    return MaterializeResult(metadata={
        "requests_applied": len(reports),
        "persons_erased": sum(len(r["persons"]) for r in reports),
        "not_found": sum(r["status"] == "not_found" for r in reports),
        "warehouse_rows_removed": sum(sum(r["rows_removed"].values()) for r in reports),
        "snapshot_rows_removed": sum(sum(sum(t.values()) for t in r["snapshots_rewritten"].values()) for r in reports),
        "reports": str(reports_dir(config)),
    })


PRIVACY_ASSETS = [privacy_erasure]
