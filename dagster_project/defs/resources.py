"""The one resource carrying the project: its config file (and through it the warehouse - a
DuckDB file, or a Spark session with engine: spark - the dbt target folder and every stage's
settings). The code location reads the path from
$CDP_CONFIG; `cdp run` passes its own, per call."""


from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Iterator

import duckdb
from dagster import ConfigurableResource, DagsterInstance, EnvVar, Failure, OpExecutionContext

from core import run_lock
from core.config import CONFIG_ENV, Config, load_config
from core.warehouse import open_warehouse
from dagster_project.instance import ensure_dagster_home

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


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
        from core.spark import spark_session

        with self.project_held():
            yield spark_session(self.load())

    @contextmanager
    def warehouse(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        config = self.load()
        if config.engine == "spark":  # a stage not ported yet: stop here with the reason, not downstream
            raise Failure(
                "this step reads and writes the DuckDB warehouse, and cdp.yaml says engine: spark; on Spark "
                "only ingestion runs in Dagster so far (README \"Running on Spark\" lists what runs where). "
                "Run the other stages with engine: duckdb.", allow_retries=False)
        with ExitStack() as stack:
            if not read_only:
                stack.enter_context(self.project_held())
            yield stack.enter_context(open_warehouse(config.warehouse_path, read_only=read_only))


def tessera_from_env() -> TesseraResource:
    return TesseraResource(config_path=EnvVar(CONFIG_ENV))


def project_instance(config: Config) -> DagsterInstance:
    """The project's Dagster instance (its paths.dagster_home), without touching $DAGSTER_HOME."""
    return DagsterInstance.from_config(str(ensure_dagster_home(config.dagster_home, config.engine)))
