"""cdp.yaml's `experiments:` list: each experiment as data (validated like the rest of the config:
unknown keys are errors naming the key).

    experiments:
      - name: winback_q3
        population: lifecycle_lapsing        # 'all' or a segment built before scoring (rfm_*, lifecycle_*)
        arms:
          - {name: holdout, share: 0.1, holdout: true}
          - {name: treatment, share: 0.9}
        metric: conversion                   # conversion | revenue_per_person | aov | churn
        window_days: 30
        start: 2025-06-01
        planned_days: 28                     # the horizon alpha spending is planned over
        offers: true                         # next-best-offer's holdout comes from this experiment
        syncs: [lapsing_to_klaviyo]          # these syncs never send to its holdout arms
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.settings.names import snake_name

METRICS = ("conversion", "revenue_per_person", "aov", "churn")
# Metrics where a lower value is the better one (the posterior "beats control" and the lift's sign read that way).
LOWER_IS_BETTER = {"churn"}
# Segments that exist before the scoring stage, when assignment runs (dbt's int_segment_membership).
POPULATION_SEGMENT_PREFIXES = ("rfm_", "lifecycle_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ArmName = snake_name("holdout", "arm names use")
ExperimentName = snake_name("winback_q3")


class Arm(_Strict):
    name: ArmName
    share: float = Field(gt=0, le=1, description="Share of the population assigned to this arm.")
    holdout: bool = Field(default=False, description="A holdout arm is never sent anything (offers, attached syncs).")


class Experiment(_Strict):
    name: ExperimentName
    population: str = Field(default="all", description="'all' or a segment built before scoring (rfm_*, lifecycle_*).")
    arms: list[Arm] = Field(min_length=2)
    control: str | None = Field(default=None, description="The arm others are compared to; default: the first "
                                                          "holdout arm, else the first arm.")
    metric: Literal["conversion", "revenue_per_person", "aov", "churn"] = "conversion"
    window_days: int = Field(default=30, ge=1, le=365, description="Outcome window after each person's exposure.")
    start: date
    planned_days: int = Field(default=28, ge=1, le=730,
                              description="Planned duration: alpha is spent over it (O'Brien-Fleming, Lan-DeMets).")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    offers: bool = Field(default=False, description="next-best-offer takes its holdout from this experiment.")
    syncs: list[str] = Field(default_factory=list, description="Syncs that never send to this experiment's holdout arms.")

    @field_validator("population")
    @classmethod
    def _population(cls, v: str) -> str:
        if v != "all" and not v.startswith(POPULATION_SEGMENT_PREFIXES):
            raise ValueError(
                f"population {v!r}: use 'all' or a segment that exists before scoring, when people are assigned "
                f"(names starting {' or '.join(POPULATION_SEGMENT_PREFIXES)}, e.g. 'lifecycle_lapsing')")
        return v

    @model_validator(mode="after")
    def _arms(self) -> "Experiment":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique; got {', '.join(names)}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arms: shares must add up to 1; they add up to {total:g}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not an arm; arms are: {', '.join(names)}")
        if self.offers and not any(a.holdout for a in self.arms):
            raise ValueError("offers: true needs a holdout arm (holdout: true) for next-best-offer to hold out")
        if self.syncs and not any(a.holdout for a in self.arms):
            raise ValueError("syncs: attaching syncs needs a holdout arm (holdout: true) for them to leave out")
        return self

    @property
    def control_arm(self) -> str:
        if self.control:
            return self.control
        return next((a.name for a in self.arms if a.holdout), self.arms[0].name)

    @property
    def holdout_arms(self) -> set[str]:
        return {a.name for a in self.arms if a.holdout}


def check_experiments(experiments: list[Experiment], sync_names: set[str]) -> None:
    """Checks across sections: unique names, attached syncs exist, at most one experiment drives offers."""
    seen: set[str] = set()
    for e in experiments:
        if e.name in seen:
            raise ValueError(f"experiments: the name {e.name!r} is used twice; names must be unique")
        seen.add(e.name)
        unknown = [s for s in e.syncs if s not in sync_names]
        if unknown:
            raise ValueError(f"experiments[{e.name}].syncs: no sync named {', '.join(map(repr, unknown))}; "
                             f"syncs are: {', '.join(sorted(sync_names)) or '(none)'}")
    on_offers = [e.name for e in experiments if e.offers]
    if len(on_offers) > 1:
        raise ValueError(f"experiments: only one experiment can drive next-best-offer's holdout; "
                         f"{', '.join(on_offers)} all set offers: true")
