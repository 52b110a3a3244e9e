"""The one Dagster resource: the project's config file and its warehouse."""


from contextlib import contextmanager
from typing import Iterator

import duckdb
from dagster import ConfigurableResource, EnvVar

from core.config import CONFIG_ENV, Config, load_config
from core.warehouse import open_warehouse


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
