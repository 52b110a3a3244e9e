"""The one resource carrying the project: its config file (and through it the warehouse - a
DuckDB file, or a Spark session with engine: spark - the dbt target folder and every stage's
settings). The code location reads the path from
$CDP_CONFIG; `cdp run` passes its own, per call."""


import logging
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

import duckdb
from dagster import ConfigurableResource, DagsterInstance, EnvVar, Failure, OpExecutionContext

from core import run_lock
from core.config import CONFIG_ENV, Config, load_config
from core.spark import spark_session
from core.warehouse import open_warehouse
from dagster_project.instance import ensure_dagster_home

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_bridge_log = logging.getLogger("tessera.spark")


class TesseraResource(ConfigurableResource):
    """Points at a ``cdp.yaml``; every asset reads paths and settings through it."""

    config_path: str

    def load(self) -> Config:
        return load_config(self.config_path)

    @contextmanager
    def project_held(self) -> Iterator[None]:
        """Around a warehouse write: the project's run lock, or fail fast naming the run that
        holds it. `cdp run` holds it for its whole run (this process: passes through); a run
        launched by Dagster (UI, sensor, schedule) takes it for each warehouse-writing step."""
        path = run_lock.lock_path(self.load().dagster_home)
        if run_lock.held_here(path):
            yield
            return
        try:
            run_id = OpExecutionContext.get().run_id
        except Exception:  # outside a step (a direct call): no run to name
            run_id = ""
        try:
            run_lock.acquire(path, run_id=run_id, trigger="a Dagster run")
        except run_lock.RunInProgress as e:
            raise Failure(str(e), allow_retries=False) from None
        try:
            yield
        finally:
            run_lock.release(path)

    @property
    def engine(self) -> str:
        """cdp.yaml's engine: duckdb or spark."""
        return self.load().engine

    @contextmanager
    def spark(self) -> Iterator["SparkSession"]:
        """engine: spark - the project's SparkSession (one per process, kept between steps: a
        session costs seconds to start), held with the project's run lock: one run writes the
        warehouse's manifest at a time, whatever the engine."""
        with self.project_held():
            yield spark_session(self.load())

    @contextmanager
    def warehouse(self, read_only: bool = False,
                  spark_writes: tuple[str, ...] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """The DuckDB warehouse. With engine: spark, a step that names the schemas it writes
        (``spark_writes``, () for none) gets the driver's DuckDB working copy instead, with
        Spark's tables copied in before and those schemas written back to Spark after
        (core/spark_bridge.py); a step that names none is not on Spark and stops with that reason."""
        config = self.load()
        if config.engine == "spark":
            if spark_writes is None:  # a stage not on Spark: stop here with the reason, not downstream
                raise Failure(
                    "this step reads and writes the DuckDB warehouse, and cdp.yaml says engine: spark; on Spark "
                    "this stage does not run yet (README \"Running on Spark\" lists what runs where). "
                    "Run it with engine: duckdb.", allow_retries=False)
            with self._spark_working_copy(config, spark_writes) as con:
                yield con
            return
        with ExitStack() as stack:
            if not read_only:
                stack.enter_context(self.project_held())
            yield stack.enter_context(open_warehouse(config.warehouse_path, read_only=read_only))

    @contextmanager
    def _spark_working_copy(self, config: Config, writes: tuple[str, ...]) -> Iterator[duckdb.DuckDBPyConnection]:
        from core import spark_bridge

        with self.spark() as spark, open_warehouse(config.warehouse_path) as con:
            spark_bridge.import_from_spark(spark, con, config, progress=_bridge_log.info)
            yield con
            spark_bridge.export_to_spark(spark, con, config, writes, progress=_bridge_log.info)


def tessera_from_env() -> TesseraResource:
    return TesseraResource(config_path=EnvVar(CONFIG_ENV))


def project_instance(config: Config) -> DagsterInstance:
    """The project's Dagster instance (its paths.dagster_home), without touching $DAGSTER_HOME."""
    return DagsterInstance.from_config(str(ensure_dagster_home(config.dagster_home, config.engine)))


# The run's one as_of (naive UTC, "YYYY-MM-DD HH:MM:SS"), fixed when the run starts (cdp/runner.py)
# and read by every step: dbt's --vars, identity, experiments, scoring, segments.
AS_OF_TAG = "tessera/as_of"
AS_OF_FORMAT = "%Y-%m-%d %H:%M:%S"


def run_as_of(context, config: Config) -> datetime:
    """The run's as_of (UTC, aware): its tag when `cdp run` set one; else cdp.yaml's `as_of` (end
    of that day); else the time the run was created, which every step of one run reads alike
    (a run launched from the UI, a sensor or a schedule)."""
    tag = context.run.tags.get(AS_OF_TAG)
    if tag:
        return datetime.strptime(tag, AS_OF_FORMAT).replace(tzinfo=timezone.utc)
    if config.as_of is not None:
        return config.as_of_datetime()
    record = context.instance.get_run_record_by_id(context.run.run_id)
    created = record.create_timestamp if record is not None else datetime.now(timezone.utc)
    return created.astimezone(timezone.utc).replace(microsecond=0)
