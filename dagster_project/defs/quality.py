"""The expectations stage (the gate before publishing) and write-audit-publish, as Dagster asset
checks and the publish asset (the module keeps its name: the runner and the definitions import it).

- ``expectations_sources``: checks on every raw table (GX suites on this run's loads).
- ``expectations_gate``: checks on every published mart (GX suites, identity sanity, drift against
  the last published snapshot). Blocking checks fail with ERROR severity: Dagster then skips
  everything downstream of the checked asset, which is ``publish/snapshot``.
- ``publish/snapshot``: downstream of every published mart; writes the new snapshot aside and
  switches it in atomically (``publish.snapshot``) only once the gate passed.

Drift failures can be accepted deliberately with the run tag ``tessera/accept_drift=true``
(what ``cdp publish --accept-drift`` and ``cdp run --accept-drift`` set): they are then
reported with WARN severity and do not block. Logic lives in ``expectations/`` and ``publish/``.
"""


import logging
from datetime import datetime, timezone

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset_check,
)

from activation.state import sync_overview
from core.contracts import ENTITIES
from core.pii import mask_pii
from core.published import PublishedTable, published_tables
from core.warehouse import fetch_all, table_exists
from dagster_project.defs.ingestion import WAREHOUSE_POOL, raw_asset_key
from dagster_project.defs.resources import TesseraResource
from expectations.gate import FULL, existing_tables, gate_for_run, run_gate, run_source_checks
from expectations.suites import DRIFT_METRICS, IDENTITY_METRICS, published_metrics, source_metrics
from marketing.report import write_report
from publish.snapshot import publish_build

log = logging.getLogger("tessera.expectations")

PUBLISH_GROUP = "publish"
PUBLISH_KEY = AssetKey(["publish", "snapshot"])
ACCEPT_DRIFT_TAG = "tessera/accept_drift"
NON_BLOCKING = {"row_count", "formats"}

CHECK_DESCRIPTIONS = {
    "schema": "The table has every column the contract requires (GX expect_table_columns_to_match_set).",
    "not_empty": "The table has rows.",
    "row_count": "Row count (recorded; never blocks).",
    "keys_not_null": "No row has a null key.",
    "keys_unique": "No key value appears twice.",
    "probabilities_in_range": "Every probability is a number in [0, 1].",
    "values_in_set": "Enumerated columns hold only their allowed values.",
    "values_non_negative": "Counts and hours are never negative.",
    "persons_exist": "Every person_id is a person in customers.",
    "email_audience_has_consent": "Every next_best_offer row with channel 'email' is a person with a granted "
                                  "email_marketing consent.",
    "one_offer_per_contactable_person": "Every person with a granted marketing consent has an offer row.",
    "identity_largest_cluster": "No person holds more source records than expectations.identity.max_cluster_records.",
    "identity_emails_per_person": "Persons with more than expectations.identity.max_emails_per_person emails stay within bound.",
    "identity_merged_share": "The share of source records merged with another is within expectations.identity bounds.",
    "drift_person_count": "The person count changed less than expectations.drift.max_person_count_change vs the published snapshot.",
    "drift_segment_sizes": "No segment emptied (and none changed beyond expectations.drift.max_segment_size_change).",
    "drift_merge_rate": "The merged share changed less than expectations.drift.max_merge_rate_change.",
    "drift_churn_distribution": "Mean churn probability and its PSI moved less than the expectations.drift bounds.",
    "required_fields_present": "This run's loads have every required contract field.",
    "values_in_range": "Prices and totals are not negative; margins are in [0, 1].",
    "formats": "Malformed emails stay under expectations.sources.max_invalid_format_rate (warning).",
    "bad_row_rate": "Quarantined rows of this run's loads stay under ingestion.max_bad_row_rate.",
    "table_present": "The registered published table was built.",
}


def gate_check_names(tables: tuple[PublishedTable, ...] | None = None) -> dict[str, list[str]]:
    """Published table -> the names of its gate checks (stable: they are the Dagster check names).
    ``tables``: the published tables (default: as the dbt manifest declares them)."""
    tables = published_tables() if tables is None else tables
    names: dict[str, list[str]] = {}
    for t in tables:
        checks = ["table_present", "schema"] + [m.check for m in published_metrics(t, existing={"marts.consent"})]
        names[t.name] = list(dict.fromkeys(checks))
    if "identity_graph" in names:
        names["identity_graph"] += [m.check for m in IDENTITY_METRICS]
    for table, m in DRIFT_METRICS:
        if table in names:
            names[table].append(m.check)
    return {k: list(dict.fromkeys(v)) for k, v in names.items()}


def gate_scope_of(context) -> str | None:
    """A whole `cdp run` (or a scheduled refresh) lets the gate choose its scope (daily between full
    gates: expectations/gate.py gate_scope); a run of some stages (`cdp run --only publish`,
    `cdp publish`) audits the warehouse as it is, which may have been changed by hand: in full."""
    stages = context.run.tags.get("tessera/stages")
    return None if stages in (None, "all") else FULL


def _spec(name: str, key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=key, description=CHECK_DESCRIPTIONS.get(name, name),
                          blocking=name not in NON_BLOCKING)


def _result(key: AssetKey, name: str, passed: bool, blocking: bool, metadata: dict) -> AssetCheckResult:
    return AssetCheckResult(asset_key=key, check_name=name, passed=passed, metadata=metadata,
                            severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN)


def _check_metadata(c) -> dict:
    meta = {"detail": mask_pii(c.detail) or "ok", "kind": c.kind}
    observed = {k: v for k, v in c.observed.items() if k != "columns"}
    if observed:
        meta["observed"] = MetadataValue.json(observed)
    if c.sample:
        meta["failing_rows_masked"] = MetadataValue.json(c.sample)
    if c.accepted:
        meta["accepted"] = "drift accepted with --accept-drift"
    return meta


def build_quality_defs(defined_keys: set[AssetKey], manifest) -> tuple[list, list]:
    """(assets, checks): publish/snapshot and the gate's checks, for the published marts of the
    dbt manifest (the path the dbt assets were built from) defined in this code location.
    Without a manifest, or with no published mart in it, loading fails (``ManifestError``):
    definitions that silently published nothing would look healthy."""
    published = published_tables(manifest)
    tables = [t for t in published if AssetKey(list(t.asset_path)) in defined_keys]
    key_of = {t.name: AssetKey(list(t.asset_path)) for t in tables}
    names = gate_check_names(published)
    specs = [_spec(n, key_of[t.name]) for t in tables for n in names[t.name]]
    return [_publish_asset(list(key_of.values()), manifest)], ([_gate_checks(specs, key_of, manifest)] if specs else [])


def _gate_checks(specs: list[AssetCheckSpec], key_of: dict[str, AssetKey], manifest):
    @multi_asset_check(specs=specs, name="expectations_gate", can_subset=True, pool=WAREHOUSE_POOL,
                       description="GX suites, identity sanity and drift on every published mart; each source's loads "
                                   "since the last publish against its earlier loads (in the verdict that publish reads).")
    def expectations_gate(context, tessera: TesseraResource):
        config = tessera.load()
        accept = context.run.tags.get(ACCEPT_DRIFT_TAG, "").lower() == "true"
        selected = context.selected_asset_check_keys
        selected_tables = {n for n, k in key_of.items() if any(ck.asset_key == k for ck in selected)}
        with tessera.warehouse(spark_writes=()) as con:
            # Dagster runs this check once per dbt step it follows. While published tables whose
            # checks come later in this run are still missing, look only at this step's tables;
            # the full gate (stored, reported, read by publish) runs when they are all built.
            built = set(existing_tables(con, manifest))
            later = {n for n in key_of if n not in built and n not in selected_tables}
            gate = run_gate(config, con, dagster_run_id=context.run.run_id, accept_drift=accept,
                            interim_tables=selected_tables if later else None, manifest=manifest,
                            scope=gate_scope_of(context))
        emitted: set[AssetCheckKey] = set()
        for c in gate.checks:
            key = key_of.get(c.table)
            if key is None or AssetCheckKey(key, c.check) not in selected:
                continue
            emitted.add(AssetCheckKey(key, c.check))
            blocking = c.blocking and not c.accepted
            yield _result(key, c.check, c.passed, blocking, _check_metadata(c))
        for ck in sorted(selected - emitted, key=lambda k: (k.asset_key.to_user_string(), k.name)):
            table = next(n for n, k in key_of.items() if k == ck.asset_key)
            reason = ("not built yet: skipped and not published" if table in gate.skipped_tables
                      else "nothing to compare with yet" if ck.name.startswith("drift_") else "not applicable")
            passed = ck.name != "table_present" or table not in gate.skipped_tables
            yield _result(ck.asset_key, ck.name, passed, False, {"detail": reason})

    return expectations_gate


def _publish_asset(deps: list[AssetKey], manifest):
    @asset(key=PUBLISH_KEY, deps=deps, group_name=PUBLISH_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
           description="The published snapshot marketers and syncs read: a separate DuckDB file written aside and "
                       "switched in atomically, only when every blocking quality check passed. The last N are kept "
                       "for `cdp rollback`.")
    def publish_snapshot(context: AssetExecutionContext, tessera: TesseraResource) -> MaterializeResult:
        config = tessera.load()
        accept = context.run.tags.get(ACCEPT_DRIFT_TAG, "").lower() == "true"
        with tessera.warehouse(spark_writes=()) as con:
            gate = gate_for_run(con, context.run.run_id)
            if gate is None:  # materialized on its own: audit now, never publish unchecked
                gate = run_gate(config, con, dagster_run_id=context.run.run_id, accept_drift=accept,
                                manifest=manifest, scope=FULL).summary()
            if not gate["passed"]:
                # the details name the file and field (never a value); a source's checks have no
                # Dagster check of their own to show them
                details = [f"{c} on {t}: {d}" for c, t, d in fetch_all(con, """
                    SELECT check_name, table_name, detail FROM quality.check_results
                    WHERE gate_id = ? AND NOT passed AND blocking AND NOT accepted ORDER BY table_name, check_name""",
                    [gate["gate_id"]])] if table_exists(con, "quality", "check_results") else []
                raise Failure("publish blocked by the quality gate: " + ("; ".join(details) or ", ".join(gate["blocking_failures"])),
                              metadata={"report": gate.get("report", "")})
            snap = publish_build(config, con, gate, manifest)
            checks = [{"check": c, "table": t, "severity": "blocking" if b else "warn", "passed": p}
                      for c, t, b, p in fetch_all(con, """
                          SELECT check_name, table_name, blocking, passed OR accepted FROM quality.check_results
                          WHERE gate_id = ? ORDER BY table_name, check_name""", [gate["gate_id"]])]
        log.info("publish: snapshot %s is current (%s)", snap.run_id, snap.path)
        report = write_report(config.published_dir, snap.run_id, syncs=sync_overview(config.root), quality=checks)
        log.info("publish: report %s", report)
        return MaterializeResult(metadata={
            "snapshot": snap.run_id, "path": MetadataValue.path(str(snap.path)), "tables": snap.tables,
            "skipped_tables": gate["skipped_tables"], "quality_report": MetadataValue.path(gate.get("report", "")),
            "accepted_drift": gate.get("accepted_drift", []),
            "report": MetadataValue.path(str(report)),
        })

    return publish_snapshot


# --------------------------------------------------------------------------- source suites
def source_check_names() -> dict[str, list[str]]:
    out = {}
    for ent in ENTITIES:
        names = ["schema"] + [m.check for m in source_metrics(ent, "true")] + ["bad_row_rate"]
        out[ent.table] = list(dict.fromkeys(names))
    return out


def _run_started_at(context) -> datetime | None:
    record = context.instance.get_run_record_by_id(context.run.run_id)
    start = record.start_time if record else None
    return datetime.fromtimestamp(start, timezone.utc) if start else None


def build_source_checks():
    names = source_check_names()
    key_of = {ent.table: raw_asset_key(ent) for ent in ENTITIES}
    specs = [_spec(n, key_of[t]) for t, ns in names.items() for n in ns]

    @multi_asset_check(specs=specs, name="expectations_sources", can_subset=True, pool=WAREHOUSE_POOL,
                       description="GX suites on the rows each raw table loaded in this run.")
    def expectations_sources(context, tessera: TesseraResource):
        config = tessera.load()
        selected = context.selected_asset_check_keys
        tables = sorted({k.asset_key.path[-1] for k in selected})
        with tessera.warehouse(spark_writes=()) as con:
            results = run_source_checks(config, con, since=_run_started_at(context), tables=tables,
                                        scope=gate_scope_of(context))
        emitted = set()
        for c in results:
            key = key_of[c.table.removeprefix("raw.")]
            if AssetCheckKey(key, c.check) in selected:
                emitted.add(AssetCheckKey(key, c.check))
                yield _result(key, c.check, c.passed, c.blocking, _check_metadata(c))
        for ck in selected - emitted:
            yield _result(ck.asset_key, ck.name, True, False, {"detail": "no table loaded yet"})

    return expectations_sources
