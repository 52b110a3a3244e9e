"""What the gate checks, as GX expectation suites, and the SQL that measures it.

GX 1.x has no DuckDB datasource, and reading a 5-million-row mart into pandas to count its
duplicate keys would cost more than the build. So each table is measured in DuckDB first:
one SQL query returns one row of *metrics* (rows with a null key, duplicated keys,
probabilities out of range, persons not in ``customers``...), and GX validates a one-row
DataFrame holding the table's own columns (empty, for the schema expectation) and those
metrics against the table's suite. Drift and identity sanity are measured the same way and validated against
suites whose bounds are ``$PARAMETER``s filled from the ``expectations:`` config.

Every metric knows its check name (the Dagster asset check and the name in messages) and how
to fetch sample failing rows for the report.

The published tables' suites are built at run time from the dbt manifest (``core.published``):
a mart added in dbt is checked without a regenerated file, and there is no committed copy of
dbt's keys, value sets and ranges to fall out of date. What GX adds beyond dbt's own tests is
measuring them again on the final tables just before publishing (write-audit-publish), the
cross-table checks (persons exist, consent of the email audience, one offer per contactable
person) and drift and identity sanity. The suites dbt cannot derive - source loads (from
``core.contracts``), drift and identity - are kept in version control under
``expectations/gx/expectations/*.json``: ``python -m expectations.suites`` rewrites them, and a
test fails when they are out of date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.contracts import DECIMAL, ENTITIES, INTEGER, Entity
from core.published import CONTACT_CHANNELS, PublishedTable

GX_DIR = Path(__file__).resolve().parent / "gx"
SUITES_DIR = GX_DIR / "expectations"

# Email shape: something@something.tld, no spaces (the identity stage decides what links).
EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Numeric source fields that may never be negative.
NON_NEGATIVE_SOURCE_FIELDS = {"total", "subtotal", "unit_price", "price"}
# Fields whose values must lie in [0, 1].
FRACTION_SOURCE_FIELDS = {"margin"}


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value) -> str:
    """A value of an accepted_values list as SQL (numbers stay numbers: `quote: false`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "'" + str(value).replace("'", "''") + "'"
    return repr(value)


@dataclass(frozen=True)
class Metric:
    """One number measured in SQL, validated by one expectation."""

    name: str  # column of the metrics frame
    check: str  # the check it belongs to
    sql: str  # a scalar SQL expression (an aggregate over the table, or a subquery)
    min_value: float | str | None = 0  # str = a $PARAMETER name
    max_value: float | str | None = 0
    strict_max: bool = False
    failing_rows_sql: str | None = None  # SELECT ... of sample failing rows (LIMIT added by the caller)
    blocking: bool = True

    def expectation(self, table: str) -> dict:
        kwargs: dict = {"column": self.name}
        for bound, value in (("min_value", self.min_value), ("max_value", self.max_value)):
            if value is not None:
                kwargs[bound] = {"$PARAMETER": value} if isinstance(value, str) else value
        if self.strict_max:
            kwargs["strict_max"] = True
        return {
            "type": "expect_column_values_to_be_between",
            "kwargs": kwargs,
            "meta": {"check": self.check, "table": table, "blocking": self.blocking},
        }


# --------------------------------------------------------------------------- published tables
def published_metrics(t: PublishedTable, existing: set[str] | None = None) -> list[Metric]:
    """Metrics of one published table. ``existing``: the relations present in the warehouse
    (the consent check needs marts.consent; a missing consent table means nobody consented)."""
    rel = t.relation
    existing = existing or set()
    m: list[Metric] = [Metric("rows", "not_empty" if t.not_empty else "row_count", "count(*)",
                              min_value=1 if t.not_empty else 0, max_value=None, blocking=t.not_empty)]
    if t.keys:
        any_null = " OR ".join(f"{q(k)} IS NULL" for k in t.keys)
        keys = ", ".join(q(k) for k in t.keys)
        m.append(Metric("null_keys", "keys_not_null", f"count(*) FILTER (WHERE {any_null})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {any_null}"))
        dup = f"SELECT {keys} FROM {rel} WHERE NOT ({any_null}) GROUP BY ALL HAVING count(*) > 1"
        m.append(Metric("duplicated_keys", "keys_unique", f"(SELECT count(*) FROM ({dup}))",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE ({keys}) IN ({dup}) ORDER BY {keys}"))
    for p in t.probabilities:
        bad = f"{q(p)} IS NULL OR isnan({q(p)}) OR {q(p)} < 0 OR {q(p)} > 1"
        m.append(Metric(f"{p}_out_of_range", "probabilities_in_range", f"count(*) FILTER (WHERE {bad})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {bad}"))
    for p in t.nullable_probabilities:
        bad = f"{q(p)} IS NOT NULL AND (isnan({q(p)}) OR {q(p)} < 0 OR {q(p)} > 1)"
        m.append(Metric(f"{p}_out_of_range", "probabilities_in_range", f"count(*) FILTER (WHERE {bad})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {bad}"))
    for col, allowed in t.value_sets.items():
        values = ", ".join(sql_literal(v) for v in allowed)
        bad = f"{q(col)} IS NOT NULL AND {q(col)} NOT IN ({values})"
        m.append(Metric(f"{col}_not_in_set", "values_in_set", f"count(*) FILTER (WHERE {bad})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {bad}"))
    for col in t.non_negative:
        bad = f"{q(col)} < 0"
        m.append(Metric(f"{col}_negative", "values_non_negative", f"count(*) FILTER (WHERE {bad})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {bad}"))
    if t.person_column and t.name != "customers":
        pc = q(t.person_column)
        missing = f"{pc} IS NOT NULL AND {pc} NOT IN (SELECT person_id FROM marts.customers)"
        m.append(Metric("persons_missing", "persons_exist", f"count(*) FILTER (WHERE {missing})",
                        failing_rows_sql=f"SELECT * FROM {rel} WHERE {missing}"))
    if t.name == "next_best_offer":
        granted = ("(SELECT person_id FROM marts.consent WHERE channel = 'email_marketing' AND status = 'granted')"
                   if "marts.consent" in existing else "(SELECT NULL::VARCHAR WHERE false)")
        bad = f"channel = 'email' AND person_id NOT IN {granted}"
        m.append(Metric("email_rows_without_consent", "email_audience_has_consent",
                        f"count(*) FILTER (WHERE {bad})", failing_rows_sql=f"SELECT * FROM {rel} WHERE {bad}"))
        if "marts.consent" in existing:
            channels = ", ".join(f"'{c}'" for c in CONTACT_CHANNELS)
            contactable = (f"SELECT DISTINCT person_id FROM marts.consent WHERE status = 'granted' "
                           f"AND channel IN ({channels}) AND person_id IN (SELECT person_id FROM marts.customers)")
            without = f"{contactable} EXCEPT SELECT person_id FROM {rel}"
            m.append(Metric("contactable_persons_without_offer", "one_offer_per_contactable_person",
                            f"(SELECT count(*) FROM ({without}))",
                            failing_rows_sql=f"SELECT person_id FROM ({without}) ORDER BY 1"))
    return m


def published_metrics_sql(t: PublishedTable, metrics: list[Metric]) -> str:
    return "SELECT " + ", ".join(f"{m.sql} AS {q(m.name)}" for m in metrics) + f" FROM {t.relation}"


def published_suite(t: PublishedTable) -> dict:
    """Validated against one row: the table's own columns (empty) plus its metrics. The suite
    holds every expectation the table can have; the consent-dependent metrics are left empty
    (and so pass) while no consent table exists."""
    metrics = published_metrics(t, existing={"marts.consent"})
    schema = {
        "type": "expect_table_columns_to_match_set",
        "kwargs": {"column_set": list(t.required_columns), "exact_match": False},
        "meta": {"check": "schema", "table": t.name, "blocking": True},
    }
    return _suite(f"published_{t.name}", [schema, *[x.expectation(t.name) for x in metrics]],
                  f"Columns and metrics of the published table {t.name} ({t.relation}), measured in DuckDB.")


# --------------------------------------------------------------------------- sources
def source_metrics(ent: Entity, batch_filter: str) -> list[Metric]:
    """Metrics of the rows of one raw table loaded in this batch (``batch_filter``: a SQL
    condition on the raw table's lineage columns)."""
    rel = f"raw.{ent.table}"
    where = f"FROM {rel} WHERE ({batch_filter})"
    m: list[Metric] = []
    for f in ent.fields:
        col = q(f.name)
        if f.required:
            m.append(Metric(f"{f.name}_null", "required_fields_present", f"count(*) FILTER (WHERE {col} IS NULL)",
                            failing_rows_sql=f"SELECT * {where} AND {col} IS NULL"))
        if f.values:
            values = ", ".join("'" + v + "'" for v in f.values)
            bad = f"{col} IS NOT NULL AND {col} NOT IN ({values})"
            m.append(Metric(f"{f.name}_not_in_set", "values_in_set", f"count(*) FILTER (WHERE {bad})",
                            failing_rows_sql=f"SELECT * {where} AND {bad}"))
        if f.type in (DECIMAL, INTEGER) and f.name in NON_NEGATIVE_SOURCE_FIELDS:
            bad = f"{col} < 0"
            if "is_return" in ent.field_names and f.name in ("total", "subtotal"):
                bad += ' AND "is_return" = false'  # a return pays money back: negative unless flagged a sale
            m.append(Metric(f"{f.name}_negative", "values_in_range", f"count(*) FILTER (WHERE {bad})",
                            failing_rows_sql=f"SELECT * {where} AND {bad}"))
        if f.type in (DECIMAL, INTEGER) and f.name in FRACTION_SOURCE_FIELDS:
            bad = f"{col} < 0 OR {col} > 1"
            m.append(Metric(f"{f.name}_out_of_range", "values_in_range", f"count(*) FILTER (WHERE {bad})",
                            failing_rows_sql=f"SELECT * {where} AND ({bad})"))
        if "email" in f.name and f.type == "string":
            bad = f"{col} IS NOT NULL AND NOT regexp_full_match(trim({col}), '{EMAIL_REGEX}')"
            m.append(Metric(f"{f.name}_invalid_share", "formats",
                            f"coalesce(count(*) FILTER (WHERE {bad}) / nullif(count({col}), 0), 0)",
                            max_value="max_invalid_format_rate", failing_rows_sql=f"SELECT * {where} AND {bad}",
                            blocking=False))
    return m


def source_metrics_sql(ent: Entity, metrics: list[Metric], batch_filter: str, loads_filter: str) -> str:
    """One row: the batch's metrics plus its bad-row rate from raw.loads."""
    cols = ", ".join(f"{m.sql} AS {q(m.name)}" for m in metrics)
    rate = (f"(SELECT coalesce(sum(rows_quarantined) / nullif(sum(rows_loaded + rows_quarantined), 0), 0) "
            f"FROM raw.loads WHERE table_name = '{ent.table}' AND ({loads_filter})) AS bad_row_rate")
    return f"SELECT count(*) AS rows_in_batch, {cols + ', ' if cols else ''}{rate} FROM raw.{ent.table} WHERE ({batch_filter})"


BAD_ROW_RATE = Metric("bad_row_rate", "bad_row_rate", "", max_value="max_bad_row_rate")


def source_suite(ent: Entity) -> dict:
    metrics = [*source_metrics(ent, "true"), BAD_ROW_RATE]
    schema = {
        "type": "expect_table_columns_to_match_set",
        "kwargs": {"column_set": [*ent.field_names, "_source", "_file", "_row", "_load_id"], "exact_match": False},
        "meta": {"check": "schema", "table": f"raw.{ent.table}", "blocking": True},
    }
    return _suite(f"source_{ent.table}", [schema, *[x.expectation(f"raw.{ent.table}") for x in metrics]],
                  f"Each load of raw.{ent.table}: contract columns, required fields, allowed values, ranges, "
                  f"formats, bad-row rate.")


# --------------------------------------------------------------------------- drift and identity
DRIFT_METRICS = (
    ("customers", Metric("person_count_change", "drift_person_count", "", min_value=None,
                         max_value="max_person_count_change", strict_max=True)),
    ("segment_membership", Metric("emptied_segments", "drift_segment_sizes", "", max_value="max_emptied_segments")),
    ("segment_membership", Metric("segment_size_change", "drift_segment_sizes", "", min_value=None,
                                  max_value="max_segment_size_change", strict_max=True)),
    ("identity_graph", Metric("merge_rate_change", "drift_merge_rate", "", min_value=None,
                              max_value="max_merge_rate_change", strict_max=True)),
    ("churn_scores", Metric("churn_mean_change", "drift_churn_distribution", "", min_value=None,
                            max_value="max_churn_mean_change", strict_max=True)),
    ("churn_scores", Metric("churn_psi", "drift_churn_distribution", "", min_value=None,
                            max_value="max_churn_psi", strict_max=True)),
)
IDENTITY_METRICS = (
    Metric("largest_cluster_records", "identity_largest_cluster", "", min_value=None, max_value="max_cluster_records"),
    Metric("persons_over_email_limit", "identity_emails_per_person", "", min_value=None,
           max_value="max_persons_over_email_limit"),
    Metric("merged_share", "identity_merged_share", "", min_value="min_merged_share", max_value="max_merged_share"),
)


# Each new load of a source against the earlier loads of the same source (expectations/source_drift.py):
# the worst drop of rows (for the time the load spans), of a field's fill rate, and the worst rise of a field's
# top-value share, over the loads since the last publish. Blocking like drift: accepted with --accept-drift.
SOURCE_DRIFT_METRICS = (
    Metric("rows_drop", "drift_source_rows", "", min_value=None, max_value="max_row_count_drop"),
    Metric("fill_rate_drop", "drift_source_fill_rate", "", min_value=None, max_value="max_fill_rate_drop"),
    Metric("top_value_share_rise", "drift_source_top_value", "", min_value=None,
           max_value="max_top_value_share_rise"),
)


def source_drift_metrics(ent: Entity) -> list[Metric]:
    """The source-drift metrics of one raw table (column names prefixed with the table, as all
    raw tables are validated in one frame)."""
    return [Metric(f"{ent.table}__{m.name}", m.check, "", min_value=None, max_value=m.max_value)
            for m in SOURCE_DRIFT_METRICS]


def source_drift_suite(tables: set[str] | None = None) -> dict:
    """``tables``: only these raw tables' expectations (those with loads to compare: a GX
    validation costs per expectation); default all, as kept in version control."""
    return _suite("gate_source_drift",
                  [m.expectation(f"raw.{ent.table}") for ent in ENTITIES for m in source_drift_metrics(ent)
                   if tables is None or ent.table in tables],
                  "Each load since the last publish against the earlier loads of its source: rows for the "
                  "time spanned, fill rate and top-value share per field; bounds from expectations.sources.")


def drift_suite() -> dict:
    return _suite("gate_drift", [m.expectation(table) for table, m in DRIFT_METRICS],
                  "Change against the last published snapshot; bounds from expectations.drift.")


def identity_suite() -> dict:
    return _suite("gate_identity", [m.expectation("identity_graph") for m in IDENTITY_METRICS],
                  "Sanity of the resolved identities; bounds from expectations.identity.")


# --------------------------------------------------------------------------- files
def _suite(name: str, expectations: list[dict], notes: str) -> dict:
    return {"name": name, "expectations": expectations, "meta": {"generated_by": "expectations/suites.py"},
            "notes": notes}


def all_suites() -> list[dict]:
    """The suites kept in version control (the published tables' are built from the manifest)."""
    return [*(source_suite(ent) for ent in ENTITIES), drift_suite(), identity_suite(), source_drift_suite()]


def suite_json(suite: dict) -> str:
    return json.dumps(suite, indent=2, sort_keys=True) + "\n"


def write_suites(directory: Path = SUITES_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for suite in all_suites():
        path = directory / f"{suite['name']}.json"
        path.write_text(suite_json(suite))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_suites():
        print(p.relative_to(GX_DIR.parent.parent))
