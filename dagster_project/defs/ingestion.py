"""Ingestion assets: one per raw table, each loading every configured source of its kind."""


import logging

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    multi_asset,
)

from core.contracts import DUCKDB_TYPES, ENTITIES, Entity
from core.pii import mask_pii
from core.spark import qualified
from dagster_project.defs.resources import TesseraResource
from ingestion import spark_loader
from ingestion.loader import CHANGED, LINEAGE_COLUMNS, REJECTED, ingest

INGESTION_GROUP = "ingestion"
# Run tag (`cdp run --keep-going`): go on past a file rejected whole. Without it the step fails
# with the rejection, so identity and the marts never run on tables missing that file.
KEEP_GOING_TAG = "tessera/keep_going"
# Every asset that writes the warehouse shares this pool; the instance limits it to one
# step at a time because DuckDB allows a single writing process per file.
WAREHOUSE_POOL = "tessera_warehouse"
log = logging.getLogger("tessera.ingestion")


def raw_asset_key(ent: Entity) -> AssetKey:
    return AssetKey(["raw", ent.table])


def _raw_asset(ent: Entity):
    key = raw_asset_key(ent)

    @multi_asset(
        name=f"raw_{ent.table}",
        specs=[
            AssetSpec(
                key,
                group_name=INGESTION_GROUP,
                description=(
                    f"Landed {ent.kind} {ent.name.replace('_', ' ')} (contract `{ent.kind}.{ent.name}`), "
                    f"as landed plus lineage columns. {ent.description}"
                ),
                kinds={"duckdb", "python"},
                metadata={
                    "contract_fields": MetadataValue.md(_fields_md(ent)),
                    # Dagster's standard table metadata keys: the UI's column and row-count views.
                    "dagster/column_schema": raw_table_schema(ent),
                    "dagster/table_name": f"raw.{ent.table}",
                },
            )
        ],
        check_specs=[
            AssetCheckSpec(
                "files_accepted",
                asset=key,
                description="No landed file was rejected whole or changed under a name already loaded.",
            ),
            AssetCheckSpec(
                "quarantine_rate_below_1pct",
                asset=key,
                description="Of the rows landed in this run, under 1% went to raw.quarantine.",
            ),
        ],
        pool=WAREHOUSE_POOL,
    )
    def _asset(context: AssetExecutionContext, tessera: TesseraResource):
        config = tessera.load()
        if config.engine == "spark":
            report, total_rows, by_reason = _ingest_on_spark(tessera, config, ent)
        else:
            with tessera.warehouse() as con:
                report = ingest(config, con, tables=[ent.table], progress=log.info)
                total_rows = con.execute(f"SELECT count(*) FROM raw.{ent.table}").fetchall()[0][0]
                load_ids = [f.load_id for f in report.files if f.load_id]
                by_reason = dict(
                    con.execute(
                        "SELECT reason || coalesce(' (' || nullif(field, '') || ')', ''), count(*) FROM raw.quarantine "
                        "WHERE _load_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1 ORDER BY 2 DESC",
                        [load_ids],
                    ).fetchall()
                )
        bad_files = [f for f in report.files if f.status in (REJECTED, CHANGED)]
        if bad_files and context.run.tags.get(KEEP_GOING_TAG, "").lower() != "true":
            raise Failure(
                description="ingestion rejected "
                + "; ".join(f"{f.file} ({f.source}): {f.status} — {mask_pii(f.message)}" for f in bad_files)
                + ". The run stops before identity; fix the file or the config and run again, or pass "
                  "--keep-going to build on the rest.",
            )
        loaded, quarantined = report.rows_loaded(), report.rows_quarantined()
        landed = loaded + quarantined
        yield MaterializeResult(
            asset_key=key,
            metadata={
                "dagster/row_count": total_rows,
                "rows_total": total_rows,
                "rows_loaded_this_run": loaded,
                "rows_quarantined_this_run": quarantined,
                "files_loaded": sum(f.status == "loaded" for f in report.files),
                "files_rejected": len(bad_files),
                "quarantine_by_reason": by_reason,
            },
        )
        yield AssetCheckResult(
            asset_key=key,
            check_name="files_accepted",
            passed=not bad_files,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "problems": MetadataValue.md(
                    "\n".join(f"- `{f.file}` ({f.source}): **{f.status}** — {mask_pii(f.message)}" for f in bad_files)
                    or "none"
                )
            },
        )
        rate = quarantined / landed if landed else 0.0
        yield AssetCheckResult(
            asset_key=key,
            check_name="quarantine_rate_below_1pct",
            passed=rate < 0.01,
            severity=AssetCheckSeverity.WARN,
            metadata={"quarantine_rate": rate, "rows_landed": landed},
        )

    return _asset


def _ingest_on_spark(tessera: TesseraResource, config, ent: Entity):
    """engine: spark - the same load, report and metadata, through the project's SparkSession."""
    with tessera.spark() as spark:
        report = spark_loader.ingest(config, spark, tables=[ent.table], progress=log.info)
        total_rows = spark.table(qualified(config, "raw", ent.table)).count()
        load_ids = [f.load_id for f in report.files if f.load_id]
        by_reason = {} if not load_ids else {r[0]: r[1] for r in spark.sql(
            "SELECT concat(reason, coalesce(concat(' (', nullif(field, ''), ')'), '')) AS k, count(*) AS n "
            f"FROM {qualified(config, 'raw', 'quarantine')} WHERE array_contains(:ids, _load_id) "
            "GROUP BY 1 ORDER BY 2 DESC", args={"ids": load_ids}).collect()}
    return report, total_rows, by_reason


def raw_table_schema(ent: Entity) -> TableSchema:
    """raw.<table>'s columns as ingestion creates them: the contract's fields, then lineage."""
    fields = [
        TableColumn(f.name, DUCKDB_TYPES[f.type], description=f.description or None,
                    constraints=TableColumnConstraints(nullable=not f.required))
        for f in ent.fields
    ]
    lineage = [TableColumn(name, typ, description="lineage") for name, typ in LINEAGE_COLUMNS]
    return TableSchema(columns=fields + lineage)


def _fields_md(ent: Entity) -> str:
    rows = [f"| `{f.name}` | {f.type} | {'yes' if f.required else ''} | {f.description} |" for f in ent.fields]
    return "| field | type | required | description |\n|---|---|---|---|\n" + "\n".join(rows)


RAW_ASSETS = [_raw_asset(ent) for ent in ENTITIES]
RAW_ASSET_KEYS = [raw_asset_key(ent) for ent in ENTITIES]
