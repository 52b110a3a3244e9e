"""engine: spark - erasure in the Spark warehouse (the ``privacy/erasure`` asset on Spark).

The request is applied as on DuckDB (privacy/erasure.py), on the driver's DuckDB working copy
(core/spark_bridge.py), which holds a copy of every Spark table. Then, before the request is
marked done, the Spark warehouse is brought to the same state by ``erase_in_spark``:

- **raw tables** (``raw/<table>/<load_id>/``): every load folder holding a row that carries an
  erased hash (the same predicate the DuckDB path deletes with, over all hashes ever erased, so
  a retry after a crash finishes the job) is written again without those rows beside the old
  one and swapped in atomically (``renameat2(RENAME_EXCHANGE)``); the quarantine's folders the
  same way for lines holding an erased identifier, and the manifest's (``raw.loads``) for a
  message the working copy masked;
- **dbt's tables** from which the working copy's erasure removed rows are overwritten with the
  working copy's rows (a rebuild by the next dbt build would do it too, but not for an
  incremental model, and not before);
- **the Python stages' schemas** (identity, scoring, segments, experiments, quality, privacy)
  are exported whole, as after any step on the driver.

Scope: a local or mounted warehouse (what the swap needs); on an object store the step stops
before erasing anything, with that reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from core import identifiers as keys
from core.spark import is_local, local_path, qualified, table_location
from core.spark_bridge import PYTHON_SCHEMAS, export_to_spark, spark_tables
from ingestion.spark_loader import LOADS, QUARANTINE, RAW

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import SparkSession

    from core.config import Config


class ErasureNotOnSpark(RuntimeError):
    """The Spark warehouse is not on a path this machine can swap folders in."""


def check_supported(config: "Config") -> None:
    """Stop before anything is erased when the warehouse is not local or mounted."""
    location = config.spark_warehouse
    if not is_local(location):
        raise ErasureNotOnSpark(
            f"erasure on engine: spark rewrites the raw tables' load folders in place, which needs the Spark "
            f"warehouse on a local or mounted path; spark.warehouse is {location.split('://')[0]}://... "
            "(an object store). The request stays pending; mount the warehouse, or apply it with engine: duckdb.")


def erase_in_spark(spark: "SparkSession", config: "Config", con: "duckdb.DuckDBPyConnection",
                   working_copy_removed: dict[str, int]) -> dict[str, int]:
    """Bring the Spark warehouse to the working copy's erased state (see the module's notes).
    ``con``: the working copy, with the erasure's temp tables (pv_erased...) still there.
    Returns rows removed per Spark table, as ``spark:<schema>.<table>``."""
    check_supported(config)
    removed: dict[str, int] = {}
    root = local_path(table_location(config, RAW, ""))
    for table in keys.ROW_KEYS:
        cond = keys.row_erased_sql(table)
        n = _rewrite_loads_where(con, root / table, f"({cond}) IS TRUE") if cond else 0
        if n:
            removed[f"spark:raw.{table}"] = n
    n = _rewrite_loads_where(con, root / QUARANTINE, f"({keys.text_erased_sql('raw_record', '_source')}) IS TRUE")
    if n:
        removed[f"spark:raw.{QUARANTINE}"] = n
    masked = _rewrite_manifest_messages(con, root / LOADS)
    if masked:
        removed[f"spark:raw.{LOADS} (messages masked)"] = masked
    for name in [f"raw.{t}" for t in (*keys.ROW_KEYS, QUARANTINE, LOADS)]:
        if spark.catalog.tableExists(f"{config.spark.catalog}.{name}"):
            spark.catalog.refreshTable(f"{config.spark.catalog}.{name}")
    # dbt's tables the working copy's erasure changed
    dbt_tables = {(s, t) for s, t, view in spark_tables(spark, config) if not view and s != RAW}
    for key, n in working_copy_removed.items():
        schema, _, table = key.partition(".")
        if n and (schema, table) in dbt_tables:
            _overwrite_from_working_copy(spark, config, con, schema, table)
            removed[f"spark:{key}"] = n
    present = {s for (s,) in con.execute("SELECT DISTINCT table_schema FROM information_schema.tables "
                                         "WHERE table_catalog = current_database()").fetchall()}
    export_to_spark(spark, con, config, [s for s in PYTHON_SCHEMAS if s in present])
    return removed


def _load_dirs(table_dir: Path) -> list[Path]:
    if not table_dir.is_dir():
        return []
    return sorted(p for p in table_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _parquet(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.parquet") if not p.name.startswith(("_", ".")))


def _rewrite_loads_where(con: "duckdb.DuckDBPyConnection", table_dir: Path, erased: str) -> int:
    """Each load folder of the table with rows matching ``erased``, written again without them."""
    total = 0
    for folder in _load_dirs(table_dir):
        files = _parquet(folder)
        if not files:
            continue
        source = f"read_parquet({files!r})"
        n = con.execute(f"SELECT count(*) FROM {source} WHERE {erased}").fetchall()[0][0]
        if n:
            _swap_in(con, folder, f"SELECT * FROM {source} WHERE NOT ({erased})")
            total += n
    return total


def _rewrite_manifest_messages(con: "duckdb.DuckDBPyConnection", loads_dir: Path) -> int:
    """The manifest's rows whose message the working copy masked (redact_load_messages)."""
    total = 0
    for folder in _load_dirs(loads_dir):
        files = _parquet(folder)
        if not files:
            continue
        source = f"read_parquet({files!r})"
        n = con.execute(f"SELECT count(*) FROM {source} p JOIN raw.loads w USING (load_id) "
                        "WHERE p.message IS DISTINCT FROM w.message").fetchall()[0][0]
        if n:
            _swap_in(con, folder, f"SELECT p.* REPLACE (coalesce(w.message, p.message) AS message) FROM {source} p "
                                  "LEFT JOIN raw.loads w USING (load_id)")
            total += n
    return total


def _swap_in(con: "duckdb.DuckDBPyConnection", folder: Path, select: str) -> None:
    """``select``'s rows as the folder's one Parquet file: written aside (a hidden folder, which
    Spark does not read), fsynced, then exchanged with the folder in one rename; the old files
    are deleted after."""
    new = folder.with_name(f".{folder.name}.erasing")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    out = new / "part-00000-erased.parquet"
    con.execute(f"COPY ({select}) TO '{out}' (FORMAT parquet)")
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _exchange(new, folder)
    shutil.rmtree(new)  # (now the old files)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames, with
    the old folder moved aside first (a crash between them leaves the rows in the aside folder)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    aside = b.with_name(f".{b.name}.old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def _overwrite_from_working_copy(spark: "SparkSession", config: "Config", con: "duckdb.DuckDBPyConnection",
                                 schema: str, table: str) -> None:
    """A dbt table in Spark replaced by the working copy's rows (its types kept: each column cast
    to the Spark table's type; the working copy's naive timestamps are UTC)."""
    from pyspark.sql import functions as F

    from core.spark_bridge import _spark_safe_columns

    name = qualified(config, schema, table)
    target = spark.table(name)
    arrow = con.sql(f'SELECT {_spark_safe_columns(con, schema, table)} FROM "{schema}"."{table}"').to_arrow_table()
    frame = spark.createDataFrame(arrow) if arrow.num_rows else spark.createDataFrame([], target.schema)
    frame = frame.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in target.schema.fields])
    frame.localCheckpoint(eager=True).write.insertInto(name, overwrite=True)
