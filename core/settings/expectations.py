"""The ``expectations:`` section of ``cdp.yaml`` (formerly ``quality:``): drift bounds, identity sanity
bounds, source drift bounds, snapshots kept.

Every field has a default, so ``expectations: {}`` is a complete configuration; unknown keys are
errors. The defaults block what is almost always a broken build rather than real change: the
person count halving or doubling, a segment that empties, one "person" swallowing hundreds
of records.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftBounds(_Strict):
    """Change against the last published snapshot that blocks a publish (unless accepted with
    ``cdp publish --accept-drift``). Nothing to compare on the first publish."""

    max_person_count_change: float = Field(
        default=0.1, gt=0,
        description="Relative change of the person count that blocks (0.1: 10% fewer or more persons than the "
                    "last publish; an identity split by a broken source shows here).",
    )
    block_emptied_segment: bool = Field(
        default=True, description="A segment that had members in the last publish and has none now blocks.",
    )
    max_segment_size_change: float | None = Field(
        default=None, gt=0,
        description="Relative change of any segment's size that blocks (for segments of at least "
                    "min_segment_size members); empty = only an emptied segment blocks.",
    )
    min_segment_size: int = Field(default=50, ge=0, description="Smaller segments are not held to max_segment_size_change.")
    max_merge_rate_change: float = Field(
        default=0.15, gt=0,
        description="Absolute change of the share of source records merged with another that blocks.",
    )
    max_churn_mean_change: float = Field(
        default=0.2, gt=0, description="Absolute change of the mean churn probability that blocks.",
    )
    max_churn_psi: float = Field(
        default=0.25, gt=0,
        description="Population stability index of churn probabilities (10 fixed bins) that blocks; "
                    "0.25 is the usual 'significant shift' mark.",
    )


class IdentityBounds(_Strict):
    """Sanity of the resolved identities, on every build."""

    max_cluster_records: int | None = Field(
        default=None, ge=1,
        description="Most source records one person may hold; empty = learned: max_cluster_growth times the "
                    "largest person of the last publish (the first publish relies on identity.max_cluster_size).",
    )
    max_cluster_growth: float = Field(
        default=2.0, gt=1,
        description="With max_cluster_records empty: how many times the last publish's largest person the "
                    "largest person may grow to.",
    )
    max_emails_per_person: int = Field(default=10, ge=1, description="A person with more distinct emails is suspect.")
    max_persons_over_email_limit: int = Field(
        default=0, ge=0, description="How many persons may exceed max_emails_per_person before it blocks.",
    )
    # A shop's merged share is its shape (every loyalty member with receipts merges: 1.0 is
    # fine), so by default it is bounded only relative to the last publish (drift.max_merge_rate_change).
    min_merged_share: float | None = Field(default=None, ge=0, le=1,
                                           description="Lowest share of records merged with another; empty = none.")
    max_merged_share: float | None = Field(default=None, ge=0, le=1,
                                           description="Highest share of records merged with another; empty = none.")


class SourceBounds(_Strict):
    """Suites on each load of a source, and each load since the last publish against the earlier
    loads of the same source (a broken export: a column suddenly empty, one value in every row,
    half the rows missing). Loads of fewer than ``min_rows`` rows are too small to compare."""

    max_invalid_format_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of malformed emails in a loaded table above which the check fails.",
    )
    max_row_count_drop: float = Field(
        default=0.4, gt=0, le=1,
        description="Share by which a load's rows may fall below the smallest of the source's earlier loads "
                    "(0.4: under 60% of them blocks); a load whose timestamps span less time than usual "
                    "is expected to hold proportionally fewer.",
    )
    max_fill_rate_drop: float = Field(
        default=0.25, gt=0, le=1,
        description="How far (absolute) a field's share of rows with a value may fall below the lowest of the "
                    "source's earlier loads (0.25: from 95% filled to under 70% blocks).",
    )
    max_top_value_share_rise: float = Field(
        default=0.2, gt=0, le=1,
        description="How far (absolute) the share of a field's values taken by its most common value may rise "
                    "above the highest of the source's earlier loads (0.2: one email on a fifth more rows blocks).",
    )
    baseline_loads: int = Field(
        default=7, ge=1,
        description="Earlier loads of the source a load is compared with (7: daily files include the same weekday).",
    )
    min_rows: int = Field(
        default=200, ge=1,
        description="Loads (and earlier loads) with fewer rows, or fields with fewer values, are not compared: "
                    "too few to tell a broken export from chance.",
    )


class ExpectationsSettings(_Strict):
    keep_snapshots: int = Field(default=5, ge=1, description="Published snapshots kept for rollback.")
    full_gate_every_days: int = Field(
        default=7, ge=0,
        description="A whole `cdp run` within this many days of the last full gate (same checks) runs the daily gate: "
                    "the same checks, evaluated without GX; GX validates (and Data Docs show) every full gate, and "
                    "every daily gate that fails. 0: a full gate every run.",
    )
    sample_rows: int = Field(
        default=5, ge=0, le=100, description="Failing rows shown per failed check in the report (PII masked).",
    )
    drift: DriftBounds = Field(default_factory=DriftBounds)
    identity: IdentityBounds = Field(default_factory=IdentityBounds)
    sources: SourceBounds = Field(default_factory=SourceBounds)
