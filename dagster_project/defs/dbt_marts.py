"""dbt assets: the `dbt/` project (staging views, intermediate tables, published marts).

The dbt project is installed code (core/dbt_project.py); what dbt writes (manifest, partial-parse
state, one target folder per invocation) lives in the project's ``Config.dbt_target_dir``. dbt
sources map onto the assets that write them (``raw.X`` -> ``raw/X`` from ingestion,
``identity.Y`` -> ``identity/Y`` from identity resolution); models are grouped by layer and keyed
``<layer>/<model>``; dbt data tests become asset checks. The warehouse path and ``as_of`` come from
cdp.yaml through the TesseraResource, as dbt --vars of each invocation: nothing is set in the
process environment, so one process can build several projects.
"""


import contextlib
import io
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from dagster import AssetDep, AssetExecutionContext, AssetKey, AssetSpec, Output
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from core.config import CONFIG_ENV, Config, ConfigError, load_config
from core.dbt_project import (
    DBT_EXECUTABLE,
    WAREHOUSE_VAR,
    built_with_file,
    cache_target_dir,
    dbt_project_dir,
    manifest_is_stale,
    needs_full_refresh,
    project_digest,
)
from core.settings.scoring import dbt_vars
from core.warehouse import fetch_all, open_warehouse
from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import AS_OF_FORMAT, TesseraResource, run_as_of

log = logging.getLogger("tessera.dbt")

# The installed dbt project (package data, see core/dbt_project.py): code only. Everything dbt
# writes goes to the project's Config.dbt_target_dir.
DBT_PROJECT_DIR = dbt_project_dir()
# The dbt layers, which are also the Dagster groups (`cdp run --only marts` runs all three).
DBT_LAYERS = ("staging", "intermediate", "marts")

PARTIAL_PARSE = "partial_parse.msgpack"


def invocation_vars(config: Config, as_of: Optional[str] = None) -> dict[str, Any]:
    """The --vars of a dbt invocation for a project: its warehouse file (profiles.yml reads it),
    the run's as_of (one per run, dagster_project/defs/resources.py: run_as_of; else cdp.yaml's
    when set, else dbt's default, the invocation's start) and the feature models' settings that
    differ from dbt_project.yml (core.settings.scoring.dbt_vars). dbt re-parses the whole project
    when the vars change, so a run whose as_of differs from the previous run's pays one full parse
    (measured in docs/benchmarks.md); the invocations of one run share the vars and the state."""
    if as_of is None and config.as_of is not None:
        as_of = config.as_of.isoformat()
    return {
        WAREHOUSE_VAR: str(config.warehouse_path),
        **({"as_of": as_of} if as_of is not None else {}),
        **dbt_vars(config.churn, config.cart_intent),
    }


def _load_time_target() -> tuple[Path, dict[str, Any]]:
    """The target folder and vars to parse the manifest with when the definitions load: those of
    the project Dagster was started for ($CDP_CONFIG, as `dagster dev` is), else the cache."""
    if os.environ.get(CONFIG_ENV):
        try:
            config = load_config(os.environ[CONFIG_ENV])
            return config.dbt_target_dir, invocation_vars(config)
        except (ConfigError, OSError):
            pass
    folder = cache_target_dir()
    return folder, {WAREHOUSE_VAR: str(folder / "parse_only.duckdb")}  # `dbt parse` never opens it


def _manifest_is_stale(project: DbtProject) -> bool:
    return manifest_is_stale(Path(project.manifest_path))


def _seed_partial_parse(state_dir: Path, run_target: Path) -> None:
    """Start an invocation's own target folder from the project's partial-parse state."""
    run_target.mkdir(parents=True, exist_ok=True)
    if (state_dir / PARTIAL_PARSE).exists():
        shutil.copy(state_dir / PARTIAL_PARSE, run_target / PARTIAL_PARSE)


def _keep_partial_parse(run_target: Path, state_dir: Path) -> None:
    """Hand an invocation's parse state back to the project's target folder (atomically: another
    process may be seeding from it)."""
    state = Path(run_target) / PARTIAL_PARSE
    if state.exists():
        tmp = state_dir / f".{PARTIAL_PARSE}-{os.getpid()}"
        shutil.copy(state, tmp)
        os.replace(tmp, state_dir / PARTIAL_PARSE)


def ensure_manifest(project: DbtProject, variables: Mapping[str, Any]) -> Path:
    """`dbt parse` into the project's target folder when its manifest.json is missing or older
    than the dbt project's files, so a fresh install loads without manual steps.

    Not `DbtProject.prepare_if_dev()`: it does nothing outside `dagster dev`, and `cdp run` and a
    deployed code location load without it (a pip-installed wheel has no build step that could
    run `dagster-dbt project prepare-and-package`); under `dagster dev` it re-parses on every
    load (measured: 3.7 CPU-s, 12 s wall on the shared 2 cores, with warm partial-parse state,
    against a few file stats for this check), and its preparer runs the `dbt` found on PATH,
    which `.venv/bin/cdp` does not have. The parse itself is dagster-dbt's (`DbtCliResource.cli`), with the project's vars."""
    if _manifest_is_stale(project):
        log.info("dbt: parsing %s (manifest missing or out of date)", project.project_dir)
        target = Path(project.target_path)
        scratch = target / f".parse-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        _seed_partial_parse(target, scratch)
        try:
            DbtCliResource(project_dir=project, dbt_executable=DBT_EXECUTABLE).cli(
                ["parse", "--quiet", "--vars", json.dumps(dict(variables))], target_path=scratch,
            ).wait()
            # Move the results in atomically: another process may be loading the definitions too.
            for name in (PARTIAL_PARSE, "manifest.json"):
                if (scratch / name).exists():
                    os.replace(scratch / name, target / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return project.manifest_path


_LOAD_TARGET, _LOAD_VARS = _load_time_target()
# The project the definitions are built from. Its target folder only holds the manifest the
# asset definitions are read from (the same for every project: it depends on the dbt code);
# each build writes to the target folder of the project its TesseraResource points at.
DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR, target_path=_LOAD_TARGET)


# The models that read the Python scoring stage's tables (and everything built on them) carry
# this tag. One @dbt_assets cannot both feed the scoring assets and wait on them, so the
# project is split into two selections with scoring in between.
AFTER_SCORING_TAG = "after_scoring"
# What each selection's root models wait for, beside their sources (keys of dagster_project/defs/):
# the core selection after identity (itself after ingestion and the erasure requests), the
# after-scoring one after the declarative segments (after experiments and scoring).
RUNS_AFTER = {False: AssetKey(["identity", "changes"]), True: AssetKey(["segments", "definitions"])}


class TesseraDbtTranslator(DagsterDbtTranslator):
    """dbt sources -> the upstream assets' keys; models -> `<layer>/<model>` in group `<layer>`."""

    def __init__(self) -> None:
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))

    @staticmethod
    def layer(dbt_resource_props: Mapping[str, Any]) -> Optional[str]:
        fqn = dbt_resource_props.get("fqn") or []
        return fqn[1] if len(fqn) > 2 and fqn[1] in DBT_LAYERS else None

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            # raw.web_events -> raw/web_events (ingestion); identity.graph -> identity/graph.
            return AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        layer = self.layer(dbt_resource_props) or dbt_resource_props["config"].get("schema") or "dbt"
        return AssetKey([layer, dbt_resource_props["name"]])

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Optional[DbtProject]) -> AssetSpec:
        """A model with no parent in its own selection also runs after the last Python stage before its selection
        (RUNS_AFTER), so each selection is one step, one dbt invocation: Dagster splits a multi-asset
        into one step per distance from the graph's roots (asset_job._attempt_resolve_node_cycles),
        which made the two selections five invocations of 6-10 CPU-s start-up each, and ran the
        staging tables before the erasure requests were applied to raw.*."""
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = manifest["nodes"].get(unique_id) if unique_id in manifest.get("nodes", {}) else None
        if props is None or props["resource_type"] not in ("model", "seed", "snapshot"):
            return spec
        after_scoring = AFTER_SCORING_TAG in (props.get("tags") or [])
        for parent in props.get("depends_on", {}).get("nodes", []):
            node = manifest["nodes"].get(parent)
            if node and node["resource_type"] in ("model", "seed", "snapshot") \
                    and (AFTER_SCORING_TAG in (node.get("tags") or [])) == after_scoring:
                return spec  # ordered through a parent in its own selection
        if any(dep.asset_key == RUNS_AFTER[after_scoring] for dep in spec.deps):
            return spec
        return spec.merge_attributes(deps=[AssetDep(RUNS_AFTER[after_scoring])])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> Optional[str]:
        if dbt_resource_props["resource_type"] == "source":
            return None
        return self.layer(dbt_resource_props) or "marts"

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        description = " ".join((dbt_resource_props.get("description") or "").split())
        kind = dbt_resource_props["resource_type"]
        if kind == "model":
            materialized = dbt_resource_props["config"].get("materialized", "view")
            where = f"{dbt_resource_props['config'].get('schema')}.{dbt_resource_props['name']}"
            return f"{description}\n\ndbt {materialized} `{where}`." if description else f"dbt {materialized} `{where}`."
        return description or f"dbt {kind} {dbt_resource_props['name']}"


def _dbt_args(config: Config, as_of: str, full_refresh: bool = False) -> list[str]:
    return ["build", "--vars", json.dumps(invocation_vars(config, as_of)), *(["--full-refresh"] if full_refresh else [])]


class _DbtProgress(io.TextIOBase):
    """Where dagster-dbt echoes dbt's log lines: forward the ones worth seeing (a model built,
    a failure, the summary) to the `tessera.dbt` logger, which `cdp run` prints and Dagster
    records; the full log stays in the run's target folder (dbt.log)."""

    WORTH_SEEING = re.compile(r"\b(OK created|ERROR|FAIL|WARN|Finished running|Completed)\b")

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if self.WORTH_SEEING.search(line):
                log.info("dbt: %s", line.strip())
        return len(text)


def _row_counts(warehouse: Path, relations: dict[str, str]) -> dict[str, int]:
    """Row counts of built tables, read after dbt has exited (DuckDB allows one writer).

    Not dagster-dbt's `fetch_row_counts()`, checked against dagster-dbt 0.29.27 / dbt-duckdb
    1.11.1: it counts through an in-process dbt adapter opened READ_ONLY on the warehouse
    (`DbtCliResource._initialize_dbt_core_adapter`), and dbt-duckdb keeps that DuckDB instance in
    its class-level environment after the counts, so a read-write open of the same file later in
    the process fails with "Can't open a connection to same database file with a different
    configuration" (reproduced: one `dbt run` of two tables, `.stream().fetch_row_counts()`, then
    `duckdb.connect(path)`) - the next step that writes (scoring) would fail. It also counts the
    manifest's `relation_name`, which names the database (the file's stem) of the warehouse the
    definitions' manifest was parsed for (another project's, or the parse-only placeholder)."""
    if not relations:
        return {}
    union = " UNION ALL ".join(
        f"SELECT '{uid}' AS uid, count(*) AS n FROM {rel}" for uid, rel in relations.items()
    )
    with open_warehouse(warehouse, read_only=True) as con:
        return {uid: n for uid, n in fetch_all(con, union)}


def _build(context: AssetExecutionContext, dbt: DbtCliResource, tessera: TesseraResource):
    """`dbt build` of the selection the context asks for, in the project's target folder, with
    row counts and the as_of the marts were built with as metadata."""
    config = tessera.load()
    as_of = run_as_of(context, config).strftime(AS_OF_FORMAT)
    state_dir = config.dbt_target_dir
    run_target = state_dir / "runs" / f"{context.op_execution_context.op.name}-{context.run.run_id[:8]}-{uuid.uuid4().hex[:7]}"
    _seed_partial_parse(state_dir, run_target)
    op_name = context.op_execution_context.op.name
    full_refresh = needs_full_refresh(state_dir, op_name)
    if full_refresh:
        log.info("dbt: --full-refresh (the dbt project changed since this selection's last build, or none is recorded)")
    if config.engine == "spark":  # dbt-spark in this process's session (dagster_project/defs/dbt_spark.py)
        yield from _build_on_spark(context, tessera, config, as_of, full_refresh, run_target)
        _keep_partial_parse(run_target, state_dir)
        built_with_file(state_dir, op_name).write_text(project_digest())
        return
    # dbt writes the warehouse: only under the project's run lock (dagster_project/run_guard.py).
    with tessera.project_held():
        invocation = dbt.cli(_dbt_args(config, as_of, full_refresh), context=context, raise_on_error=False,
                             target_path=run_target)
        with contextlib.redirect_stdout(_DbtProgress()):
            events = list(invocation.stream())
    _keep_partial_parse(run_target, state_dir)

    nodes = invocation.manifest["nodes"]
    built_tables = {}
    for event in events:
        if isinstance(event, Output):
            uid = str(getattr(event.metadata.get("unique_id"), "value", event.metadata.get("unique_id")))
            node = nodes.get(uid, {})
            if node.get("config", {}).get("materialized") in ("table", "incremental"):
                built_tables[uid] = f'"{node["schema"]}"."{node["alias"]}"'
    counts: dict[str, int] = {}
    try:
        counts = _row_counts(config.warehouse_path, built_tables)
    except Exception as e:  # metadata only: never fail a good build over it
        log.warning("dbt: could not read row counts: %s", e)
    for event in events:
        if isinstance(event, Output):
            uid = str(getattr(event.metadata.get("unique_id"), "value", event.metadata.get("unique_id")))
            extra: dict[str, Any] = {"as_of": as_of}
            if uid in counts:
                extra["dagster/row_count"] = counts[uid]  # Dagster's standard row-count key
            event = event.with_metadata({**event.metadata, **extra})
        yield event

    error = invocation.get_error()
    if error is not None:
        raise error
    built_with_file(state_dir, op_name).write_text(project_digest())


def _build_on_spark(context: AssetExecutionContext, tessera: TesseraResource, config: Config, as_of: str,
                    full_refresh: bool, run_target: Path):
    from core import spark_bridge
    from dagster_project.defs.dbt_spark import build_on_spark
    from ingestion.spark_loader import ensure_raw_tables

    manifest = json.loads(ensure_manifest(DBT_PROJECT, _LOAD_VARS).read_text())
    with tessera.spark() as spark:
        ensure_raw_tables(spark, config)
        spark_bridge.declare_exported(spark, config)
        yield from build_on_spark(context, spark, _dbt_args(config, as_of, full_refresh), run_target, manifest,
                                  TesseraDbtTranslator(), as_of)


@dbt_assets(
    manifest=ensure_manifest(DBT_PROJECT, _LOAD_VARS),
    project=DBT_PROJECT,
    dagster_dbt_translator=TesseraDbtTranslator(),
    name="dbt_core",
    exclude=f"tag:{AFTER_SCORING_TAG}",
    pool=WAREHOUSE_POOL,
)
def dbt_core(context: AssetExecutionContext, dbt: DbtCliResource, tessera: TesseraResource):
    """Staging, intermediate and the marts that need no model scores."""
    yield from _build(context, dbt, tessera)


@dbt_assets(
    manifest=ensure_manifest(DBT_PROJECT, _LOAD_VARS),
    project=DBT_PROJECT,
    dagster_dbt_translator=TesseraDbtTranslator(),
    name="dbt_after_scoring",
    select=f"tag:{AFTER_SCORING_TAG}",
    pool=WAREHOUSE_POOL,
)
def dbt_after_scoring(context: AssetExecutionContext, dbt: DbtCliResource, tessera: TesseraResource):
    """The marts built on the scoring stage's outputs: scores, offers, segment membership."""
    yield from _build(context, dbt, tessera)


DBT_ASSETS = [dbt_core, dbt_after_scoring]
# The resource the dbt assets need; add to Definitions(resources=...). It carries no project:
# the warehouse and the target folder come from the TesseraResource with each invocation.
DBT_RESOURCES = {"dbt": DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=DBT_EXECUTABLE)}
