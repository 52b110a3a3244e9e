"""The quality gate: every check a build must pass before it is published.

``run_gate`` measures the built marts in DuckDB, validates the measurements with the GX
suites (see ``suites.py``), adds identity sanity and drift against the published snapshot,
stores the outcome in the warehouse (``quality.gate_runs``, ``quality.check_results``) and
in ``<reports>/quality/``, and writes the per-run report. It never publishes: the publish
step (``publish_build``) runs only when no blocking check failed.

``run_source_checks`` validates the rows of one load batch of each raw table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from core.config import Config
from core.contracts import ENTITIES
from core.pii import KnownValues, mask_pii, mask_row
from core.published import ManifestError, PublishedTable, published_tables
from core.snapshots import current_path, open_snapshot, read_manifest
from core.warehouse import fetch_all, table_exists, transaction
from expectations.report import write_report
from expectations.source_drift import SETTING as SOURCE_SETTING
from expectations.source_drift import findings, load_profiles, new_load_ids, worst
from expectations.suites import (
    BAD_ROW_RATE,
    DRIFT_METRICS,
    IDENTITY_METRICS,
    Metric,
    all_suites,
    published_metrics,
    published_metrics_sql,
    published_suite,
    source_drift_metrics,
    source_drift_suite,
    source_metrics,
    source_metrics_sql,
)

log = logging.getLogger("tessera.expectations")

# Source drift (expectations/source_drift.py): the setting bounding each check.
SOURCE_DRIFT_SETTINGS = {
    "drift_source_rows": "max_row_count_drop",
    "drift_source_fill_rate": "max_fill_rate_drop",
    "drift_source_top_value": "max_top_value_share_rise",
}
DRIFT_CHECKS = {m.check for _, m in DRIFT_METRICS} | set(SOURCE_DRIFT_SETTINGS)
DRIFT_SETTINGS = {
    "drift_person_count": "expectations.drift.max_person_count_change",
    "drift_segment_sizes": "expectations.drift.block_emptied_segment / max_segment_size_change",
    "drift_merge_rate": "expectations.drift.max_merge_rate_change",
    "drift_churn_distribution": "expectations.drift.max_churn_mean_change / max_churn_psi",
}
CHURN_BINS = 10
# The gate's scopes (gate_scope): every check validated with GX, or the daily gate.
FULL, DAILY = "full", "daily"


@dataclass
class CheckResult:
    table: str  # published table name, or raw.<table> for source checks
    asset: str  # Dagster asset key, e.g. marts/customers
    check: str
    kind: str  # suite | drift | identity | source
    passed: bool
    blocking: bool
    accepted: bool = False  # a drift failure accepted with --accept-drift
    detail: str = ""
    observed: dict = field(default_factory=dict)
    sample: list[dict] = field(default_factory=list)  # failing rows, PII masked

    @property
    def blocks(self) -> bool:
        return not self.passed and self.blocking and not self.accepted

    @property
    def label(self) -> str:
        return f"{self.check} on {self.table}"


@dataclass
class GateResult:
    gate_id: str  # also the snapshot's run id when published
    dagster_run_id: str
    checked_at: str
    accept_drift: bool
    checks: list[CheckResult]
    tables: list[str]  # published tables present and checked
    skipped_tables: list[str]  # registered, not built yet
    seconds: float = 0.0
    report: str = ""
    data_docs: str = ""
    scope: str = FULL  # full: every check validated with GX; daily: see gate_scope()
    scope_reason: str = ""
    last_full: dict = field(default_factory=dict)  # the last full gate: gate_id, checked_at, checks_digest
    profile: dict = field(default_factory=dict)  # what the next gate's drift checks compare with

    @property
    def passed(self) -> bool:
        return not any(c.blocks for c in self.checks)

    @property
    def blocking_failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.blocks]

    def message(self) -> str:
        if self.passed:
            return f"quality gate passed: {len(self.checks)} checks on {len(self.tables)} tables"
        fails = "; ".join(f"{c.check} on {c.table} ({c.detail})" for c in self.blocking_failures)
        hint = " (drift can be accepted deliberately with `cdp publish --accept-drift`)" if all(
            c.check in DRIFT_CHECKS for c in self.blocking_failures) else ""
        return f"quality gate FAILED, publish blocked: {fails}{hint}"

    def summary(self) -> dict:
        """What goes into the snapshot manifest and `cdp status`."""
        return {
            "gate_id": self.gate_id, "dagster_run_id": self.dagster_run_id, "checked_at": self.checked_at,
            "passed": self.passed, "accept_drift": self.accept_drift, "checks": len(self.checks),
            "failed": [c.label for c in self.checks if not c.passed],
            "blocking_failures": [c.label for c in self.blocking_failures],
            "accepted_drift": [c.label for c in self.checks if c.accepted],
            "tables": self.tables, "skipped_tables": self.skipped_tables, "seconds": round(self.seconds, 2),
            "report": self.report, "data_docs": self.data_docs,
            "scope": self.scope, "scope_reason": self.scope_reason, "last_full_gate": self.last_full,
            "profile": _stored_profile(self.profile) if self.profile else None,
        }


# --------------------------------------------------------------------------- masking
def masked_rows(con, sql: str, limit: int, known: KnownValues | None = None) -> list[dict]:
    """Sample failing rows, masked by the PII policy; ``known`` collects their PII values so
    that the check's other texts can be masked for them too."""
    if not sql or limit <= 0:
        return []
    cur = con.execute(f"SELECT * FROM ({sql}) LIMIT {int(limit)}")
    names = [d[0] for d in cur.description]
    return [mask_row(dict(zip(names, row)), known) for row in cur.fetchall()]


# --------------------------------------------------------------------------- helpers
def existing_tables(con, manifest=None) -> dict[str, PublishedTable]:
    """The published tables (as the dbt manifest declares them) present in the warehouse.
    ``manifest``: its path (default ``core.published.manifest_path()``)."""
    return {t.name: t for t in published_tables(manifest) if table_exists(con, t.schema, t.table)}


def _columns(con, schema: str, table: str) -> list[str]:
    return [r[0] for r in fetch_all(
        con, "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
             "ORDER BY ordinal_position", [schema, table])]


def _frame(values: dict):
    import pandas as pd

    return pd.DataFrame({k: [None if v is None else float(v)] for k, v in values.items()}, dtype="float64")


def _group(outcomes, metrics: list[Metric], values: dict, table: str, asset: str, kind: str,
           con, sample_rows: int, params: dict | None = None) -> list[CheckResult]:
    """GX outcomes (one per expectation) -> one CheckResult per check name."""
    by_metric = {m.name: m for m in metrics}
    results: dict[str, CheckResult] = {}
    known = KnownValues()  # the sampled rows' PII values, masked in the details too
    for o in outcomes:
        metric = by_metric.get(o.column)
        r = results.setdefault(o.check, CheckResult(table, asset, o.check, kind, True, o.blocking))
        r.blocking = r.blocking or o.blocking
        if o.column in values:
            r.observed[o.column] = values[o.column]
        if not o.success:
            r.passed = False
            bound = _bounds_text(metric, params or {}) if metric else ""
            r.detail = "; ".join(filter(None, [r.detail, f"{o.column} = {_fmt(values.get(o.column, o.observed))}{bound}"]))
            if metric and metric.failing_rows_sql and len(r.sample) < sample_rows:
                r.sample += masked_rows(con, metric.failing_rows_sql, sample_rows - len(r.sample), known)
    for r in results.values():
        r.detail = mask_pii(r.detail, known)
    return list(results.values())


def _bounds_text(m: Metric, params: dict) -> str:
    lo = params.get(m.min_value, m.min_value) if isinstance(m.min_value, str) else m.min_value
    hi = params.get(m.max_value, m.max_value) if isinstance(m.max_value, str) else m.max_value
    if lo is not None and hi is not None:
        return f" (expected {lo}..{hi})" if lo != hi else f" (expected {lo})"
    return f" (expected >= {lo})" if lo is not None else f" (expected {'<' if m.strict_max else '<='} {hi})"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --------------------------------------------------------------------------- published tables
def _table_frame(columns: list[str], metrics: dict):
    """One row: the table's own columns (empty; what the schema expectation reads) and its metrics."""
    clash = set(columns) & set(metrics)
    if clash:
        raise ValueError(f"metric names clash with table columns: {sorted(clash)}")
    return _frame({**{c: None for c in columns}, **metrics})


def check_published_table(con, gx, t: PublishedTable, present: set[str], sample_rows: int) -> list[CheckResult]:
    asset = "/".join(t.asset_path)
    columns = _columns(con, t.schema, t.table)
    missing = [c for c in t.required_columns if c not in columns]
    all_metrics = published_metrics(t, existing={"marts.consent"})
    values = {m.name: None for m in all_metrics}
    metrics: list[Metric] = []
    if not missing:  # the metrics would reference missing columns
        metrics = published_metrics(t, existing=present)
        values.update(zip([m.name for m in metrics], fetch_all(con, published_metrics_sql(t, metrics))[0]))
    outcomes = gx.validate(f"published_{t.name}", _table_frame(columns, values), suite=published_suite(t))
    results = _group(outcomes, metrics, values, t.name, asset, "suite", con, sample_rows)
    for r in results:
        if r.check == "schema":
            r.observed = {"columns": columns}
            if not r.passed:
                r.detail = f"missing columns: {', '.join(missing)} (has: {', '.join(columns)})"
    if missing:  # nothing else was measured
        results = [r for r in results if r.check == "schema"]
    return results


# --------------------------------------------------------------------------- identity sanity
def identity_metrics(con, graph: str = "marts.identity_graph", max_emails: int = 10) -> dict:
    size_row = fetch_all(con, f"""
        WITH sizes AS (SELECT person_id, count(*) AS n FROM {graph} GROUP BY 1)
        SELECT max(n), coalesce(sum(n) FILTER (WHERE n > 1) / nullif(sum(n), 0), 0) FROM sizes""")[0]
    values = {"largest_cluster_records": size_row[0], "merged_share": size_row[1], "persons_over_email_limit": None}
    if table_exists(con, "identity", "records") and "record_key" in _columns(con, *graph.split(".")):
        values["persons_over_email_limit"] = fetch_all(con, f"""
            SELECT count(*) FROM (
                SELECT g.person_id FROM {graph} g JOIN identity.records r USING (record_key)
                WHERE r.email_canon IS NOT NULL GROUP BY 1 HAVING count(DISTINCT r.email_canon) > ?)""",
            [max_emails])[0][0]
    return values


# The setting that would accept each identity check's failure (named in its message).
IDENTITY_SETTINGS = {
    "identity_largest_cluster": "expectations.identity.max_cluster_records (or max_cluster_growth)",
    "identity_emails_per_person": "expectations.identity.max_persons_over_email_limit (or max_emails_per_person)",
    "identity_merged_share": "expectations.identity.min_merged_share / max_merged_share",
}


def identity_params(bounds, previous: dict | None) -> dict:
    """The identity bounds in force: the configured ones, and for those left empty, bounds
    learned from the last publish (a shop's shape, not a constant tuned to generated data)."""
    params = bounds.model_dump()
    params["min_merged_share"] = 0.0 if bounds.min_merged_share is None else bounds.min_merged_share
    params["max_merged_share"] = 1.0 if bounds.max_merged_share is None else bounds.max_merged_share
    if bounds.max_cluster_records is None:
        largest = (previous or {}).get("largest_cluster")
        # first publish: nothing learned yet; identity.max_cluster_size already holds oversized merges
        params["max_cluster_records"] = 10**12 if not largest else math.ceil(largest * bounds.max_cluster_growth)
    return params


def check_identity(con, gx, config: Config) -> list[CheckResult]:
    bounds = config.expectations.identity
    values = identity_metrics(con, max_emails=bounds.max_emails_per_person)
    params = identity_params(bounds, previous_profile(config)[0])
    outcomes = gx.validate("gate_identity", _frame(values), params)
    results = _group(outcomes, list(IDENTITY_METRICS), values, "identity_graph", "marts/identity_graph",
                     "identity", con, 0, params=params)
    for r in results:
        if not r.passed:
            r.detail += f"; to accept it, set {IDENTITY_SETTINGS.get(r.check, 'expectations.identity')}"
    for r in results:
        if not r.passed and r.check == "identity_largest_cluster":
            r.sample = [{"person_id": p, "records": n} for p, n in fetch_all(
                con, "SELECT person_id, count(*) AS n FROM marts.identity_graph GROUP BY 1 ORDER BY 2 DESC LIMIT ?",
                [config.expectations.sample_rows])]
    return results


# --------------------------------------------------------------------------- drift
def profile(con, relation: dict[str, str]) -> dict:
    """The numbers drift compares: persons, segment sizes, merged share, churn distribution.
    ``relation``: published name -> relation to read (warehouse or snapshot)."""
    out: dict = {}
    if "customers" in relation:
        out["persons"] = fetch_all(con, f"SELECT count(*) FROM {relation['customers']}")[0][0]
    if "segment_membership" in relation:
        out["segments"] = dict(fetch_all(con, f"SELECT segment, count(*) FROM {relation['segment_membership']} GROUP BY 1"))
    if "segment_catalog" in relation:
        out["defined_segments"] = {r[0] for r in fetch_all(con, f"SELECT segment FROM {relation['segment_catalog']}")}
    if "identity_graph" in relation:
        ident = identity_metrics(con, relation["identity_graph"])
        out["merged_share"], out["largest_cluster"] = ident["merged_share"], ident["largest_cluster_records"]
    if "churn_scores" in relation:
        rows = fetch_all(con, f"""
            SELECT least(floor(churn_probability * {CHURN_BINS}), {CHURN_BINS - 1})::INT AS bin, count(*), avg(churn_probability)
            FROM {relation['churn_scores']} WHERE churn_probability BETWEEN 0 AND 1 GROUP BY 1""")
        total = sum(r[1] for r in rows)
        if total:
            out["churn_hist"] = [sum(r[1] for r in rows if r[0] == b) / total for b in range(CHURN_BINS)]
            out["churn_mean"] = sum(r[1] * r[2] for r in rows) / total
    return out


def _stored_profile(prof: dict) -> dict:
    """A profile as JSON keeps it (in the gate's summary, hence the snapshot manifest)."""
    return {**prof, **({"defined_segments": sorted(prof["defined_segments"])} if "defined_segments" in prof else {})}


def _loaded_profile(prof: dict) -> dict:
    return {**prof, **({"defined_segments": set(prof["defined_segments"])} if "defined_segments" in prof else {})}


def previous_profile(config: Config) -> tuple[dict | None, str | None]:
    """The drift profile of the current published snapshot: the one its gate measured on the same
    tables before publishing them (kept in the manifest entry), else measured on the snapshot
    (snapshots published before the gate kept it, or a manifest without the entry)."""
    path = current_path(config.published_dir)
    if not path.exists():
        return None, None
    manifest = read_manifest(config.published_dir)
    entry = next((e for e in manifest.get("history", []) if e.get("run_id") == manifest.get("current")), None)
    kept = ((entry or {}).get("gate") or {}).get("profile")
    if isinstance(kept, dict):
        return _loaded_profile(kept), manifest.get("current")
    ro = open_snapshot(path)
    try:
        names = {r[0] for r in fetch_all(ro, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}
        prof = profile(ro, {n: f'main."{n}"' for n in names})
    finally:
        ro.close()
    return prof, manifest.get("current")


def _psi(now: list[float], before: list[float]) -> float:
    eps = 1e-4
    return sum((max(a, eps) - max(b, eps)) * math.log(max(a, eps) / max(b, eps)) for a, b in zip(now, before))


def drift_values(now: dict, before: dict, min_segment_size: int) -> tuple[dict, dict]:
    """Drift metrics (None when there is nothing to compare) and the details behind them."""
    values = {m.name: None for _, m in DRIFT_METRICS}
    details: dict = {}
    if before.get("persons") and "persons" in now:
        values["person_count_change"] = abs(now["persons"] - before["persons"]) / before["persons"]
        details["drift_person_count"] = {"persons": now["persons"], "published": before["persons"]}
    if "segments" in before and "segments" in now:
        # A segment the marketer deleted from segments.yaml is gone on purpose, not emptied:
        # compare only segments the current build still defines.
        defined = now.get("defined_segments")
        published = {s: n for s, n in before["segments"].items() if defined is None or s in defined}
        emptied = sorted(s for s, n in published.items() if n > 0 and now["segments"].get(s, 0) == 0)
        values["emptied_segments"] = len(emptied)
        changes = {s: abs(now["segments"].get(s, 0) - n) / n for s, n in published.items()
                   if n >= max(min_segment_size, 1)}
        values["segment_size_change"] = max(changes.values()) if changes else None
        details["drift_segment_sizes"] = {"emptied": emptied,
                                          "largest_change": max(changes, key=changes.get) if changes else None}
    if before.get("merged_share") is not None and now.get("merged_share") is not None:
        values["merge_rate_change"] = abs(now["merged_share"] - before["merged_share"])
        details["drift_merge_rate"] = {"merged_share": now["merged_share"], "published": before["merged_share"]}
    if "churn_hist" in before and "churn_hist" in now:
        values["churn_mean_change"] = abs(now["churn_mean"] - before["churn_mean"])
        values["churn_psi"] = _psi(now["churn_hist"], before["churn_hist"])
        details["drift_churn_distribution"] = {"mean": now["churn_mean"], "published_mean": before["churn_mean"]}
    return values, details


def check_drift(con, gx, config: Config, present: dict[str, PublishedTable], accept: bool,
                measured: dict | None = None) -> list[CheckResult]:
    """``measured``: filled with the profile of ``present`` (kept with the gate's verdict)."""
    before, prev_run = previous_profile(config)
    bounds = config.expectations.drift
    now = profile(con, {n: t.relation for n, t in present.items()})
    if measured is not None:
        measured.update(now)
    if before is None:
        values, details = {m.name: None for _, m in DRIFT_METRICS}, {}
    else:
        values, details = drift_values(now, before, bounds.min_segment_size)
    params = {
        "max_person_count_change": bounds.max_person_count_change,
        "max_emptied_segments": 0 if bounds.block_emptied_segment else 10**9,
        "max_segment_size_change": bounds.max_segment_size_change or 1e18,
        "max_merge_rate_change": bounds.max_merge_rate_change,
        "max_churn_mean_change": bounds.max_churn_mean_change,
        "max_churn_psi": bounds.max_churn_psi,
    }
    outcomes = gx.validate("gate_drift", _frame(values), params)
    metrics = [m for _, m in DRIFT_METRICS]
    results: list[CheckResult] = []
    for table in dict.fromkeys(t for t, _ in DRIFT_METRICS):
        own = [o for o in outcomes if o.table == table]
        if table not in present:
            continue
        asset = "/".join(present[table].asset_path)
        results += _group(own, metrics, values, table, asset, "drift", con, 0, params=params)
    for r in results:
        r.observed.update({"compared_with": prev_run or "nothing published yet", **details.get(r.check, {})})
        if not r.passed:
            if r.check == "drift_segment_sizes" and details.get(r.check, {}).get("emptied"):
                r.detail = f"segments emptied since the last publish: {', '.join(details[r.check]['emptied'])}; " + r.detail
                r.sample = [{"segment": s, "published_members": before["segments"][s], "members_now": 0}
                            for s in details[r.check]["emptied"][: max(config.expectations.sample_rows, 1)]]
            r.detail += (f" vs published snapshot {prev_run}; to accept it, set {DRIFT_SETTINGS.get(r.check, 'expectations.drift')}"
                         " or publish with --accept-drift")
            r.accepted = accept
    return results


def last_published_at(config: Config) -> str | None:
    """When the last snapshot was published (loads since then are new to the gate)."""
    stamps = [e["published_at"] for e in read_manifest(config.published_dir).get("history", []) if e.get("published_at")]
    return max(stamps) if stamps else None


def check_source_drift(con, gx, config: Config, accept: bool) -> list[CheckResult]:
    """Each load since the last publish against the earlier loads of its source (one check per
    raw table with new loads and per kind: rows, fill rate, top-value share)."""
    bounds = config.expectations.sources
    new = new_load_ids(con, last_published_at(config))
    if not new:
        return []
    profiles = load_profiles(con)
    found = findings(profiles, new, bounds)
    compared = {f.table for f in found}  # (a source's first loads have nothing to be compared with)
    if not compared:
        return []
    top = worst(found)
    metrics = [m for ent in ENTITIES if ent.table in compared for m in source_drift_metrics(ent)]
    values = {m.name: None for m in metrics}
    for ent in ENTITIES:
        for m in source_drift_metrics(ent):
            f = top.get((ent.table, m.check))
            if m.name in values and f is not None:
                values[m.name] = round(f.value, 6)
    params = {name: getattr(bounds, name) for name in SOURCE_DRIFT_SETTINGS.values()}
    outcomes = gx.validate("gate_source_drift", _frame(values), params, suite=source_drift_suite(compared))
    checked = {t: len({f.file for f in found if f.table == t}) for t in compared}
    results: list[CheckResult] = []
    for table in sorted(compared):
        own = [o for o in outcomes if o.table == f"raw.{table}"]
        results += _group(own, metrics, values, f"raw.{table}", f"raw/{table}", "drift", con, 0, params=params)
    for r in results:
        table = r.table.removeprefix("raw.")
        r.observed["loads_checked"] = checked.get(table, 0)
        if r.passed:
            continue
        setting = f"{SOURCE_SETTING}.{SOURCE_DRIFT_SETTINGS[r.check]}"
        bound = params[SOURCE_DRIFT_SETTINGS[r.check]]
        over = sorted((f for f in found if f.table == table and f.check == r.check and f.value > bound),
                      key=lambda f: -f.value)
        more = f" (and {len(over) - 3} more)" if len(over) > 3 else ""
        r.detail = ("; ".join(f.text(bound, setting) for f in over[:3]) + more
                    + f"; to accept it, set {setting} or publish with --accept-drift")
        r.observed["out_of_bounds"] = [{"file": f.file, "field": f.field, "now": round(f.now, 4),
                                        "usual": round(f.usual, 4)} for f in over[:20]]
        r.accepted = accept
    return results


# --------------------------------------------------------------------------- scope


def checks_digest(config: Config, manifest=None) -> str:
    """What the gate checks: every suite (the published tables' from the dbt manifest, the ones in
    version control), the expectations settings and the gate's code. A daily gate runs only while
    this equals the last full gate's."""
    suites = [published_suite(t) for t in published_tables(manifest)] + all_suites()
    h = hashlib.sha256(json.dumps(suites, sort_keys=True, default=str).encode())
    h.update(config.expectations.model_dump_json().encode())
    for module in ("gate.py", "suites.py", "gx_runner.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    return h.hexdigest()


def gate_scope(config: Config, digest: str, requested: str | None = None,
               now: datetime | None = None) -> tuple[str, str, dict]:
    """(scope, why, the last full gate) for a gate now. Full when asked for, when nothing is
    published, when the checks changed since the last full gate, or when that gate is
    ``expectations.full_gate_every_days`` old; else daily. The last full gate is carried from
    snapshot to snapshot in the manifest (``gate.last_full_gate``)."""
    if requested == FULL:
        return FULL, "a full gate was asked for", {}
    manifest = read_manifest(config.published_dir)
    entry = next((e for e in manifest.get("history", []) if e.get("run_id") == manifest.get("current")), None)
    if entry is None:
        return FULL, "nothing published yet", {}
    last = (entry.get("gate") or {}).get("last_full_gate") or {}
    if not last.get("checks_digest"):
        return FULL, "the published snapshot's gate recorded no full gate", {}
    if last["checks_digest"] != digest:
        return FULL, "the checks changed since the last full gate", {}
    every = config.expectations.full_gate_every_days
    now = now or datetime.now(timezone.utc)
    age = now - datetime.fromisoformat(last["checked_at"])
    if every == 0 or age >= timedelta(days=every):
        return FULL, (f"the last full gate ({last['gate_id']}) is {age.days} day(s) old "
                      f"(expectations.full_gate_every_days: {every})"), {}
    return DAILY, f"the last full gate ({last['gate_id']}, {age.days} day(s) ago) ran the same checks", last


# (dagster run id, published table) -> its checks measured by an earlier step of that run (an
# interim look right after the dbt step that built it): the step with the verdict reuses them.
_INTERIM: dict[tuple[str, str], list[CheckResult]] = {}


# --------------------------------------------------------------------------- the gate
def run_gate(config: Config, con, dagster_run_id: str = "", accept_drift: bool = False,
             gate_id: str | None = None, interim_tables: set[str] | None = None, manifest=None,
             scope: str | None = None, full_reason: str | None = None) -> GateResult:
    """Check the built marts; store and report the outcome. Never publishes.

    ``interim_tables``: an early look at only these tables, while others are still being built
    in the same run (Dagster runs a subset of the gate's checks right after each dbt step).
    Their results are returned, not stored or reported: the gate's verdict, which publish reads,
    is the run over every table once all are built, which reuses them (a table is built once per
    run). ``manifest``: the dbt manifest declaring the published tables (default
    ``core.published.manifest_path()``).

    ``scope``: ``"full"``, or None to choose (``gate_scope``): a daily gate runs the same checks
    on the same tables, their bounds evaluated in Python rather than by GX (``NativeRunner``: GX's
    validation machinery was most of the gate's CPU), and builds no Data Docs; a daily gate that
    fails is run again in full, so the report and Data Docs of a blocked build are complete."""
    import time

    t0 = time.perf_counter()
    now = datetime.now(timezone.utc)
    gate_id = gate_id or f"{now:%Y%m%dT%H%M%S}-{(dagster_run_id or 'manual').replace('-', '')[:8]}"
    digest = checks_digest(config, manifest)
    chosen, why, last_full = gate_scope(config, digest, scope, now)
    why = full_reason or why
    gx = _runner(config, chosen)
    present = existing_tables(con, manifest)
    relations = {t.relation for t in present.values()}  # (checks may read other built tables)
    if interim_tables is not None:
        present = {n: t for n, t in present.items() if n in interim_tables}
    registered = {t.name: t for t in published_tables(manifest) if interim_tables is None or t.name in interim_tables}
    skipped = [name for name in registered if name not in present]
    checks: list[CheckResult] = []
    for name in skipped:
        t = registered[name]
        checks.append(CheckResult(name, "/".join(t.asset_path), "table_present", "suite", False, True,
                                  detail=f"{t.relation} was not built"))
    reused = []
    for t in present.values():
        earlier = _INTERIM.pop((dagster_run_id, t.name), None) if dagster_run_id and interim_tables is None else None
        if earlier is not None:
            checks += earlier
            reused.append(t.name)
            continue
        own = check_published_table(con, gx, t, relations, config.expectations.sample_rows)
        if t.name == "identity_graph" and not any(c.check == "schema" and not c.passed for c in own):
            own += check_identity(con, gx, config)  # (reads columns the schema check vouches for)
        if interim_tables is not None and dagster_run_id:
            for key in [k for k in _INTERIM if k[0] != dagster_run_id]:  # (a run that ended without its verdict)
                del _INTERIM[key]
            _INTERIM[(dagster_run_id, t.name)] = own
        checks += own
    # Drift reads columns the schema checks vouch for.
    sound = {n: t for n, t in present.items()
             if not any(c.table == n and c.check == "schema" and not c.passed for c in checks)}
    measured: dict = {}
    checks += check_drift(con, gx, config, sound, accept_drift, measured)
    if interim_tables is None:  # (sources are no published table: judged once, by the whole gate)
        checks += check_source_drift(con, gx, config, accept_drift)
    result = GateResult(gate_id, dagster_run_id, now.isoformat(timespec="seconds"), accept_drift, checks,
                        sorted(present), skipped, scope=chosen, scope_reason=why,
                        last_full=last_full if chosen == DAILY else
                        {"gate_id": gate_id, "checked_at": now.isoformat(timespec="seconds"), "checks_digest": digest},
                        profile=measured)
    if interim_tables is not None:
        result.seconds = time.perf_counter() - t0
        log.info("expectations: %s checked as soon as built (%s gate: %d checks, %d failing; %.1fs); the gate's "
                 "verdict comes once every published table is built", ", ".join(sorted(interim_tables)), chosen,
                 len(checks), sum(not c.passed for c in checks), result.seconds)
        return result
    if chosen == DAILY and not result.passed:
        log.info("expectations: the daily gate failed (%s); running the full gate for the report and Data Docs",
                 "; ".join(c.label for c in result.blocking_failures))
        return run_gate(config, con, dagster_run_id, accept_drift, gate_id, None, manifest, scope=FULL,
                        full_reason=f"the daily gate failed: {'; '.join(c.label for c in result.blocking_failures)}")
    if chosen == FULL:
        try:
            result.data_docs = str(gx.build_docs())
        except Exception as e:  # the docs are a convenience; the gate's verdict stands without them
            log.warning("expectations: could not build GX Data Docs: %s", e)
    result.seconds = time.perf_counter() - t0

    result.report = str(write_report(config, result))
    store(con, result, config.reports_dir)
    log.info("expectations: %s (%s gate: %s%s; %.1fs)", result.message(), chosen, why,
             f"; {len(reused)} table(s) checked earlier in this run" if reused else "", result.seconds)
    return result


def _runner(config: Config, scope: str):
    if scope == DAILY:
        from expectations.gx_runner import NativeRunner

        return NativeRunner()
    from expectations.gx_runner import runner_for  # lazy: GX takes seconds to import; the CLI loads this module

    return runner_for(config.reports_dir)


def store(con, result: GateResult, reports_dir: Path) -> None:
    """Keep the outcome in the warehouse (quality schema) and in reports/quality/latest.json."""
    con.execute("CREATE SCHEMA IF NOT EXISTS quality")
    con.execute("""CREATE TABLE IF NOT EXISTS quality.gate_runs (
        gate_id VARCHAR PRIMARY KEY, dagster_run_id VARCHAR, checked_at TIMESTAMPTZ, passed BOOLEAN,
        accept_drift BOOLEAN, checks INTEGER, blocking_failures VARCHAR[], tables VARCHAR[],
        skipped_tables VARCHAR[], seconds DOUBLE, report VARCHAR, summary JSON)""")
    con.execute("""CREATE TABLE IF NOT EXISTS quality.check_results (
        gate_id VARCHAR, table_name VARCHAR, asset VARCHAR, check_name VARCHAR, kind VARCHAR, passed BOOLEAN,
        blocking BOOLEAN, accepted BOOLEAN, detail VARCHAR, observed JSON, sample JSON)""")
    s = result.summary()
    with transaction(con):
        con.execute("DELETE FROM quality.check_results WHERE gate_id = ?", [result.gate_id])
        con.execute("DELETE FROM quality.gate_runs WHERE gate_id = ?", [result.gate_id])
        con.execute("INSERT INTO quality.gate_runs VALUES (?, ?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            result.gate_id, result.dagster_run_id, result.checked_at, result.passed, result.accept_drift,
            len(result.checks), s["blocking_failures"], result.tables, result.skipped_tables, result.seconds,
            result.report, json.dumps(s, default=str)])
        con.executemany("INSERT INTO quality.check_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            [result.gate_id, c.table, c.asset, c.check, c.kind, c.passed, c.blocking, c.accepted, c.detail,
             json.dumps(c.observed, default=str), json.dumps(c.sample, default=str)] for c in result.checks])
    out = Path(reports_dir) / "quality"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".latest.json.tmp"
    tmp.write_text(json.dumps(s, indent=2, default=str))
    tmp.replace(out / "latest.json")


def latest_gate(reports_dir: Path) -> dict | None:
    path = Path(reports_dir) / "quality" / "latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def gate_for_run(con, dagster_run_id: str) -> dict | None:
    if not table_exists(con, "quality", "gate_runs"):
        return None
    rows = fetch_all(con, "SELECT summary FROM quality.gate_runs WHERE dagster_run_id = ? ORDER BY checked_at DESC LIMIT 1",
                     [dagster_run_id])
    return json.loads(rows[0][0]) if rows else None


# --------------------------------------------------------------------------- sources
def run_source_checks(config: Config, con, since: datetime | None, tables: list[str] | None = None,
                      scope: str | None = None) -> list[CheckResult]:
    """Validate the rows loaded since ``since`` (this run's loads) of each raw table. ``scope``: as
    the gate's (``run_gate``): a daily scope evaluates the suites without GX, and validates them
    with GX again when one fails."""
    try:
        chosen = gate_scope(config, checks_digest(config), scope)[0]
    except ManifestError:  # no dbt manifest to tell the checks by: validate with GX
        chosen = FULL
    results = _source_checks(config, con, since, tables, _runner(config, chosen))
    if chosen == DAILY and any(c.blocks for c in results):
        results = _source_checks(config, con, since, tables, _runner(config, FULL))
    return results


def _source_checks(config: Config, con, since: datetime | None, tables: list[str] | None, gx) -> list[CheckResult]:
    results: list[CheckResult] = []
    since_sql = f"TIMESTAMPTZ '{since.isoformat()}'" if since else "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
    for ent in ENTITIES:
        if tables is not None and ent.table not in tables:
            continue
        name, asset = f"raw.{ent.table}", f"raw/{ent.table}"
        if not table_exists(con, "raw", ent.table):
            continue
        columns = _columns(con, "raw", ent.table)
        missing = [c for c in ent.field_names if c not in columns]
        params = {"max_bad_row_rate": config.ingestion.max_bad_row_rate,
                  "max_invalid_format_rate": config.expectations.sources.max_invalid_format_rate}
        if missing:
            empty = {m.name: None for m in [*source_metrics(ent, "true"), BAD_ROW_RATE]}
            outcomes = gx.validate(f"source_{ent.table}", _table_frame(columns, empty), params)  # for Data Docs
            schema_ok = all(o.success for o in outcomes if o.check == "schema")
            results.append(CheckResult(name, asset, "schema", "source", schema_ok, True,
                                       detail=f"missing contract columns: {', '.join(missing)}",
                                       observed={"columns": columns}))
            continue
        loads_filter = f"started_at >= {since_sql}"
        batch_filter = (f"_load_id IN (SELECT load_id FROM raw.loads WHERE table_name = '{ent.table}' "
                        f"AND {loads_filter})")
        metrics = source_metrics(ent, batch_filter)
        row = fetch_all(con, source_metrics_sql(ent, metrics, batch_filter, loads_filter))[0]
        values = dict(zip(["rows_in_batch", *[m.name for m in metrics], "bad_row_rate"], row))
        outcomes = gx.validate(f"source_{ent.table}",
                               _table_frame(columns, {k: v for k, v in values.items() if k != "rows_in_batch"}), params)
        group = _group(outcomes, [*metrics, BAD_ROW_RATE], values, name, asset, "source", con,
                       config.expectations.sample_rows, params=params)
        for r in group:
            r.observed["rows_in_batch"] = values["rows_in_batch"]
        results += group
    return results


def as_dict(c: CheckResult) -> dict:
    return asdict(c)
