"""dbt assets: the `dbt/` project (staging views, intermediate tables, published marts).

One ``DbtProject`` is the single source of truth for paths. dbt sources map onto the assets
that write them (``raw.X`` -> ``raw/X`` from ingestion, ``identity.Y`` -> ``identity/Y``
from identity resolution); models are grouped by layer and keyed ``<layer>/<model>``; dbt
data tests become asset checks. The warehouse path and ``as_of`` come from cdp.yaml.
"""


import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from dagster import AssetExecutionContext, AssetKey, Output
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from core.config import CONFIG_ENV, ConfigError, load_config
from core.settings.scoring import dbt_vars
from core.warehouse import fetch_all, open_warehouse, table_exists
from dagster_project.defs.ingestion import WAREHOUSE_POOL
from dagster_project.defs.resources import TesseraResource

log = logging.getLogger("tessera.dbt")

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
# profiles.yml reads the warehouse file from this variable.
WAREHOUSE_ENV = "TESSERA_WAREHOUSE"
# The dbt layers, which are also the Dagster groups (`cdp run --only marts` runs all three).
DBT_LAYERS = ("staging", "intermediate", "marts")

# dbt from this interpreter's environment: `cdp` is often run as .venv/bin/cdp, without the
# venv's bin/ on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).parent / "dbt") if (Path(sys.executable).parent / "dbt").exists() else "dbt"

DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR)


@contextmanager
def _warehouse_env(path: Path | str) -> Iterator[None]:
    """Point profiles.yml at a warehouse file for the duration of a dbt invocation.

    Also sets dbt's indirect selection to `buildable`: Dagster may run a subset of a dbt
    selection as its own step, and with dbt's default (`eager`) a subset holding `customers`
    would pull in the relationship tests of after-scoring models that are not built yet."""
    wanted = {WAREHOUSE_ENV: str(path), "DBT_INDIRECT_SELECTION": os.environ.get("DBT_INDIRECT_SELECTION", "buildable")}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parse_warehouse_path() -> Path:
    """The warehouse path to parse with: the configured one when cdp.yaml is at hand (so a
    run's `dbt build` can reuse the parse: dbt re-parses everything when the profile changes),
    else a placeholder (`dbt parse` never opens it)."""
    if os.environ.get(WAREHOUSE_ENV):
        return Path(os.environ[WAREHOUSE_ENV])
    try:
        return load_config(os.environ.get(CONFIG_ENV)).warehouse_path
    except (ConfigError, OSError):
        return DBT_PROJECT.project_dir / DBT_PROJECT.target_path / "parse_only.duckdb"


def _manifest_is_stale(project: DbtProject) -> bool:
    manifest = project.manifest_path
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [project.project_dir / "dbt_project.yml", project.project_dir / "profiles.yml"]
    for folder in ("models", "macros", "tests", "snapshots", "seeds"):
        sources.extend(p for p in (project.project_dir / folder).rglob("*") if p.is_file())
    return any(p.stat().st_mtime > built for p in sources if p.exists())


def ensure_manifest(project: DbtProject = DBT_PROJECT) -> Path:
    """`dbt parse` when target/manifest.json is missing or older than the project's files, so a
    fresh clone loads without manual steps (a cold parse takes ~10-15 s on 2 cores; an
    up-to-date manifest costs nothing)."""
    if _manifest_is_stale(project):
        log.info("dbt: parsing %s (manifest missing or out of date)", project.project_dir)
        target = project.project_dir / project.target_path
        scratch = target / f".parse-{os.getpid()}"
        env = {**os.environ, WAREHOUSE_ENV: str(_parse_warehouse_path()), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        if (target / "partial_parse.msgpack").exists():
            scratch.mkdir(parents=True, exist_ok=True)
            shutil.copy(target / "partial_parse.msgpack", scratch / "partial_parse.msgpack")
        try:
            done = subprocess.run(
                [DBT_EXECUTABLE, "parse", "--quiet", "--project-dir", str(project.project_dir),
                 "--profiles-dir", str(project.profiles_dir), "--target-path", str(scratch)],
                env=env, capture_output=True, text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"dbt parse failed in {project.project_dir}:\n{done.stdout}{done.stderr}")
            # Move the results in atomically: another process may be loading the definitions too.
            for name in ("partial_parse.msgpack", "manifest.json"):
                if (scratch / name).exists():
                    os.replace(scratch / name, target / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return project.manifest_path


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


def _dbt_args(as_of, model_vars: dict | None = None) -> list[str]:
    # Without an as_of in cdp.yaml, dbt's default (the invocation's start) applies and no --vars
    # is passed: changing vars makes dbt re-parse the whole project. `model_vars` are the
    # feature models' settings that differ from dbt_project.yml (core.settings.scoring.dbt_vars).
    args = ["build"]
    variables = {**({"as_of": as_of.isoformat()} if as_of is not None else {}), **(model_vars or {})}
    if variables:
        args += ["--vars", json.dumps(variables)]
    return args


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


def _keep_partial_parse(run_target: Path) -> None:
    """Hand the run's parse state back to the project's target/: each run parses in a target
    folder of its own seeded from there, and dbt re-parses everything when the profile (the
    warehouse path) or the vars differ from that seed's."""
    state = Path(run_target) / "partial_parse.msgpack"
    if state.exists():
        tmp = DBT_PROJECT.project_dir / DBT_PROJECT.target_path / f".partial_parse-{os.getpid()}"
        shutil.copy(state, tmp)
        os.replace(tmp, DBT_PROJECT.project_dir / DBT_PROJECT.target_path / "partial_parse.msgpack")


def _row_counts(warehouse: Path, relations: dict[str, str]) -> dict[str, int]:
    """Row counts of built tables, read after dbt has exited (DuckDB allows one writer)."""
    if not relations:
        return {}
    union = " UNION ALL ".join(
        f"SELECT '{uid}' AS uid, count(*) AS n FROM {rel}" for uid, rel in relations.items()
    )
    with open_warehouse(warehouse, read_only=True) as con:
        return {uid: n for uid, n in fetch_all(con, union)}


def _built_as_of(warehouse: Path) -> Optional[str]:
    """The as_of the marts were built with (dbt resolves 'now' itself); None before
    marts.customers is first built (a step of staging models only)."""
    with open_warehouse(warehouse, read_only=True) as con:
        if not table_exists(con, "marts", "customers"):
            return None
        rows = fetch_all(con, "SELECT max(as_of) FROM marts.customers")
    return rows[0][0].isoformat(sep=" ") if rows and rows[0][0] is not None else None


def _build(context: AssetExecutionContext, dbt: DbtCliResource, tessera: TesseraResource):
    """`dbt build` of the selection the context asks for, with row counts and as_of as metadata."""
    config = tessera.load()
    # dbt writes the warehouse: only under the project's run lock (dagster_project/run_guard.py).
    with tessera.project_held(), _warehouse_env(config.warehouse_path):
        invocation = dbt.cli(_dbt_args(config.as_of, dbt_vars(config.churn, config.cart_intent)), context=context,
                             raise_on_error=False)
        with contextlib.redirect_stdout(_DbtProgress()):
            events = list(invocation.stream())
    _keep_partial_parse(invocation.target_path)

    nodes = invocation.manifest["nodes"]
    built_tables = {}
    for event in events:
        if isinstance(event, Output):
            uid = str(getattr(event.metadata.get("unique_id"), "value", event.metadata.get("unique_id")))
            node = nodes.get(uid, {})
            if node.get("config", {}).get("materialized") in ("table", "incremental"):
                built_tables[uid] = f'"{node["schema"]}"."{node["alias"]}"'
    counts: dict[str, int] = {}
    as_of = None
    try:
        counts = _row_counts(config.warehouse_path, built_tables)
        if built_tables:
            as_of = _built_as_of(config.warehouse_path)
    except Exception as e:  # metadata only: never fail a good build over it
        log.warning("dbt: could not read row counts / as_of: %s", e)
    as_of = as_of or (config.as_of.isoformat() if config.as_of else "now")
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


# The models that read the Python scoring stage's tables (and everything built on them) carry
# this tag. One @dbt_assets cannot both feed the scoring assets and wait on them, so the
# project is split into two selections with scoring in between.
AFTER_SCORING_TAG = "after_scoring"


@dbt_assets(
    manifest=ensure_manifest(),
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
    manifest=ensure_manifest(),
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
# The resource the dbt assets need; add to Definitions(resources=...).
DBT_RESOURCES = {"dbt": DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=DBT_EXECUTABLE)}
