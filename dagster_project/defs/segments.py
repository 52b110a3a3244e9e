"""Declarative segments asset: the marketers' segments file evaluated against the warehouse.

Runs after the core dbt selection (it reads marts.customer_traits and the intermediate event
tables) and, when the scoring stage is present, after it (segments may use churn and intent
scores). It writes ``segments.declarative_membership`` and ``segments.definitions``, which the
after-scoring dbt selection unions into segment_membership / its history and lists in
segment_catalog (dbt sources ``source('segments', ...)``).
"""


import logging

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from dagster_project.defs import resources
from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource
from dagster_project.defs.scoring import SCORING_ASSETS
from segments.evaluator import load_configured_segments, run_as_of, write_segments
from segments.model import SegmentFileError

log = logging.getLogger("tessera.segments")

SEGMENTS_GROUP = "segments"
DECLARATIVE_MEMBERSHIP_KEY = AssetKey(["segments", "declarative_membership"])
DEFINITIONS_KEY = AssetKey(["segments", "definitions"])

# What the compiled queries read (segments/vocabulary.py).
CORE_INPUTS = [
    AssetKey(["marts", "customer_traits"]),
    AssetKey(["intermediate", "int_orders"]),
    AssetKey(["intermediate", "int_order_lines"]),
    AssetKey(["intermediate", "int_web_product_events"]),
    AssetKey(["intermediate", "int_email_activity"]),
]


def _scoring_outputs() -> list[AssetKey]:
    """The scoring stage's assets (`scoring/*`): segments may use churn and intent scores, so they
    are evaluated after it."""
    keys = set()
    for definition in SCORING_ASSETS:
        if isinstance(definition, AssetsDefinition):
            keys |= {k for k in definition.keys if k.path[0] == "scoring"}
    return sorted(keys, key=lambda k: k.to_user_string())


@multi_asset(
    name="declarative_segments",
    specs=[
        AssetSpec(
            DECLARATIVE_MEMBERSHIP_KEY, group_name=SEGMENTS_GROUP, kinds={"duckdb", "python"},
            deps=[*CORE_INPUTS, *_scoring_outputs()],
            description="Members of every declarative segment (the file named by cdp.yaml's `segments.file`) "
                        "at the run's as_of: segments.declarative_membership(segment, person_id, as_of).",
        ),
        AssetSpec(
            DEFINITIONS_KEY, group_name=SEGMENTS_GROUP, kinds={"duckdb", "python"},
            deps=[DECLARATIVE_MEMBERSHIP_KEY],
            description="Each declarative segment's description and definition (its `where` as JSON): "
                        "segments.definitions(segment, description, definition, as_of).",
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def declarative_segments(context: AssetExecutionContext, tessera: TesseraResource):
    config = tessera.load()
    try:
        segment_file = load_configured_segments(config.segments_file)
    except SegmentFileError as e:
        raise RuntimeError(str(e)) from None  # the message names the segment, the condition and the fix
    with tessera.warehouse(spark_writes=("segments",)) as con:
        as_of = run_as_of(con, default=resources.run_as_of(context, config).replace(tzinfo=None))
        try:
            results = write_segments(con, segment_file, as_of)
        except SegmentFileError as e:
            raise RuntimeError(str(e)) from None
    sizes = {r.name: r.members for r in results}
    common = {"segments_file": str(config.segments_file), "as_of": as_of.isoformat(sep=" "), "segments": len(results)}
    yield MaterializeResult(asset_key=DECLARATIVE_MEMBERSHIP_KEY, metadata={
        **common, "dagster/row_count": sum(sizes.values()), "members_per_segment": MetadataValue.json(sizes)})
    yield MaterializeResult(asset_key=DEFINITIONS_KEY, metadata={**common, "dagster/row_count": len(results)})


SEGMENT_ASSETS = [declarative_segments]
