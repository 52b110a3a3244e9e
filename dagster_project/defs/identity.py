"""Identity assets: raw.* -> identity.records / graph / golden (one multi-asset: one run of the
stage writes them together), with checks on the model and on the clusters."""


import logging

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource, run_as_of
from identity.evaluate import evaluate, truth_path
from identity.pipeline import resolve
from identity.splink_model import ModelSanityError

IDENTITY_GROUP = "identity"
log = logging.getLogger("tessera.identity")

RAW_INPUTS = ["web_events", "email_subscribers", "email_events", "pos_transactions", "pos_loyalty_members",
              "support_tickets"]
RECORDS_KEY = AssetKey(["identity", "records"])
GRAPH_KEY = AssetKey(["identity", "graph"])
GOLDEN_KEY = AssetKey(["identity", "golden"])
CHANGES_KEY = AssetKey(["identity", "changes"])


def _spark_scorer(tessera: TesseraResource, config):
    """engine: spark - Splink's pairs scored on Spark; None (DuckDB's) otherwise."""
    if config.engine != "spark":
        return None
    from core.settings.identity import settings_of
    from core.spark import local_dir
    from identity.spark_splink import pair_scorer

    # (records go to Spark through Parquet files when the warehouse is a local or mounted path)
    scratch = str(folder / "_scratch") if (folder := local_dir(config.spark_warehouse)) else None
    with tessera.spark() as spark:  # (the session outlives the block: one per process)
        return pair_scorer(spark, settings_of(config), scratch)


@multi_asset(
    name="identity_resolution",
    specs=[
        AssetSpec(RECORDS_KEY, group_name=IDENTITY_GROUP, kinds={"duckdb", "python"},
                  # erasure requests are applied to raw.* before identity reads it
                  deps=[*(AssetKey(["raw", t]) for t in RAW_INPUTS), AssetKey(["privacy", "erasure"])],
                  description="One row per source record (loyalty member, subscriber, ticket, receipt with an "
                              "identifier, web device, web account) with normalised identifiers."),
        AssetSpec(GRAPH_KEY, group_name=IDENTITY_GROUP, kinds={"duckdb", "python", "splink"}, deps=[RECORDS_KEY],
                  description="Each identity record's stable person_id, how it was matched (deterministic rule or "
                              "Splink) and the match probability. Edges and their accept/refuse reasons are in "
                              "identity.edges; the run's trained Splink model JSON is kept next to the warehouse."),
        AssetSpec(GOLDEN_KEY, group_name=IDENTITY_GROUP, kinds={"duckdb"}, deps=[GRAPH_KEY],
                  description="Golden record per person: best name, email, phone, address, date of birth, each with "
                              "its source, by the survivorship rules in identity.survivorship."),
        AssetSpec(CHANGES_KEY, group_name=IDENTITY_GROUP, kinds={"duckdb"}, deps=[GRAPH_KEY],
                  description="Per run: person ids that are new, merged into another, split from another, or erased "
                              "(identity.changes), and each record's id history (identity.id_history)."),
    ],
    check_specs=[
        AssetCheckSpec("model_parameters_sane", asset=GRAPH_KEY,
                       description="Every trained m/u probability is a probability, agreement is evidence for a "
                                   "match and disagreement against (fails the run with the reason otherwise)."),
        AssetCheckSpec("no_cluster_with_two_unique_ids", asset=GRAPH_KEY,
                       description="No person holds two loyalty ids of one source or two login user ids."),
        AssetCheckSpec("largest_cluster_under_cap", asset=GRAPH_KEY,
                       description="No person holds more profile records than identity.max_cluster_size; merges "
                                   "that would have are held for review."),
    ],
    pool=WAREHOUSE_POOL,
)
def identity_resolution(context: AssetExecutionContext, tessera: TesseraResource):
    config = tessera.load()
    with tessera.warehouse(spark_writes=("identity",)) as con:
        try:
            result = resolve(config, con, run_id=context.run.run_id.replace("-", "")[:24] or None,
                             as_of=run_as_of(context, config), progress=log.info,
                             score_pairs=_spark_scorer(tessera, config))
        except ModelSanityError as e:
            raise RuntimeError(f"identity: {e}") from e
        evaluation = None
        if truth_path(config).is_file():
            evaluation = evaluate(con, truth_path(config))
        n_changes = con.sql("SELECT count(*) FROM identity.changes WHERE run_id = ?", params=[result.run_id]).fetchall()[0][0]
    ident = config.identity
    common = {"run_id": result.run_id}
    graph_meta = {
        **common,
        "records": result.records, "persons": result.persons, "merge_rate": result.merge_rate,
        "largest_cluster": result.largest_cluster, "largest_profile_cluster": result.largest_profile_cluster,
        "held_for_review": result.held_clusters, "deterministic_edges": result.deterministic_edges,
        "splink_pairs": result.splink_pairs, "edges_refused": result.edges_refused,
        "refused_by_reason": result.refused_by_reason, "match_threshold": ident.match_threshold,
        "model_path": MetadataValue.path(result.model_path) if result.model_path else "none",
        "model_decision": result.model_decision or "none",  # trained (and why) or the saved model reused
        "splink_scored_new": "all pairs" if result.splink_scored_new is None else result.splink_scored_new,
        "timings_s": result.timings,
    }
    if evaluation:
        for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_precision", "bcubed_recall",
                  "bcubed_f1", "over_merged_clusters", "under_merged_persons", "pairwise_recall_linkable",
                  "pairwise_recall_linkable_by_identifiers"):
            graph_meta[f"eval_{k}"] = evaluation[k]
    yield MaterializeResult(asset_key=RECORDS_KEY, metadata={**common, "records": result.records})
    yield MaterializeResult(asset_key=GRAPH_KEY, metadata=graph_meta)
    yield MaterializeResult(asset_key=GOLDEN_KEY, metadata={**common, "persons": result.persons})
    yield MaterializeResult(asset_key=CHANGES_KEY, metadata={**common, "changes": result.changes,
                                                             "change_rows": n_changes})
    yield AssetCheckResult(asset_key=GRAPH_KEY, check_name="model_parameters_sane",
                           passed=not result.model_problems, severity=AssetCheckSeverity.ERROR,
                           metadata={"problems": "; ".join(result.model_problems) or "none",
                                     "notes": "; ".join(result.model_notes) or "none"})
    yield AssetCheckResult(asset_key=GRAPH_KEY, check_name="no_cluster_with_two_unique_ids",
                           passed=result.unique_id_conflicts == 0, severity=AssetCheckSeverity.ERROR,
                           metadata={"conflicting_persons": result.unique_id_conflicts})
    yield AssetCheckResult(asset_key=GRAPH_KEY, check_name="largest_cluster_under_cap",
                           passed=result.largest_profile_cluster <= ident.max_cluster_size,
                           severity=AssetCheckSeverity.WARN,
                           metadata={"largest_profile_cluster": result.largest_profile_cluster,
                                     "cap": ident.max_cluster_size, "held_for_review": result.held_clusters})


IDENTITY_ASSETS = [identity_resolution]
