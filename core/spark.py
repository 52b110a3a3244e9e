"""The Spark engine (``engine: spark``): the session, and where the warehouse's tables live.

A table is a folder of Parquet files, ``<spark.warehouse>/<schema>/<table>``; a raw table has
one subfolder per landed file (its load id). Each is declared in the session's catalog as an
external Parquet table over its folder (``CREATE TABLE IF NOT EXISTS ... LOCATION``, done by
the stage that writes it), so any process that declares them - a Dagster step, dbt's session,
a notebook - reads the same tables without a shared metastore. A cluster with a Hive
metastore or Unity Catalog gets it through ``spark.conf``; the declarations then persist there.

Why Parquet folders and not Delta or Iceberg: both need jars that pyspark does not ship
(fetched from Maven at session start), so a Spark of any origin reads these, and DuckDB and
BI tools read them too. What Delta's log would give - an atomic commit of a file's rows - the
loader gets from its manifest: a load is committed when its ``raw.loads`` row is written, and
the next ingest drops the partitions of loads that never got one (ingestion/spark_loader.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # pyspark is imported only when engine: spark is used
    from pyspark.sql import SparkSession

    from core.config import Config

class SparkUnavailable(RuntimeError):
    """engine: spark, but pyspark or Java is missing."""


def spark_session(config: "Config") -> "SparkSession":
    """The project's SparkSession (created once per process, then reused)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable(
            "engine: spark needs pyspark: pip install 'tessera-cdp[spark]' (and Java 17 for a local master)"
        ) from None
    s = config.spark
    builder = SparkSession.builder.appName(f"tessera-{config.project}")
    if s.connect:
        builder = builder.remote(s.connect)
    else:
        builder = builder.master(s.master).config("spark.sql.warehouse.dir", config.spark_warehouse)
        builder = (builder.config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   # Splink's similarity functions (jaro_winkler...): the jar ships in Splink's wheel
                   .config("spark.jars", _splink_jar()))
        if s.master.startswith("local"):
            # (200 shuffle partitions is for a cluster); Python workers: this interpreter
            builder = builder.config("spark.sql.shuffle.partitions", "4")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # (read when the SparkContext starts)
    # Every timestamp is UTC, as in the DuckDB warehouse, whatever the machine's zone.
    builder = (builder.config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               # Parquet timestamps as UTC instants (not Spark's legacy INT96): DuckDB and BI tools
               # read them as timestamps with a zone, as the DuckDB warehouse has them
               .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS"))
    for key, value in s.conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # Java missing or the master unreachable: say so, not a JVM trace
        raise SparkUnavailable(f"cannot start Spark ({_first_line(e)}); engine: spark needs Java 17 "
                               "for a local master, or a reachable spark.master / spark.connect") from None
    if not s.connect:  # (Spark Connect has no SparkContext)
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def _splink_jar() -> str:
    from splink.backends.spark import similarity_jar_location

    return str(similarity_jar_location())


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def is_local(uri: str) -> bool:
    """A file: URI or a plain path (not an object store's or HDFS's URI)."""
    return uri.startswith("file:") or "://" not in uri


def local_path(uri: str) -> Path:
    """A file: URI (or a plain path) as a local path."""
    return Path(urlparse(uri).path) if uri.startswith("file:") else Path(uri)


def local_dir(uri: str) -> Path | None:
    """The local path of a local or mounted location; None for an object store's or HDFS's."""
    return local_path(uri) if is_local(uri) else None


def table_location(config: "Config", schema: str, table: str) -> str:
    """The folder (URI) of one table's Parquet files."""
    return f"{config.spark_warehouse.rstrip('/')}/{schema}/{table}"


def qualified(config: "Config", schema: str, table: str) -> str:
    return f"{config.spark.catalog}.{schema}.{table}"
