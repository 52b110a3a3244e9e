"""Experiments assets (experiments/ package): assignment with the time of first exposure, then
the per-arm results. Between dbt's core models (customers, orders, the RFM and lifecycle segments)
and scoring, which takes next-best-offer's holdout from the offers experiment's assignments; the
dbt marts tagged after_scoring publish both as experiment_assignments and experiment_results."""


import logging

from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, multi_asset

from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource, run_as_of
from experiments.pipeline import run_experiments

EXPERIMENTS_GROUP = "experiments"
log = logging.getLogger("tessera.experiments")

ASSIGNMENTS_KEY = AssetKey(["experiments", "assignments"])
RESULTS_KEY = AssetKey(["experiments", "results"])
# The dbt core models the stage reads (keys as dagster_project/defs/dbt_marts.py names them).
INPUTS = [AssetKey(["marts", "customers"]), AssetKey(["intermediate", "int_orders"]),
          AssetKey(["intermediate", "int_segment_membership"]),
          AssetKey(["marts", "identity_changes"])]  # merges and splits the assignments follow


@multi_asset(
    name="experiments",
    specs=[
        AssetSpec(ASSIGNMENTS_KEY, group_name=EXPERIMENTS_GROUP, kinds={"duckdb", "python"}, deps=INPUTS,
                  description="Arm per current person and experiment (stable hash of person_id and the experiment name "
                              "at first exposure, experiments/assignment.py), following identity's merges and "
                              "splits (experiments/remap.py); the hash's log is experiments.exposures."),
        AssetSpec(RESULTS_KEY, group_name=EXPERIMENTS_GROUP, kinds={"duckdb", "python"}, deps=[ASSIGNMENTS_KEY],
                  description="Lift per experiment and arm with intervals, posterior, SRM, MDE and the "
                              "alpha-spending decision (experiments/analysis.py)."),
    ],
    pool=WAREHOUSE_POOL,
)
def experiments(context: AssetExecutionContext, tessera: TesseraResource):
    config = tessera.load()
    with tessera.warehouse(spark_writes=("experiments",)) as con:
        try:
            results = run_experiments(con, config.experiments, run_as_of(context, config), progress=log.info)
        except ValueError as e:
            raise RuntimeError(str(e)) from e
        exposed = con.execute("SELECT count(*) FROM experiments.assignments").fetchall()[0][0]
    yield MaterializeResult(asset_key=ASSIGNMENTS_KEY, metadata={"dagster/row_count": int(exposed)})
    yield MaterializeResult(asset_key=RESULTS_KEY, metadata={
        "dagster/row_count": int(len(results)), "experiments": [e.name for e in config.experiments],
        "srm_flagged": sorted(set(results.loc[results["srm_flag"].fillna(False).astype(bool), "experiment"]))})


EXPERIMENT_ASSETS = [experiments]
