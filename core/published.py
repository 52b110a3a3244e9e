"""The one registry of published tables: name -> warehouse relation, Dagster asset, keys, checks.

Everything that publishes or checks a published table reads it from here: the GX suites
(generated from it, see ``expectations/suites.py``), the gate, the Dagster publish asset and
its checks, the snapshot writer and the marketer commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONSENT_CHANNELS = ("email_marketing", "sms_marketing", "web_personalisation")
# Persons reachable by a marketing channel: a granted consent on one of these.
CONTACT_CHANNELS = ("email_marketing", "sms_marketing")


@dataclass(frozen=True)
class PublishedTable:
    name: str  # the published name (table in the snapshot's main schema)
    relation: str  # where the build writes it in the warehouse
    keys: tuple[str, ...] = ()  # unique and not null together
    columns: tuple[str, ...] = ()  # required columns (besides the keys)
    probabilities: tuple[str, ...] = ()  # each in [0, 1] (and not null)
    nullable_probabilities: tuple[str, ...] = ()  # in [0, 1] when present
    value_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> allowed values (nulls allowed)
    non_negative: tuple[str, ...] = ()  # numeric columns that must be >= 0 when present
    person_column: str | None = None  # every value must be a person in customers
    not_empty: bool = False
    pii_columns: tuple[str, ...] = ()  # masked in reports
    # Dagster asset that builds it (default marts/<name>).
    asset: tuple[str, ...] | None = None
    description: str = ""

    @property
    def asset_path(self) -> tuple[str, ...]:
        return self.asset or ("marts", self.name)

    @property
    def required_columns(self) -> tuple[str, ...]:
        ordered = [*self.keys, *self.columns, *self.probabilities, *self.nullable_probabilities,
                   *self.value_sets, *self.non_negative]
        if self.person_column:
            ordered.append(self.person_column)
        return tuple(dict.fromkeys(ordered))

    @property
    def schema(self) -> str:
        return self.relation.split(".")[0]

    @property
    def table(self) -> str:
        return self.relation.split(".")[1]


PUBLISHED_TABLES: tuple[PublishedTable, ...] = (
    PublishedTable(
        "customers", "marts.customers", keys=("person_id",),
        columns=("first_name", "last_name", "email", "phone", "as_of"), not_empty=True,
        pii_columns=("first_name", "last_name", "email", "phone", "address_line1", "city", "postcode", "date_of_birth"),
        description="Golden record per person.",
    ),
    PublishedTable("customer_traits", "marts.customer_traits", keys=("person_id",), columns=("as_of",),
                   person_column="person_id", description="Traits per person."),
    PublishedTable("segment_membership", "marts.segment_membership", keys=("segment", "person_id"),
                   columns=("since",), person_column="person_id", description="Current segment members."),
    PublishedTable("segment_membership_history", "marts.segment_membership_history",
                   keys=("segment", "person_id", "entered_at"), columns=("exited_at",),
                   description="Entries and exits of segments."),
    PublishedTable("segment_catalog", "marts.segment_catalog", keys=("segment",),
                   columns=("description", "definition"), value_sets={"kind": ("builtin", "declarative")},
                   description="Every segment, built in or declared."),
    PublishedTable("churn_scores", "marts.churn_scores", keys=("person_id",),
                   columns=("risk_tier", "model_version", "top_reasons"), probabilities=("churn_probability",),
                   person_column="person_id", description="Churn probability per person."),
    PublishedTable("cart_intent", "marts.cart_intent", keys=("person_id",), probabilities=("purchase_probability",),
                   value_sets={"intent_group": ("likely", "on_the_fence", "unlikely")},
                   non_negative=("expected_return_hours",), person_column="person_id",
                   description="Purchase probability of open carts."),
    PublishedTable("next_best_offer", "marts.next_best_offer", keys=("person_id",),
                   columns=("offer", "channel", "expected_value", "reason_codes", "holdout", "experiment"),
                   person_column="person_id", description="One offer per contactable person."),
    PublishedTable("recommendations", "marts.recommendations", keys=("person_id", "rank"),
                   columns=("sku", "score", "reason"), non_negative=("rank",), person_column="person_id",
                   description="Top products per person."),
    PublishedTable("identity_graph", "marts.identity_graph", keys=("source", "source_record_id"),
                   columns=("person_id", "match_method"), nullable_probabilities=("match_probability",),
                   person_column="person_id", description="Source record -> person."),
    PublishedTable("identity_changes", "marts.identity_changes", columns=("run_id", "person_id", "change"),
                   description="Persons new, merged, split or erased per run."),
    PublishedTable("consent", "marts.consent", keys=("person_id", "channel"), columns=("since", "source"),
                   value_sets={"channel": CONSENT_CHANNELS, "status": ("granted", "denied")},
                   person_column="person_id", description="Latest consent per person and channel."),
    PublishedTable("model_metrics", "marts.model_metrics", columns=("model", "metric", "value", "dataset"),
                   description="Model quality metrics."),
    PublishedTable("experiment_results", "marts.experiment_results", keys=("experiment", "arm"),
                   columns=("metric", "n", "outcome_mean", "abs_lift", "abs_lift_low", "abs_lift_high", "srm_flag"),
                   nullable_probabilities=("prob_beats_control",), non_negative=("n", "exposed"),
                   description="Lift per experiment and arm."),
    PublishedTable("experiment_assignments", "marts.experiment_assignments", keys=("experiment", "person_id"),
                   columns=("arm", "holdout", "exposed_at"), person_column="person_id",
                   description="Experiment arm per exposed person."),
)

BY_NAME = {t.name: t for t in PUBLISHED_TABLES}


def published_table(name: str) -> PublishedTable:
    return BY_NAME[name]
