"""dbt assets: the `dbt/` project (staging views, intermediate tables, published marts).

The dbt project is installed code (core/dbt_project.py); what dbt writes (manifest, partial-parse
state, one target folder per invocation) lives in the project's ``Config.dbt_target_dir``. dbt
sources map onto the assets that write them (``raw.X`` -> ``raw/X`` from ingestion,
``identity.Y`` -> ``identity/Y`` from identity resolution); models are grouped by layer and keyed
``<layer>/<model>``; dbt data tests become asset checks. The warehouse path comes from cdp.yaml
through the TesseraResource as a dbt --var of each invocation, the run's ``as_of`` as the
environment variable TESSERA_AS_OF of the dbt process only (so a new as_of keeps dbt's
partial-parse state): nothing stays set in this process's environment, so one process can build
several projects.
"""


import contextlib
import io
import json
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetSpec,
    Failure,
    MetadataValue,
    Output,
)
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.asset_utils import get_asset_check_key_for_test, get_manifest_and_translator_from_dbt_assets

from core.config import CONFIG_ENV, Config, ConfigError, load_config
from core.dbt_project import (
    DBT_EXECUTABLE,
    WAREHOUSE_VAR,
    built_with_file,
    cache_target_dir,
    dbt_project_dir,
    manifest_is_stale,
    may_scope_tests,
    needs_full_refresh,
    project_digest,
    tests_passed_file,
)
from core.pii import mask_pii
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


MEMORY_LIMIT_VAR = "tessera_duckdb_memory_limit"  # cdp.yaml duckdb.dbt_memory_limit_gb, read by profiles.yml


def invocation_vars(config: Config, as_of: Optional[str] = None) -> dict[str, Any]:
    """The --vars of a dbt invocation for a project: its warehouse file (profiles.yml reads it)
    and the feature models' settings that differ from dbt_project.yml
    (core.settings.scoring.dbt_vars); `as_of` only when given (dbt by hand, a test).

    dbt re-parses the whole project when any --vars value changes, so the run's as_of is not one
    of them: `cdp run` hands it to dbt as the environment variable TESSERA_AS_OF
    (``invocation_env``), which the `as_of()` macro reads only when a node runs. These vars stay
    the same from run to run, so a run with a new as_of keeps dbt's partial-parse state."""
    gb = config.duckdb.dbt_memory_limit_gb
    return {
        WAREHOUSE_VAR: str(config.warehouse_path),
        # DuckDB's memory_limit for the build (profiles.yml); none: DuckDB's default, 80% of the machine
        **({MEMORY_LIMIT_VAR: f"{max(int(gb * 1024), 64)}MiB"} if gb else {}),
        **({"as_of": as_of} if as_of is not None else {}),
        **dbt_vars(config.churn, config.cart_intent),
    }


# The environment variable the `as_of()` macro reads the run's as_of from (dbt/macros/as_of.sql).
AS_OF_ENV = "TESSERA_AS_OF"


# The environment variable that lets a build test only the rows it rewrote (dbt/macros/test_scope.sql).
TESTS_SCOPE_ENV = "TESSERA_TESTS_SCOPE"


def invocation_env(as_of: str, scope_tests: bool = False) -> dict[str, str]:
    """What a dbt invocation of a run adds to its environment: the run's as_of, and whether the
    data tests of the incremental models may read only the rows this build rewrote (empty: all)."""
    return {AS_OF_ENV: as_of, TESTS_SCOPE_ENV: "changed" if scope_tests else ""}


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _dbt_process_environment(values: Mapping[str, str]):
    """`DbtCliResource.cli` starts the dbt process with a copy of os.environ and takes no
    environment of its own: set ``values`` for that moment only, under a lock, and restore them,
    so the process keeps no project's value and two projects built in one process do not mix."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


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


# The one asset check per dbt model that stands for all its dbt data tests.
DBT_TESTS_CHECK = "dbt_tests"


class TesseraDbtTranslator(DagsterDbtTranslator):
    """dbt sources -> the upstream assets' keys; models -> `<layer>/<model>` in group `<layer>`;
    a model's dbt data tests -> one asset check of the model, `dbt_tests` (DBT_TESTS_CHECK).

    Not one asset check per dbt test (dagster-dbt's `enable_asset_checks`): every check costs
    Dagster a planned event, an output and an evaluation written to the run's event log, and the
    ~200 tests of a build were most of a run's ~1,500 events and ~20 CPU-s of its event handling
    (docs/benchmarks.md). Each test's result is in the check's metadata instead (``_build``)."""

    def __init__(self) -> None:
        # enable_asset_checks off: dagster-dbt reports each test as an observation, which _build
        # drops; get_asset_check_spec below still declares the aggregated checks.
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=False))

    def get_asset_check_spec(self, asset_spec: AssetSpec, manifest: Mapping[str, Any], unique_id: str,
                             project: Optional[DbtProject]) -> Optional[AssetCheckSpec]:
        """The model's `dbt_tests` check, for each test attached to it (dagster-dbt keeps one spec
        per check key, so a model's tests make one check)."""
        key = get_asset_check_key_for_test(manifest, self, unique_id, project)
        if key is None or key.asset_key != asset_spec.key:
            return None
        return AssetCheckSpec(
            DBT_TESTS_CHECK, asset=asset_spec.key, blocking=True,
            description="The model's dbt data tests (its YAML's and dbt/tests/'s): passes when every one passes; "
                        "a failing test's name, failing row count and message are in the metadata.",
            # dagster-dbt selects a test by this when only the check is run; _build adds the others
            metadata={"dagster_dbt/unique_id": unique_id},
        )

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


def _dbt_args(config: Config, full_refresh: bool = False) -> list[str]:
    # Unit tests check the models' SQL, which a production build does not change: the test suite
    # runs them (tests/test_dbt_marts.py), a run does not pay for them.
    return ["build", "--exclude-resource-type", "unit_test", "--vars", json.dumps(invocation_vars(config)),
            *(["--full-refresh"] if full_refresh else [])]


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


def _test_check_keys(manifest: Mapping[str, Any], test_ids, translator: DagsterDbtTranslator,
                     project: Optional[DbtProject]) -> dict[str, AssetCheckKey]:
    """dbt test unique_id -> the `dbt_tests` check of the model it tests (tests attached to no
    model of the project are left out)."""
    out = {}
    for uid in test_ids:
        key = get_asset_check_key_for_test(manifest, translator, uid, project) if uid.startswith("test.") else None
        if key is not None:
            out[uid] = AssetCheckKey(key.asset_key, DBT_TESTS_CHECK)
    return out


def dbt_test_checks(run_results: Mapping[str, Any], manifest: Mapping[str, Any], translator: DagsterDbtTranslator,
                    project: Optional[DbtProject] = None) -> dict[AssetCheckKey, AssetCheckResult]:
    """One `dbt_tests` result per model from dbt's run_results.json: passed when every test of
    the model that ran passed; ERROR severity when one failed or errored (WARN when only tests of
    `severity: warn` did); the tests that did not pass named in the metadata (name, status,
    failing rows, dbt's message; masked: a database error can quote a value). Tests dbt skipped
    because their model or one upstream of it did not build are counted, not listed one by one:
    the build's own failure says why, and a list of every skipped test would bury it."""
    results = {r["unique_id"]: r for r in run_results.get("results", []) if r["unique_id"].startswith("test.")}
    by_check: dict[AssetCheckKey, list[Mapping[str, Any]]] = {}
    for uid, key in _test_check_keys(manifest, results, translator, project).items():
        by_check.setdefault(key, []).append(results[uid])
    checks = {}
    for key, tests in by_check.items():
        bad = [t for t in tests if t["status"] != "pass"]
        skipped = [t for t in bad if t["status"] == "skipped"]
        severity = (AssetCheckSeverity.ERROR if any(t["status"] != "warn" for t in bad) or not bad
                    else AssetCheckSeverity.WARN)
        failed = [{"test": manifest["nodes"].get(t["unique_id"], {}).get("name", t["unique_id"]), "status": t["status"],
                   "failing_rows": t.get("failures"), "message": mask_pii(str(t.get("message") or ""))}
                  for t in bad if t["status"] != "skipped"]
        metadata: dict[str, Any] = {"tests": len(tests), "passed_tests": len(tests) - len(bad)}
        details = [f"{f['test']}: {f['status']}" + (f" ({f['failing_rows']} rows)" if f["failing_rows"] else "")
                   for f in failed]
        if failed:
            metadata["failed_tests"] = MetadataValue.json(failed)
        if skipped:
            metadata["skipped_tests"] = len(skipped)
            details.append(f"{len(skipped)} not run: the model or one upstream of it did not build")
        if details:
            metadata["detail"] = "; ".join(details)
        checks[key] = AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=not bad,
                                       severity=severity, metadata=metadata)
    return checks


def dbt_failure_reason(run_results: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """What failed in a dbt invocation, node by node (a failing test with its model), masked."""
    parts = []
    for r in run_results.get("results", []):
        if r["status"] not in ("error", "fail"):
            continue
        node = manifest["nodes"].get(r["unique_id"], {})
        kind, name = r["unique_id"].split(".")[0], node.get("name", r["unique_id"])
        model = node.get("attached_node", "").split(".")[-1] if kind == "test" else ""
        parts.append(f"{kind} {name}" + (f" on {model}" if model else "") + f": {mask_pii(str(r.get('message') or r['status']))}")
    return "; ".join(parts)


def _checks_only_selects(context: AssetExecutionContext, manifest: Mapping[str, Any],
                         translator: DagsterDbtTranslator) -> list[str]:
    """--select for a run of a model's `dbt_tests` check without the model: every test of it
    (dagster-dbt would select the one test named in the check's metadata)."""
    wanted = {k for k in context.selected_asset_check_keys
              if k.name == DBT_TESTS_CHECK and k.asset_key not in context.selected_asset_keys}
    if not wanted:
        return []
    tests = [uid for uid in manifest["nodes"] if uid.startswith("test.")]
    keys = _test_check_keys(manifest, tests, translator, None)
    fqns = sorted(".".join(manifest["nodes"][uid]["fqn"]) for uid, key in keys.items() if key in wanted)
    return ["--select", " ".join(fqns)] if fqns else []


def _build(context: AssetExecutionContext, dbt: DbtCliResource, tessera: TesseraResource):
    """`dbt build` of the selection the context asks for (data tests, not unit tests: those run in
    the test suite, tests/test_dbt_marts.py), in the project's target folder, with row counts and
    the as_of the marts were built with as metadata, and each model's tests as its one `dbt_tests`
    check. A failing test fails the step (nothing downstream, publish included, runs), named."""
    config = tessera.load()
    as_of = run_as_of(context, config).strftime(AS_OF_FORMAT)
    state_dir = config.dbt_target_dir
    run_target = state_dir / "runs" / f"{context.op_execution_context.op.name}-{context.run.run_id[:8]}-{uuid.uuid4().hex[:7]}"
    _seed_partial_parse(state_dir, run_target)
    op_name = context.op_execution_context.op.name
    full_refresh = needs_full_refresh(state_dir, op_name)
    if full_refresh:
        log.info("dbt: --full-refresh (the dbt project changed since this selection's last build, or none is recorded)")
    # Tests read only the rows the build rewrote only after a build that passed them all (a failed
    # or interrupted build leaves no record, and the next build tests everything).
    scope_tests = config.engine != "spark" and may_scope_tests(state_dir, op_name)
    tests_passed_file(state_dir, op_name).unlink(missing_ok=True)
    if config.engine == "spark":  # dbt-spark in this process's session (dagster_project/defs/dbt_spark.py)
        yield from _build_on_spark(context, tessera, config, as_of, full_refresh, run_target)
        _keep_partial_parse(run_target, state_dir)
        built_with_file(state_dir, op_name).write_text(project_digest())
        return
    manifest, translator, _ = get_manifest_and_translator_from_dbt_assets([context.assets_def])
    # dbt writes the warehouse: only under the project's run lock (dagster_project/run_guard.py).
    with tessera.project_held():
        with _dbt_process_environment(invocation_env(as_of, scope_tests)):
            invocation = dbt.cli([*_dbt_args(config, full_refresh), *_checks_only_selects(context, manifest, translator)],
                                 context=context, raise_on_error=False, target_path=run_target)
        with contextlib.redirect_stdout(_DbtProgress()):
            # a test's result comes as an AssetObservation of its model (checks are off in the
            # translator's settings): dropped, summarised per model from run_results.json below
            events = [e for e in invocation.stream() if not isinstance(e, AssetObservation)]
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

    run_results = yield from _test_checks(context, run_target, invocation.manifest, translator)
    error = invocation.get_error()
    if error is not None:
        reason = dbt_failure_reason(run_results, invocation.manifest)
        if reason:
            raise Failure(f"dbt build failed: {reason}") from error
        raise error
    built_with_file(state_dir, op_name).write_text(project_digest())
    tests_passed_file(state_dir, op_name).write_text(project_digest())


def _test_checks(context: AssetExecutionContext, run_target: Path, manifest: Mapping[str, Any],
                 translator: DagsterDbtTranslator):
    """Yield the selected `dbt_tests` checks of a finished invocation; return its run_results."""
    run_results_path = Path(run_target) / "run_results.json"
    run_results = json.loads(run_results_path.read_text()) if run_results_path.exists() else {}
    for key, result in dbt_test_checks(run_results, manifest, translator).items():
        if key in context.selected_asset_check_keys:
            yield result
    return run_results


def _build_on_spark(context: AssetExecutionContext, tessera: TesseraResource, config: Config, as_of: str,
                    full_refresh: bool, run_target: Path):
    from core import spark_bridge
    from dagster_project.defs.dbt_spark import build_on_spark
    from ingestion.spark_loader import ensure_raw_tables

    manifest = json.loads(ensure_manifest(DBT_PROJECT, _LOAD_VARS).read_text())
    with tessera.spark() as spark:
        ensure_raw_tables(spark, config)
        spark_bridge.declare_exported(spark, config)
        translator = TesseraDbtTranslator()
        # dbt runs in this process: the as_of is in os.environ for the build only, as for the subprocess
        with _dbt_process_environment(invocation_env(as_of)):
            ok, exception = yield from build_on_spark(context, spark, _dbt_args(config, full_refresh), run_target,
                                                      manifest, translator, as_of)
    run_results = yield from _test_checks(context, run_target, manifest, translator)
    if not ok:
        reason = dbt_failure_reason(run_results, manifest) or str(exception or "no reason given")
        raise Failure(f"dbt build on Spark failed: {reason}", allow_retries=False)


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
class TesseraDbtCli(DbtCliResource):
    """dagster-dbt's dbt CLI resource without the dbt adapter it opens in this process for each
    invocation (``_initialize_dbt_core_adapter``: the profile and project loaded, an adapter
    registered; 1.4 CPU-s for the first invocation of a process, 0.5 for each next, measured with
    dagster-dbt 0.29.27). It serves only `fetch_row_counts()` / `fetch_column_metadata()`, which the
    builds do not use (row counts: ``_row_counts``)."""

    def _initialize_dbt_core_adapter(self, args):  # noqa: ARG002 - dagster-dbt's signature
        return None


DBT_RESOURCES = {"dbt": TesseraDbtCli(project_dir=DBT_PROJECT, dbt_executable=DBT_EXECUTABLE)}
