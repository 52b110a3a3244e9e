"""Declarative segments asset: the marketers' segments file evaluated against the warehouse.

Runs after the core dbt selection (it reads marts.customer_traits and the intermediate event
tables) and, when the scoring stage is present, after it (segments may use churn and intent
scores). It writes ``segments.declarative_membership`` and ``segments.definitions``, which the
after-scoring dbt selection unions into segment_membership / its history and lists in
segment_catalog (dbt sources ``source('segments', ...)``).
"""

from __future__ import annotations

import logging

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource
from segments.evaluator import load_configured_segments, run_as_of, write_segments
from segments.model import SegmentFileError

log = logging.getLogger("tessera.segments")

SEGMENTS_GROUP = "segments"
DECLARATIVE_MEMBERSHIP_KEY = AssetKey(["segments", "declarative_membership"])

# What the compiled queries read (segments/vocabulary.py), and the scoring outputs they may use.
UPSTREAM = [
    AssetKey(["marts", "customer_traits"]),
    AssetKey(["intermediate", "int_orders"]),
    AssetKey(["intermediate", "int_order_lines"]),
    AssetKey(["intermediate", "int_web_product_events"]),
    AssetKey(["intermediate", "int_email_activity"]),
    AssetKey(["scoring", "churn_predictions"]),
    AssetKey(["scoring", "cart_predictions"]),
]


@asset(
    key=DECLARATIVE_MEMBERSHIP_KEY,
    group_name=SEGMENTS_GROUP,
    deps=UPSTREAM,
    kinds={"duckdb", "python"},
    pool=WAREHOUSE_POOL,
    description="Members of every declarative segment (the file named by cdp.yaml's `segments.file`) at the "
                "run's as_of, in segments.declarative_membership(segment, person_id, as_of), and each "
                "segment's description and definition in segments.definitions.",
)
def declarative_membership(context: AssetExecutionContext, tessera: TesseraResource) -> MaterializeResult:
    config = tessera.load()
    try:
        segment_file = load_configured_segments(config.segments_file)
    except SegmentFileError as e:
        raise RuntimeError(str(e)) from None  # the message names the segment, the condition and the fix
    with tessera.warehouse() as con:
        as_of = run_as_of(con)
        try:
            results = write_segments(con, segment_file, as_of)
        except SegmentFileError as e:
            raise RuntimeError(str(e)) from None
    sizes = {r.name: r.members for r in results}
    return MaterializeResult(metadata={
        "segments_file": str(config.segments_file),
        "as_of": as_of.isoformat(sep=" "),
        "segments": len(results),
        "dagster/row_count": sum(sizes.values()),
        "members_per_segment": MetadataValue.json(sizes),
    })


SEGMENT_ASSETS = [declarative_membership]
