"""Identity on Spark (``engine: spark``): Splink's Spark backend with the settings, recipe and
model of :mod:`identity.splink_model`, and connected components computed in Spark.

The linker is built from :func:`identity.splink_model.spec_and_recipe`, the function the DuckDB
linker is built from; the recipe's profiling queries (written in DuckDB's SQL) reach Spark
through :class:`SparkSQL`, which transpiles them with sqlglot. Training (lambda, u, EM),
smoothing, the sanity checks and the saved model JSON are the DuckDB path's own functions:
they speak to the linker, not to the backend. A model trained on either engine predicts on the
other (tests/test_spark.py: the same pairs and clusters on the same records).

What stays on one machine: the constrained merge (per-identifier rules, limits, unique ids) of
:mod:`identity.clustering` runs on the DuckDB warehouse; on Spark, the clusters are the
connected components of the scored pairs above the threshold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings.identity import IdentitySettings
from identity import splink_model

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

INPUT_VIEW = "identity_input"


class _Result:
    def __init__(self, rows: list) -> None:
        self._rows = [tuple(r) for r in rows]

    def fetchall(self) -> list[tuple]:
        return self._rows


class SparkSQL:
    """DuckDB's ``execute(sql).fetchall()`` over a SparkSession: the recipe's queries, written
    for DuckDB, transpiled to Spark SQL."""

    def __init__(self, spark: "SparkSession") -> None:
        self.spark = spark

    def execute(self, sql: str, params: list | None = None) -> _Result:
        if params:
            raise ValueError("SparkSQL: parameters are not supported")
        return _Result(self.spark.sql(to_spark_sql(sql)).collect())


def spark_linker(spark: "SparkSession", records: "DataFrame", settings: IdentitySettings,
                 model: dict | Path | None = None):
    """A Splink linker on Spark over ``records`` (the columns of splink_model.SPLINK_COLUMNS),
    and its recipe: chosen for these records, or a saved model's."""
    from pyspark.sql import functions as F
    from splink import Linker
    from splink.backends.spark import SparkAPI

    splink_model._quiet_splink()
    records.createOrReplaceTempView(INPUT_VIEW)
    spec, recipe = splink_model.spec_and_recipe(SparkSQL(spark), settings, model, INPUT_VIEW)
    spec = spark_spec(spec)
    district = to_spark_sql(splink_model.district_sql(recipe["postcode_district_chars"]))
    prepared = records.withColumn("postcode_outward", F.expr(district))
    # persist: lineage is cut in executor memory/disk, no checkpoint folder needed
    api = _spark_api(SparkAPI)(spark_session=spark, break_lineage_method="persist")
    linker = Linker(api.register(prepared), spec, log_level=None)
    linker.tessera_recipe = recipe
    return linker


def _spark_api(base):
    """Splink's SparkAPI, its SQL written by sqlglot's own Spark dialect. Splink's
    "customspark" dialect subclasses sqlglot's generator, which the compiled sqlglot this
    project installs (sqlglotc, through dagster-dbt's sqlglot[rs]) refuses ("interpreted
    classes cannot inherit from compiled"). All it adds is writing CAST(0.5 AS DOUBLE) as the
    literal 0.5D; the cast is the same value."""

    class SparkAPI(base):
        def _setup_for_execute_sql(self, sql: str, physical_name: str) -> str:
            import sqlglot

            return sqlglot.transpile(sql, read="spark", write="spark", pretty=True)[0]

    return SparkAPI


# DuckDB's similarity functions -> the names Splink's jar registers on Spark (same algorithms)
_SPARK_FUNCTIONS = {"jaro_?winkler_similarity": "jaro_winkler", "jaro_similarity": "jaro_sim"}
_FULL_MATCH = re.compile(r"regexp_full_match\(([^,()]+), '([^']*)'\)", re.IGNORECASE)


def to_spark_sql(sql: str) -> str:
    """A DuckDB SQL expression or condition (the dialect splink_model writes) in Spark SQL."""
    import sqlglot

    out = sqlglot.transpile(sql, read="duckdb", write="spark")[0]
    for duck, spark in _SPARK_FUNCTIONS.items():
        out = re.sub(rf"\b{duck}\s*\(", f"{spark}(", out, flags=re.IGNORECASE)
    return _FULL_MATCH.sub(lambda m: f"{m.group(1)} RLIKE '^(?:{m.group(2)})$'", out)


def spark_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Splink settings written for DuckDB (comparison levels, blocking rules) in Spark SQL.
    The model's parameters (m, u, lambda, term frequencies) are kept as they are."""
    out = json.loads(json.dumps(spec))
    out.pop("sql_dialect", None)
    for comparison in out.get("comparisons", []):
        for level in comparison.get("comparison_levels", []):
            level.pop("sql_dialect", None)
            if level.get("sql_condition", "ELSE").strip().upper() != "ELSE":
                level["sql_condition"] = to_spark_sql(level["sql_condition"])
    rules = []
    for rule in out.get("blocking_rules_to_generate_predictions", []):
        rule = {"blocking_rule": rule} if isinstance(rule, str) else rule
        rule.pop("sql_dialect", None)
        rules.append({**rule, "blocking_rule": to_spark_sql(rule["blocking_rule"])})
    out["blocking_rules_to_generate_predictions"] = rules
    return out


def train(linker, settings: IdentitySettings, progress=None) -> dict[str, Any]:
    """Train as on DuckDB (the same recipe and checks); returns the model as saved."""
    splink_model.train(linker, settings, progress)
    splink_model.smooth_untrained(linker)
    md = splink_model.model_dict(linker)
    problems = splink_model.check_parameters(md)
    if problems:
        raise splink_model.ModelSanityError("; ".join(problems))
    return md


def predict(linker, threshold: float) -> "DataFrame":
    """Scored pairs at or above the threshold: (unique_id_l, unique_id_r, match_probability, match_weight)."""
    df = linker.inference.predict(threshold_match_probability=threshold)
    return df.as_spark_dataframe().select("unique_id_l", "unique_id_r", "match_probability", "match_weight")


def connected_components(edges: "DataFrame", nodes: "DataFrame | None" = None, max_rounds: int = 100
                         ) -> "DataFrame":
    """(node, component) for every node of ``edges`` (columns src, dst) and of ``nodes``
    (column node): the component is its smallest node id.

    Label propagation with pointer jumping: each round a node takes the smallest label among
    itself and its neighbours, then the label of its label; a chain of n nodes settles in about
    log2(n) rounds, not n. Lineage is cut every round (local checkpoints), so a round costs
    the same at round 20 as at round 1."""
    from pyspark.sql import functions as F

    both = edges.select(F.col("src").alias("a"), F.col("dst").alias("b")).unionByName(
        edges.select(F.col("dst").alias("a"), F.col("src").alias("b"))).distinct().localCheckpoint()
    labels = both.select(F.col("a").alias("node")).distinct()
    if nodes is not None:
        labels = labels.unionByName(nodes.select("node")).distinct()
    labels = labels.select("node", F.col("node").alias("label")).localCheckpoint()
    for _ in range(max_rounds):
        offered = both.join(labels.withColumnRenamed("node", "b"), "b").select(F.col("a").alias("node"), "label")
        spread = offered.unionByName(labels).groupBy("node").agg(F.min("label").alias("label"))
        hop = spread.alias("s").join(spread.alias("t"), F.col("s.label") == F.col("t.node")).select(
            F.col("s.node").alias("node"), F.least(F.col("s.label"), F.col("t.label")).alias("label"))
        hop = hop.localCheckpoint()
        changed = hop.alias("n").join(labels.alias("o"), "node").where(F.col("n.label") != F.col("o.label")).count()
        labels = hop
        if changed == 0:
            return labels.select("node", F.col("label").alias("component"))
    raise RuntimeError(f"connected components did not settle in {max_rounds} rounds")


def pair_scorer(spark: "SparkSession", settings: IdentitySettings, scratch: str | None = None):
    """For :func:`identity.pipeline.resolve` (``score_pairs``) on engine: spark: every pair scored
    by Splink's Spark backend with the model the stage trained or reused, returned as the DuckDB
    predict()'s Arrow table (same columns and types), so the constrained merge, stable ids and
    golden records that follow are the DuckDB path's own, exact, code.

    ``scratch``: a local folder (the Spark warehouse's) where the records are written as Parquet
    for Spark to read. Handed over in memory instead, they become one local relation in the
    driver's JVM: at 100k customers (~620k records) that ran a 6 GB driver heap out of memory."""

    def score(records, model: dict, threshold: float):
        import shutil
        import uuid
        from pathlib import Path

        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(scratch) / f"identity_records-{uuid.uuid4().hex}" if scratch else None
        if folder is not None:
            for left in Path(scratch).glob("identity_records-*"):  # a crashed run's (personal data)
                shutil.rmtree(left, ignore_errors=True)
            folder.mkdir(parents=True)
            pq.write_table(records, folder / "records.parquet", row_group_size=100_000)
            frame = spark.read.parquet(str(folder))
        else:
            frame = spark.createDataFrame(records)
        try:
            linker = spark_linker(spark, frame, settings, model=model)
            out = predict(linker, threshold).toArrow()
        finally:
            frame.unpersist()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        id_type = records.schema.field("unique_id").type
        schema = pa.schema([("unique_id_l", id_type), ("unique_id_r", id_type),
                            ("match_probability", pa.float64()), ("match_weight", pa.float64())])
        return out.select(schema.names).cast(schema)

    return score
