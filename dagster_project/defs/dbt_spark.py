"""engine: spark - the dbt assets' build through dbt-spark, in this process's SparkSession.

dbt-spark's ``session`` method runs dbt's SQL in the SparkSession of the process that invokes
dbt (pyspark's ``getOrCreate``), so the build is invoked in-process (``dbtRunner``), not as the
subprocess ``DbtCliResource`` starts: a subprocess would start a second JVM with an empty
catalog, without the raw and Python-stage tables this process declared. The assets, selections
and checks are the DuckDB build's; each model built yields its materialization, and each model's
tests their one `dbt_tests` check, from dbt's run_results.json as for the subprocess.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Generator, Mapping

from dagster import MaterializeResult

from core.dbt_project import dbt_project_dir

log = logging.getLogger("tessera.dbt")
SPARK_TARGET = "spark"


def build_on_spark(context, spark, args: list[str], run_target: Path, manifest: Mapping[str, Any], translator,
                   as_of: str) -> Generator[MaterializeResult, None, tuple[bool, BaseException | None]]:
    """``dbt build`` (``args``: the DuckDB build's) of the context's selected models on Spark:
    yields each model built; returns (success, dbt's exception). The caller reads the tests'
    results and any failure's reason from run_results.json, as for the DuckDB build."""
    from dbt.cli.main import dbtRunner

    selected = context.selected_asset_keys
    key_of = {uid: translator.get_asset_key(node) for uid, node in manifest["nodes"].items()
              if node["resource_type"] in ("model", "seed", "snapshot")}
    key_of = {uid: key for uid, key in key_of.items() if key in selected}
    if not key_of:
        return True, None
    names = sorted(manifest["nodes"][uid]["name"] for uid in key_of)
    project = str(dbt_project_dir())
    _drop_orphaned_folders(spark, [manifest["nodes"][uid] for uid in key_of])
    res = dbtRunner().invoke([*args, "--select", *names, "--project-dir", project, "--profiles-dir", project,
                              "--target", SPARK_TARGET, "--target-path", str(run_target)])
    for r in getattr(res.result, "results", None) or []:
        if r.node.unique_id in key_of and str(r.status).split(".")[-1].lower() == "success":
            log.info("dbt: OK created %s on Spark", r.node.name)
            yield MaterializeResult(asset_key=key_of[r.node.unique_id], metadata={"as_of": as_of, "engine": "spark"})
    return res.success, res.exception


def _drop_orphaned_folders(spark, nodes: list[Mapping[str, Any]]) -> None:
    """A table dbt built in an earlier process is a managed table of that process's catalog:
    without a metastore (a local master), this session does not know it, and Spark refuses to
    create it again over its folder (LOCATION_ALREADY_EXISTS). Those folders hold only what
    this build writes again, so they go first. (A cluster's metastore keeps the tables: nothing
    to do there.)"""
    import shutil

    from core.spark import is_local, local_path

    root = spark.conf.get("spark.sql.warehouse.dir")
    if not is_local(root):
        return
    for node in nodes:
        if node["config"].get("materialized") not in ("table", "incremental"):
            continue
        schema, alias = node["schema"], node.get("alias") or node["name"]
        folder = local_path(root) / f"{schema}.db" / alias
        if folder.is_dir() and not spark.catalog.tableExists(f"{schema}.{alias}"):
            log.info("dbt: %s.%s: a folder left by an earlier process's build, rebuilt from scratch", schema, alias)
            shutil.rmtree(folder)
