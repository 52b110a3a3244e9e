"""The one resource carrying the project: its config file (and through it the warehouse, the
dbt target folder and every stage's settings). The code location reads the path from
$CDP_CONFIG; `cdp run` passes its own, per call."""


from contextlib import contextmanager
from typing import Iterator

import duckdb
from dagster import ConfigurableResource, DagsterInstance, EnvVar

from core.config import CONFIG_ENV, Config, load_config
from core.warehouse import open_warehouse
from dagster_project.instance import ensure_dagster_home


class TesseraResource(ConfigurableResource):
    """Points at a ``cdp.yaml``; every asset reads paths and settings through it."""

    config_path: str

    def load(self) -> Config:
        return load_config(self.config_path)

    @contextmanager
    def warehouse(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with open_warehouse(self.load().warehouse_path, read_only=read_only) as con:
            yield con


def tessera_from_env() -> TesseraResource:
    return TesseraResource(config_path=EnvVar(CONFIG_ENV))


def project_instance(config: Config) -> DagsterInstance:
    """The project's Dagster instance (its paths.dagster_home), without touching $DAGSTER_HOME."""
    return DagsterInstance.from_config(str(ensure_dagster_home(config.dagster_home)))
