"""engine: spark - the seam between the Spark warehouse and the stages that run on one machine.

Where the line is. Ingestion, Splink's pair scoring and the dbt build run on Spark. The stages
that are Python over a DuckDB connection - identity's constrained merge, stable ids and golden
records, experiments, scoring, segments, the quality gate, publish - run on the driver, in a
DuckDB *working copy* (the project's ``paths.warehouse`` file, which on ``engine: spark`` holds
no table of record for raw data or marts):

- before such a step, the Spark tables it may read (raw, and every schema dbt builds) are
  copied into the working copy: a table whose Parquet files did not change since the last copy
  is not copied again; dbt's views (staging) are copied when anything under them changed;
- after it, the schemas the step writes (``identity``, ``scoring``, ``segments``,
  ``experiments``) are written back as Parquet table folders of the Spark warehouse and
  declared in the session's catalog, where the next dbt build reads them.

The working copy is authoritative for those Python-stage schemas (they are never copied back
in), Spark for everything else. The scale limit: a copied table passes through the driver in
slices of its Parquet files (``CHUNK_BYTES`` at a time, as Arrow) and is then held by DuckDB on
the driver's disk, so these stages run while the
marts and identity records fit one machine's disk (DuckDB spills; memory is not the limit),
which is the size DuckDB alone handles. Past that, scoring needs Spark ML, which Tessera does
not have yet (README "Running on Spark").
"""

from __future__ import annotations

import hashlib
import shutil
from typing import TYPE_CHECKING, Iterable

from core.spark import is_local, local_path, qualified, table_location

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import SparkSession

    from core.config import Config

# The schemas a Python stage writes on the driver and exports to Spark (never imported back).
PYTHON_SCHEMAS = ("identity", "scoring", "segments", "experiments", "quality", "privacy")
# What the working copy remembers of each imported table: its files' signature.
IMPORTS = "main._spark_imports"
# A table comes to the driver this many bytes of its Parquet files at a time. Whole, a table
# is one Spark job whose results the driver holds at once: at 100k customers raw.web_events
# alone passed spark.driver.maxResultSize (1 GiB of Arrow from ~0.3 GB of Parquet).
CHUNK_BYTES = 64 << 20


def _signature(spark: "SparkSession", name: str) -> str | None:
    """The table's Parquet files (path, size, mtime) as one digest; None for a view, or files
    not on a local path (then the table is always copied)."""
    try:
        files = sorted(spark.table(name).inputFiles())
    except Exception:
        return None
    parts = []
    for uri in files:
        if not is_local(uri):
            return None
        p = local_path(uri)
        try:
            st = p.stat()
        except OSError:
            return None
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def spark_tables(spark: "SparkSession", config: "Config") -> list[tuple[str, str, bool]]:
    """(schema, table, is_view) of the catalog's tables Spark owns: raw and dbt's schemas."""
    out = []
    for db in spark.catalog.listDatabases():
        if db.name in PYTHON_SCHEMAS or db.name == "default":
            continue
        for t in spark.catalog.listTables(f"{config.spark.catalog}.{db.name}"):
            if not t.isTemporary:
                out.append((db.name, t.name, (t.tableType or "").upper() == "VIEW"))
    return sorted(out)


def import_from_spark(spark: "SparkSession", con: "duckdb.DuckDBPyConnection", config: "Config",
                      progress=None) -> list[str]:
    """Copy Spark's tables into the DuckDB working copy (those that changed); the names copied."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {IMPORTS} (name VARCHAR PRIMARY KEY, signature VARCHAR)")
    known = dict(con.execute(f"SELECT name, signature FROM {IMPORTS}").fetchall())
    copied = []
    tables = spark_tables(spark, config)
    sigs = {f"{s}.{t}": (None if view else _signature(spark, qualified(config, s, t))) for s, t, view in tables}
    # a view is copied again when any table's files changed (it reads some of them), or never was
    generation = hashlib.sha256(repr(sorted((k, v) for k, v in sigs.items() if v)).encode()).hexdigest()
    generation += ":" + _python_generation(config)
    for schema, table, view in tables:
        name = f"{schema}.{table}"
        sig = f"view:{generation}" if view else sigs[name]
        if sig is not None and known.get(name) == sig:
            continue
        _copy_in(spark, con, qualified(config, schema, table), schema, table, naive=schema != "raw", view=view)
        con.execute(f"INSERT OR REPLACE INTO {IMPORTS} VALUES (?, ?)", [name, sig])
        copied.append(name)
    if progress and copied:
        progress(f"spark: copied {len(copied)} table(s) from Spark into the working copy")
    return copied


def _python_generation(config: "Config") -> str:
    """The exported Python-stage tables' files, which dbt's views may also read."""
    root = local_path(config.spark_warehouse)
    parts = []
    for schema in PYTHON_SCHEMAS:
        folder = root / schema
        if folder.is_dir():
            for p in sorted(folder.rglob("*.parquet")):
                st = p.stat()
                parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _file_slices(frame) -> list[list[str]] | None:
    """The table's Parquet files in slices of about CHUNK_BYTES (a file larger than that alone);
    None when a file is not on a local path (then the table comes whole). Not for a view: its
    input files are the tables it reads, with their own types."""
    try:
        files = sorted(frame.inputFiles())
    except Exception:
        return None
    slices, size = [], CHUNK_BYTES
    for uri in files:
        if not is_local(uri):
            return None
        try:
            n = local_path(uri).stat().st_size
        except OSError:
            return None
        if size + n > CHUNK_BYTES:
            slices.append([])
            size = 0
        slices[-1].append(uri)
        size += n
    return slices


def _copy_in(spark: "SparkSession", con: "duckdb.DuckDBPyConnection", source: str, schema: str, table: str,
             naive: bool, view: bool = False) -> None:
    """One Spark table into DuckDB, through Arrow, a slice of its files at a time (a view whole). ``naive``:
    Spark's timestamps (instants) as DuckDB's naive UTC TIMESTAMP, the type dbt-duckdb gives the
    marts (raw keeps TIMESTAMPTZ, as the DuckDB loader writes it)."""
    import pyarrow as pa

    frame = spark.table(source)
    slices = None if view else _file_slices(frame)
    # (each slice read with the table's own schema: the same columns and types as the table)
    parts = [frame] if not slices else [spark.read.schema(frame.schema).parquet(*files) for files in slices]
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    for i, part in enumerate(parts):
        arrow = part.toArrow()
        cols = []
        for f in arrow.schema:
            if naive and pa.types.is_timestamp(f.type) and f.type.tz is not None:
                cols.append(f'CAST("{f.name}" AS TIMESTAMP) AS "{f.name}"')
            else:
                cols.append(f'"{f.name}"')
        con.register("_spark_in", arrow)
        try:
            if i == 0:
                kind = con.execute("SELECT table_type FROM information_schema.tables "
                                   "WHERE table_schema = ? AND table_name = ?", [schema, table]).fetchall()
                if kind and kind[0][0] == "VIEW":
                    con.execute(f'DROP VIEW "{schema}"."{table}"')
                con.execute(f'CREATE OR REPLACE TABLE "{schema}"."{table}" AS '
                            f'SELECT {", ".join(cols) or "*"} FROM _spark_in')
            else:
                con.execute(f'INSERT INTO "{schema}"."{table}" SELECT {", ".join(cols) or "*"} FROM _spark_in')
        finally:
            con.unregister("_spark_in")
        del arrow


def export_to_spark(spark: "SparkSession", con: "duckdb.DuckDBPyConnection", config: "Config",
                    schemas: Iterable[str], progress=None) -> list[str]:
    """The working copy's tables of ``schemas`` as Parquet table folders of the Spark warehouse
    (``<warehouse>/<schema>/<table>``, replaced whole), declared in the session's catalog."""
    written = []
    for schema in schemas:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE' "
            "ORDER BY 1", [schema]).fetchall()]
        if not tables:
            continue
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {config.spark.catalog}.{schema}")
        for table in tables:
            _copy_out(spark, con, config, schema, table)
            written.append(f"{schema}.{table}")
    if progress and written:
        progress(f"spark: wrote {len(written)} table(s) to the Spark warehouse")
    return written


def _spark_safe_columns(con: "duckdb.DuckDBPyConnection", schema: str, table: str) -> str:
    """Naive timestamps as instants (UTC), as the Spark warehouse holds every timestamp; types
    Parquet-on-Spark lacks (unsigned, 128-bit, intervals) as the nearest Spark has."""
    cols = []
    for c, t in con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                            "AND table_name = ? ORDER BY ordinal_position", [schema, table]).fetchall():
        t = t.upper()
        if t in ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"):
            cols.append(f'CAST("{c}" AS TIMESTAMPTZ) AS "{c}"')
        elif t in ("HUGEINT", "UHUGEINT", "UBIGINT"):
            cols.append(f'CAST("{c}" AS DECIMAL(38, 0)) AS "{c}"' if "HUGE" in t else f'CAST("{c}" AS DECIMAL(20, 0)) AS "{c}"')
        elif t in ("UINTEGER",):
            cols.append(f'CAST("{c}" AS BIGINT) AS "{c}"')
        elif t in ("INTERVAL", "UUID", "JSON") or t.startswith("ENUM"):
            cols.append(f'CAST("{c}" AS VARCHAR) AS "{c}"')
        else:
            cols.append(f'"{c}"')
    return ", ".join(cols)


def _copy_out(spark: "SparkSession", con: "duckdb.DuckDBPyConnection", config: "Config", schema: str,
              table: str) -> None:
    location = table_location(config, schema, table)
    name = qualified(config, schema, table)
    select = f'SELECT {_spark_safe_columns(con, schema, table)} FROM "{schema}"."{table}"'
    if is_local(location):
        folder = local_path(location)
        tmp = folder.with_name(folder.name + ".writing")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        con.execute(f"COPY ({select}) TO '{tmp / 'part-0.parquet'}' (FORMAT parquet)")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    else:  # a cluster's object store: through Spark's writer
        spark.createDataFrame(con.sql(select).to_arrow_table()).write.mode("overwrite").parquet(location)
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    spark.sql(f"CREATE TABLE {name} USING parquet LOCATION '{location}'")


def declare_exported(spark: "SparkSession", config: "Config") -> list[str]:
    """Declare, in this session's catalog, the Python-stage tables an earlier process wrote to
    the (local) Spark warehouse and this session does not know yet (a new process: the catalog
    lives in the session unless the cluster has a metastore)."""
    root = local_path(config.spark_warehouse)
    declared = []
    for schema in PYTHON_SCHEMAS:
        folder = root / schema
        if not folder.is_dir():
            continue
        for table_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(".writing")):
            name = qualified(config, schema, table_dir.name)
            if spark.catalog.tableExists(name):
                continue
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {config.spark.catalog}.{schema}")
            spark.sql(f"CREATE TABLE {name} USING parquet LOCATION '{table_location(config, schema, table_dir.name)}'")
            declared.append(f"{schema}.{table_dir.name}")
    return declared
