"""``engine:`` and the ``spark:`` section of cdp.yaml: where the warehouse's tables live and
what computes them.

``engine: duckdb`` (the default) is one DuckDB file on one machine; nothing else in this module
matters then. ``engine: spark`` keeps the raw tables as Parquet tables in a Spark catalog and
runs the stages with Spark: locally (``master: local[2]``), on a cluster (``master:
spark://host:7077``, ``yarn``, ``k8s://...``), or through a Spark Connect server (``connect:
sc://host:15002``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENGINES = ("duckdb", "spark")
Engine = Literal["duckdb", "spark"]

_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|k8s|mesos)://\S+")
_CONNECT = re.compile(r"sc://[^/\s]+(/\S*)?")
_URI = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class DuckDBSettings(BaseModel):
    """``duckdb:``: how the DuckDB warehouse is computed (engine: duckdb)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dbt_memory_limit_gb: float | None = Field(
        default=5.0, gt=0,
        description="DuckDB memory a dbt build may hold; past it DuckDB spills to <warehouse>.tmp (removed when "
                    "dbt ends). Empty = DuckDB's default, 80% of the machine's memory (a full build at 1M "
                    "customers took 12 GB that way).",
    )


class SparkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str | None = Field(
        default="local[2]",
        description="Spark master URL: local[N] (this machine), spark://host:7077, yarn, k8s://https://host. "
                    "Leave empty when `connect` is set.",
    )
    connect: str | None = Field(
        default=None, description="Spark Connect endpoint (sc://host:15002), instead of a master URL."
    )
    warehouse: str = Field(
        default="warehouse/spark",
        description="spark.sql.warehouse.dir: where the Parquet tables are written. A path relative to "
                    "cdp.yaml's folder, or a URI the cluster reads (s3a://bucket/tessera, hdfs://...).",
    )
    catalog: str = Field(
        default="spark_catalog", description="The Spark catalog holding the project's schemas (raw, main, ...)."
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="Further Spark settings (spark.executor.memory: 8g, ...), passed to the session as they are.",
    )

    @field_validator("master")
    @classmethod
    def _known_master(cls, v: str | None) -> str | None:
        if v is not None and not _MASTER.fullmatch(v.strip()):
            raise ValueError(f"{v!r} is not a Spark master URL; use local[2], local[*], spark://host:7077, "
                             "yarn or k8s://https://host:port")
        return v.strip() if v else None

    @field_validator("connect")
    @classmethod
    def _connect_url(cls, v: str | None) -> str | None:
        if v is not None and not _CONNECT.fullmatch(v.strip()):
            raise ValueError(f"{v!r} is not a Spark Connect endpoint; use sc://host:15002")
        return v.strip() if v else None

    @field_validator("catalog")
    @classmethod
    def _catalog_identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("use letters, digits and '_' (e.g. spark_catalog)")
        return v

    @field_validator("warehouse")
    @classmethod
    def _warehouse_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give a folder or a URI for the Spark warehouse (e.g. warehouse/spark)")
        return v.strip()

    @field_validator("conf")
    @classmethod
    def _conf_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key.startswith("spark."):
                raise ValueError(f"{key!r} is not a Spark setting; Spark settings start with 'spark.'")
            if key in ("spark.master", "spark.sql.warehouse.dir", "spark.remote"):
                raise ValueError(f"{key!r} is set by spark.master / spark.connect / spark.warehouse; set it there")
        return v

    @model_validator(mode="after")
    def _master_or_connect(self) -> "SparkSettings":
        if self.connect and self.master and "master" in self.model_fields_set:
            raise ValueError("give either `master` or `connect`, not both")
        return self

    @property
    def is_uri_warehouse(self) -> bool:
        return bool(_URI.match(self.warehouse))
