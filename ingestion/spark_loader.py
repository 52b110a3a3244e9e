"""Landing files -> raw tables on Spark (``engine: spark``): the same contracts, quarantine
reasons and manifest as :mod:`ingestion.loader`, with Spark reading the files and writing the
tables as Parquet (core/spark.py says why Parquet).

How one file is loaded:

1. The manifest (``raw.loads``) is consulted as on DuckDB: same name, size and mtime as a
   loaded file -> unchanged, not read.
2. Stage: Spark reads the file's lines (split on "\\n" only, numbered in file order across
   the file's splits) and checks each partition of lines with the DuckDB loader's own checks:
   the SQL that :mod:`ingestion.loader` builds from the contract runs on each batch in an
   in-process DuckDB on the executor. The rules exist once; a reason on Spark is the reason on
   DuckDB. A CSV with a line that only the exact reader can take (a quoted field over several
   lines, a record of the wrong width, a blank line) is read again on the driver by the DuckDB
   loader's line-by-line reader, as DuckDB's fast path falls back.
3. Validate and claim: the same functions as on DuckDB (lines must add up; the bad-row bound;
   duplicate, changed).
4. Commit: good rows to ``raw/<table>/<load_id>/``, bad ones to ``raw/quarantine/<load_id>/``,
   then the manifest row, written last: it is the commit. A crash before it leaves folders no
   manifest row names; the next ingest deletes them before it loads anything, so the rerun
   loads the file once. (In a run, nothing reads the raw tables before ingestion.)

Not on Spark yet: ``rows: lines`` (folding receipt lines needs the whole file in one place)
and erasure (``cdp forget`` runs on DuckDB warehouses); a file of the first kind is rejected
with that reason.
"""

from __future__ import annotations

import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from core.config import Config, EntityFiles, Source
from core.contracts import BOOLEAN, DATE, DECIMAL, ENTITIES, INTEGER, JSON, STRING, TIMESTAMP, Entity
from core.contracts import entity as contract_entity
from core.identifiers import install as install_hashing
from core.spark import is_local, local_path, qualified, table_location
from ingestion.loader import (
    _BOM,
    LOADED,
    UNCHANGED,
    FileRejected,
    FileResult,
    IngestReport,
    Progress,
    _check_header,
    _claim,
    _csv_checked_sql,
    _csv_header,
    _csv_records,
    _decode,
    _decode_reasons,
    _describe,
    _jsonl_checked_sql,
    _jsonl_records,
    _Known,
    _mark_erased,
    _parse_csv_record,
    _Skipped,
    _verbatim,
    checksum_and_lines,
    landed_files,
    rejection_for,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RAW = "raw"
QUARANTINE, LOADS = "quarantine", "loads"
SPARK_TYPES = {STRING: "string", TIMESTAMP: "timestamp", DATE: "date", INTEGER: "bigint", DECIMAL: "double",
               JSON: "string", BOOLEAN: "boolean"}
_ARROW_TYPES = {STRING: pa.string(), TIMESTAMP: pa.timestamp("us", tz="UTC"), DATE: pa.date32(),
                INTEGER: pa.int64(), DECIMAL: pa.float64(), JSON: pa.string(), BOOLEAN: pa.bool_()}
LINEAGE = "_source string, _file string, _row bigint, _load_id string, _loaded_at timestamp"
LOADS_SCHEMA = ("load_id string, source string, table_name string, file string, checksum string, size_bytes bigint, "
                "mtime_ns bigint, status string, rows_loaded bigint, rows_quarantined bigint, message string, "
                "started_at timestamp, finished_at timestamp, rows_erased bigint, lines bigint, lines_skipped bigint")
QUARANTINE_SCHEMA = ("_load_id string, _source string, _file string, _row bigint, table_name string, reason string, "
                     "field string, raw_record string, _loaded_at timestamp")


# --------------------------------------------------------------------------- tables
def ensure_raw_tables(spark: "SparkSession", config: Config, entities: Iterable[Entity] = ENTITIES) -> None:
    """The raw tables, the quarantine and the manifest, each a Parquet folder with one
    subfolder per load, declared with the contract's schema (a field added to a contract later
    reads as NULL in older loads)."""
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {config.spark.catalog}.{RAW}")
    tables = [(e.table, contract_columns(e) + ", " + LINEAGE) for e in entities]
    for name, columns in tables + [(QUARANTINE, QUARANTINE_SCHEMA), (LOADS, LOADS_SCHEMA)]:
        location = table_location(config, RAW, name)
        _local_dir(location)
        table = qualified(config, RAW, name)
        if spark.catalog.tableExists(table) and _location(spark, table) != _location_key(location):
            spark.sql(f"DROP TABLE {table}")  # another project's, in this session: external, its files stay
        spark.sql(f"CREATE TABLE IF NOT EXISTS {table} ({columns}) USING parquet "
                  f"OPTIONS (recursiveFileLookup 'true') LOCATION '{location}'")


def _location(spark: "SparkSession", table: str) -> str:
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
    return _location_key(next((r[1] for r in rows if r[0] == "Location"), ""))


def _location_key(uri: str) -> str:
    """A location as comparable text (Spark writes file:/x for file:///x)."""
    return str(local_path(uri)) if uri.startswith("file:") else uri.rstrip("/")


def contract_columns(ent: Entity) -> str:
    return ", ".join(f"`{f.name}` {SPARK_TYPES[f.type]}" for f in ent.fields)


def _local_dir(location: str) -> None:
    if is_local(location):
        local_path(location).mkdir(parents=True, exist_ok=True)


def drop_uncommitted(config: Config, tables: Iterable[str], committed: set[str]) -> list[str]:
    """Delete the load folders of ``tables`` (and their quarantine folders) that no manifest
    row commits (``committed``: the manifest's load ids): a load that crashed before its
    manifest row was written. Returns them. Only the given tables: another table's load may be
    under way beside this one. (Local or mounted warehouses.)"""
    root = local_path(table_location(config, RAW, ""))
    dropped = []
    for table in tables:
        table_dir = root / table
        if not table_dir.is_dir():
            continue
        for load_dir in sorted(p for p in table_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            if load_dir.name not in committed:
                shutil.rmtree(load_dir)
                shutil.rmtree(root / QUARANTINE / load_dir.name, ignore_errors=True)
                dropped.append(f"{table}/{load_dir.name}")
    return dropped


def _manifest_rows(spark: "SparkSession", config: Config) -> list[tuple]:
    """The whole manifest, read once per ingest (it has a row per file ever landed)."""
    table = qualified(config, RAW, LOADS)
    spark.sql(f"REFRESH TABLE {table}")
    return [tuple(r) for r in spark.sql(
        f"SELECT load_id, source, table_name, file, checksum, size_bytes, mtime_ns, status, finished_at FROM {table}"
    ).collect()]


def _manifest(rows: list[tuple], source: str, table: str) -> tuple[dict[str, _Known], set[str]]:
    """As ingestion.loader._manifest: files seen (name -> last state), checksums loaded."""
    by_name: dict[str, tuple[datetime, _Known]] = {}
    applied = set()
    for _, src, tbl, file, checksum, size, mtime, status, finished in rows:
        if (src, tbl) != (source, table):
            continue
        if file not in by_name or finished > by_name[file][0]:
            by_name[file] = (finished, _Known(checksum, size, mtime, status))
        if status == LOADED:
            applied.add(checksum)
    return {k: v for k, (_, v) in by_name.items()}, applied


# --------------------------------------------------------------------------- checking a batch
def checked_schema(ent: Entity) -> pa.Schema:
    """What checking yields per line: the row number, whether the line is no row (a header, a
    blank line), the verbatim line (bad rows only), the typed fields and
    the reason, field and nulled field of the contract's checks."""
    return pa.schema(
        [("_row", pa.int64()), ("_skip", pa.bool_()), ("_raw_record", pa.string())]
        + [(f"_t_{f.name}", _ARROW_TYPES[f.type]) for f in ent.fields]
        + [("_reason", pa.string()), ("_field", pa.string()), ("_nulled", pa.string()), ("_nulled_value", pa.string()),
           ("_erased", pa.bool_())]
    )


class Erased:
    """What the checks need to drop the rows of erased persons (``cdp forget``), as the DuckDB
    loader does: the salt and the erased hashes (privacy.erased_identifiers, as the erasure step
    wrote them to the Spark warehouse), and the file's source (scoped ids hash with it). They
    travel to the executors with the check (in the task, not in any log)."""

    def __init__(self, salt: str, hashes: list[str], source: str = "") -> None:
        self.salt, self.hashes, self.source = salt, hashes, source

    def for_source(self, source: str) -> "Erased":
        return Erased(self.salt, self.hashes, source)


def erased_hashes(spark: "SparkSession", config: Config) -> "Erased | None":
    """The erased persons' hashes in the Spark warehouse, None when there are none."""
    from core.salt import load_salt

    location = table_location(config, "privacy", "erased_identifiers")
    if (location.startswith("file:") or "://" not in location) and not local_path(location).is_dir():
        return None
    try:
        hashes = [r[0] for r in spark.read.parquet(location).select("hash").distinct().collect()]
    except Exception as e:  # (an object store without the folder: nothing erased yet)
        if "PATH_NOT_FOUND" in str(e) or "does not exist" in str(e):
            return None
        raise
    return Erased(load_salt(config), hashes) if hashes else None


def check_records(records: pa.Table, ent: Entity, files: EntityFiles, header: list[str] | None,
                  earliest: date, erased: Erased | None = None) -> pa.Table:
    """The DuckDB loader's checks on records already read: JSON lines (_row, line, _pre) or CSV
    records (_row, _raw_record, _pre, c0..cN). Returns rows in :func:`checked_schema`."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET VARIABLE tessera_earliest = TIMESTAMPTZ '{earliest.isoformat()}'")
        if header is None:
            con.register("_lines", records)
            sql, decode = _jsonl_checked_sql(ent, files, None)
            sql = f"SELECT * REPLACE (CASE WHEN _case IS NOT NULL THEN _raw_record END AS _raw_record) FROM ({sql})"
        else:
            con.register("_records", records)
            nulled = ", ".join(f"nullif(c{i}, '') AS c{i}" for i in range(len(header)))
            sql, decode = _csv_checked_sql(ent, files, header, f"SELECT _row, _raw_record, _pre, {nulled} FROM _records")
        con.execute(f"CREATE TEMP TABLE _landed AS {sql}")
        _decode_reasons(con, decode)
        if erased is not None:  # rows of erased persons: flagged, then dropped (not quarantined)
            install_hashing(con, erased.salt)
            con.register("_erased_hashes", pa.table({"hash": pa.array(erased.hashes, pa.string())}))
            con.execute("CREATE TEMP TABLE pv_erased AS SELECT hash FROM _erased_hashes")
        _mark_erased(con, ent, erased.source if erased else "", erased is not None)
        fields = ", ".join(f"_t_{f.name}" if f.type != JSON else f"CAST(_t_{f.name} AS VARCHAR) AS _t_{f.name}"
                           for f in ent.fields)
        out = con.sql(
            f"SELECT _row, false AS _skip, _raw_record, {fields}, _reason, _field, _nulled, _nulled_value, "
            "_erased FROM _landed").to_arrow_table()
    finally:
        con.close()
    return out.cast(checked_schema(ent))


def _check_lines(ent: Entity, files: EntityFiles, fmt: str, header: list[str] | None, earliest: date,
                 erased: Erased | None = None) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """For Spark's mapInArrow: numbered lines (_row, line) -> checked rows. Lines that are no
    row (a CSV's header, blank lines) come out with _skip; a line only the exact reader can
    take gets a reader's reason, which sends the file to the driver (see :func:`_stage`)."""
    schema = checked_schema(ent)
    width = len(header) if header else 0

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows, skipped = [], []
        for batch in batches:
            for n, line in zip(batch.column("_row").to_pylist(), batch.column("line").to_pylist()):
                raw = line.removesuffix(b"\r")
                if n == 1:
                    raw = raw.removeprefix(_BOM)
                text = _decode(raw)
                pre = None if text is not None else "invalid_encoding"
                if pre:
                    text = _verbatim(raw)  # as the DuckDB loader quarantines it
                if (header is not None and n == 1) or (pre is None and (not text or text.isspace())):
                    skipped.append(n)
                elif header is None:
                    rows.append((n, text, pre))
                else:
                    fields = _parse_csv_record(text, files.delimiter, width) if pre is None else None
                    if fields is None:
                        pre = pre or "malformed_csv_line"
                    rows.append((n - 1, text, pre, *(fields or (None,) * width)))
        if skipped:
            yield pa.record_batch([pa.array(skipped, pa.int64()), pa.array([True] * len(skipped))]
                                  + [pa.nulls(len(skipped), f.type) for f in list(schema)[2:]], schema=schema)
        if rows:
            names = ["_row", "line", "_pre"] if header is None else ["_row", "_raw_record", "_pre"] + [
                f"c{i}" for i in range(width)]
            records = pa.table([pa.array(col, pa.int64() if i == 0 else pa.string())
                                for i, col in enumerate(zip(*rows))], names=names)
            yield from check_records(records, ent, files, header, earliest, erased).to_batches()

    return run


def _numbered_lines(spark: "SparkSession", path: Path) -> "DataFrame":
    """The file's lines (split on "\\n" only, as the DuckDB loader reads them) as (_row, line bytes),
    _row the line number: rows are numbered within each split Spark reads, and each split is
    offset by the lines of the splits before it in the file."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    lines = (spark.read.option("lineSep", "\n").text(str(path))
             # as bytes: a line that is not UTF-8 is decoded (or not) by the loader's own rule
             .select(F.col("value").cast("binary").alias("line"), F.col("_metadata.file_block_start").alias("_block"),
                     F.monotonically_increasing_id().alias("_id")))
    blocks = lines.groupBy("_block").agg(F.count("*").alias("_n"), F.min("_id").alias("_first"))
    before = Window.orderBy("_block").rowsBetween(Window.unboundedPreceding, -1)
    blocks = blocks.withColumn("_offset", F.coalesce(F.sum("_n").over(before), F.lit(0)))
    return (lines.join(F.broadcast(blocks), "_block")
            .select((F.col("_id") - F.col("_first") + F.col("_offset") + 1).alias("_row"), "line"))


# --------------------------------------------------------------------------- staging
class _SparkStaged:
    def __init__(self) -> None:
        self.checked: DataFrame | None = None
        self.rows = self.bad = self.skipped = self.nulled = self.erased = 0
        self.notes: list[str] = []
        self.rejection: str | None = None
        self.by_driver = False


def _stage(spark: "SparkSession", path: Path, ent: Entity, files: EntityFiles, size: int, earliest: date,
           erased: Erased | None = None) -> _SparkStaged:
    staged = _SparkStaged()
    fmt = files.format or ent.format
    try:
        if size == 0:
            raise FileRejected("the file is empty")
        if files.rows == "lines":
            raise FileRejected("rows: lines is not supported with engine: spark yet; load this source on DuckDB")
        if files.lookups or files.skip_when:
            raise FileRejected("lookups and skip_when are not supported with engine: spark yet; "
                               "load this source on DuckDB")
        header = None
        if fmt == "csv":
            header = _csv_header(path, files)
            staged.notes = _check_header(header, ent, files)
        lines = _numbered_lines(spark, path)
        if files.number_lines:  # line numbers count within a receipt: the whole file in one batch
            lines = lines.coalesce(1)
        schema = checked_schema(ent)
        checked = lines.mapInArrow(_check_lines(ent, files, fmt, header, earliest, erased), _spark_schema(schema))
        checked = checked.persist()
        skipped, irregular, staged.rows, staged.bad, staged.nulled, staged.erased = _counts(checked)
        if irregular or (header is not None and skipped > 1):
            checked.unpersist()
            checked, skipped = _stage_on_driver(spark, path, ent, files, fmt, header, earliest, schema, erased)
            _, _, staged.rows, staged.bad, staged.nulled, staged.erased = _counts(checked)
            staged.by_driver = True
        staged.checked = checked
        staged.skipped = skipped
    except FileRejected as e:
        staged.rejection = str(e)
    return staged


def _counts(checked: "DataFrame") -> tuple[int, int, int, int, int, int]:
    """In one pass: lines that are no row, rows only the exact reader takes (a CSV record over
    several lines), rows, bad rows, rows loaded with a field nulled (those three without the
    erased persons' rows), rows of erased persons."""
    from pyspark.sql import functions as F

    erased = ~F.col("_skip") & F.coalesce(F.col("_erased"), F.lit(False))
    row = ~F.col("_skip") & ~F.coalesce(F.col("_erased"), F.lit(False))
    good = row & F.col("_reason").isNull()
    return tuple(checked.agg(
        F.count(F.when(F.col("_skip"), 1)),
        F.count(F.when(F.col("_reason") == "malformed_csv_line", 1)),
        F.count(F.when(row, 1)),
        F.count(F.when(row & F.col("_reason").isNotNull(), 1)),
        F.count(F.when(good & F.col("_nulled").isNotNull(), 1)),
        F.count(F.when(erased, 1)),
    ).first())


def _stage_on_driver(spark, path: Path, ent: Entity, files: EntityFiles, fmt: str, header: list[str] | None,
                     earliest: date, schema: pa.Schema, erased: Erased | None = None) -> tuple["DataFrame", int]:
    """The DuckDB loader's line-by-line reader, for a file with lines Spark's reader cannot
    take as they are: every line accounted for, bad ones kept verbatim."""
    skipped = _Skipped()
    if header is None:
        recs = list(_jsonl_records(path, skipped))
        names = ["_row", "line", "_pre"]
    else:
        recs = list(_csv_records(path, files.delimiter, len(header), skipped))
        names = ["_row", "_raw_record", "_pre"] + [f"c{i}" for i in range(len(header))]
    columns = list(zip(*recs)) if recs else [()] * len(names)
    records = pa.table([pa.array(col, pa.int64() if i == 0 else pa.string()) for i, col in enumerate(columns)],
                       names=names)
    checked = check_records(records, ent, files, header, earliest, erased)
    return spark.createDataFrame(checked.to_pandas(), schema=_spark_schema(schema)).persist(), skipped.lines


def _spark_schema(schema: pa.Schema) -> str:
    def spark_type(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "timestamp"
        return {pa.int64(): "bigint", pa.bool_(): "boolean", pa.string(): "string", pa.date32(): "date",
                pa.float64(): "double"}[t]
    return ", ".join(f"`{f.name}` {spark_type(f.type)}" for f in schema)


# --------------------------------------------------------------------------- committing
def _commit(spark, config: Config, res: FileResult, staged: _SparkStaged, ent: Entity, loaded_at: datetime,
            stat) -> None:
    """The file's rows, then its bad rows, then its manifest row: the last write commits it."""
    from pyspark.sql import functions as F

    checked = staged.checked
    res.rows_loaded, res.rows_quarantined, res.rows_erased = staged.rows - staged.bad, staged.bad, staged.erased
    res.lines_skipped = staged.skipped
    res.message = "; ".join(([f"{staged.bad} row(s) quarantined"] if staged.bad else []) + staged.notes)
    lineage = [F.lit(res.source).alias("_source"), F.lit(res.file).alias("_file"), F.col("_row"),
               F.lit(res.load_id).alias("_load_id"), F.lit(loaded_at).cast("timestamp").alias("_loaded_at")]
    checked = checked.where("_skip OR NOT coalesce(_erased, false)")  # (erased persons' rows: dropped)
    good = checked.where("NOT _skip AND _reason IS NULL").select(
        *[F.col(f"_t_{f.name}").alias(f.name) for f in ent.fields], *lineage)
    good.write.mode("error").parquet(f"{table_location(config, RAW, ent.table)}/{res.load_id}")
    quarantine = [F.lit(res.load_id).alias("_load_id"), F.lit(res.source).alias("_source"),
                  F.lit(res.file).alias("_file"), F.col("_row"), F.lit(ent.table).alias("table_name")]
    bad = checked.where("NOT _skip AND _reason IS NOT NULL").select(
        *quarantine, F.col("_reason").alias("reason"), F.col("_field").alias("field"),
        F.col("_raw_record").alias("raw_record"), F.lit(loaded_at).cast("timestamp").alias("_loaded_at"))
    # field-level issues: the row was loaded with the field NULL; the bad value alone is kept
    nulled = checked.where("NOT _skip AND _reason IS NULL AND _nulled IS NOT NULL").select(
        *quarantine, F.lit("field_nulled:invalid_value").alias("reason"), F.col("_nulled").alias("field"),
        F.col("_nulled_value").alias("raw_record"), F.lit(loaded_at).cast("timestamp").alias("_loaded_at"))
    q = bad.unionByName(nulled)
    if staged.bad or staged.nulled:
        q.write.mode("error").parquet(f"{table_location(config, RAW, QUARANTINE)}/{res.load_id}")
    _record(spark, config, res, loaded_at, stat)


def _record(spark, config: Config, res: FileResult, started: datetime, stat) -> None:
    from pyspark.sql.types import _parse_datatype_string

    row = (res.load_id, res.source, res.table, res.file, res.checksum, stat.st_size, stat.st_mtime_ns, res.status,
           res.rows_loaded, res.rows_quarantined, res.message, started, datetime.now(timezone.utc),
           res.rows_erased, res.lines, res.lines_skipped)
    spark.createDataFrame([row], schema=_parse_datatype_string(LOADS_SCHEMA)).coalesce(1).write.mode(
        "error").parquet(f"{table_location(config, RAW, LOADS)}/{res.load_id}")


# --------------------------------------------------------------------------- loading
def load_file(spark: "SparkSession", config: Config, source: Source, ent: Entity, files: EntityFiles, path: Path,
              rel_name: str, known: dict[str, _Known], applied: set[str], erased: Erased | None = None) -> FileResult:
    """Load one landed file on Spark: stage, validate, claim, commit, as
    :func:`ingestion.loader.load_file` does. Never raises for bad data."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    res = FileResult(source.name, ent.table, rel_name, status=LOADED)
    stat = path.stat()
    prior = known.get(rel_name)
    if prior and prior.status == LOADED and prior.size_bytes == stat.st_size and prior.mtime_ns == stat.st_mtime_ns:
        res.status = UNCHANGED
        return res
    res.load_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=1) as pool:  # hash while Spark reads
        hashing = pool.submit(checksum_and_lines, path)
        staged = _stage(spark, path, ent, files, stat.st_size, config.ingestion.earliest_date,
                        erased.for_source(source.name) if erased else None)
        res.checksum, res.lines = hashing.result()
    try:
        if staged.rejection is None:
            if staged.rows + staged.erased + staged.skipped != res.lines:
                staged.rejection = (
                    f"the counts do not add up for {rel_name}: {res.lines} line(s) in the file, but {staged.rows} "
                    f"row(s) read + {staged.erased} of erased persons + {staged.skipped} header, blank or continuation "
                    "line(s); nothing of it is loaded. This is a fault of the loader: please report it.")
            elif staged.rows == 0 and staged.erased:  # only rows of erased persons: loaded, with nothing in it
                pass
            else:
                staged.rejection = rejection_for(staged.rows, staged.bad, config.ingestion.max_bad_row_rate,
                                                 lambda: _top_reasons(staged.checked))
        res.status, res.message = _claim(prior, res.checksum, applied, staged.rejection, None)
        if res.status == LOADED:
            _commit(spark, config, res, staged, ent, started, stat)
        elif res.status == UNCHANGED:
            res.load_id = None
        else:
            _record(spark, config, res, started, stat)
    finally:
        if staged.checked is not None:
            staged.checked.unpersist()
    res.seconds = time.perf_counter() - t0
    return res


def _top_reasons(checked: "DataFrame") -> list[tuple[str, str, int, int]]:
    from pyspark.sql import functions as F

    rows = (checked.where("NOT _skip AND _reason IS NOT NULL AND NOT coalesce(_erased, false)").groupBy("_reason", "_field")
            .agg(F.count("*").alias("n"), F.min("_row").alias("first")).orderBy(F.desc("n")).limit(3).collect())
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def ingest(config: Config, spark: "SparkSession", tables: Iterable[str] | None = None,
           progress: Progress | None = None) -> IngestReport:
    """Load every new landed file of every enabled source (or only the given raw tables) into
    the Spark warehouse, one file at a time (Spark parallelises within a file)."""
    wanted = set(tables) if tables is not None else None
    ensure_raw_tables(spark, config)
    in_scope = sorted({contract_entity(s.kind, e).table for s in config.enabled_sources() for e in s.entities}
                      & (wanted if wanted is not None else {e.table for e in ENTITIES}))
    manifest = _manifest_rows(spark, config)
    dropped = drop_uncommitted(config, in_scope, {r[0] for r in manifest})
    if dropped and progress:
        progress(f"dropped {len(dropped)} load folder(s) of loads that did not finish: {', '.join(dropped)}")
    report = IngestReport()
    erased = erased_hashes(spark, config)
    for source in config.enabled_sources():
        for entity_name, files in source.entities.items():
            ent = contract_entity(source.kind, entity_name)
            if wanted is not None and ent.table not in wanted:
                continue
            known, applied = _manifest(manifest, source.name, ent.table)
            for path, rel in landed_files(config, source, entity_name):
                res = load_file(spark, config, source, ent, files, path, rel, known, applied, erased)
                report.files.append(res)
                if progress and res.status != UNCHANGED:
                    progress(_describe(res))
    for name in in_scope + [QUARANTINE, LOADS]:  # (Spark caches a table's file listing)
        spark.sql(f"REFRESH TABLE {qualified(config, RAW, name)}")
    return report

