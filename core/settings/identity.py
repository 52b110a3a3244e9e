"""The ``identity:`` section of ``cdp.yaml``: thresholds, per-identifier rules, survivorship.

Every field has a default, so ``identity: {}`` is a complete, working configuration, and
unknown keys are errors (``extra="forbid"``) so that a typo never silently falls back to a
default.

Per-identifier rules, as the better CDPs have them:

- ``priority``: deterministic edges of a lower number are applied first.
- ``max_per_profile``: a merge that would give one person more distinct values is refused.
- ``blocked_values`` / ``blocked_patterns``: exact values (compared after normalisation,
  case-insensitively) and regular expressions (RE2, on the normalised value) that are junk:
  they are dropped from the identity record and never link anything.
- ``unique``: merge protection, "a person holds at most one": two clusters holding different
  values (of one source) never merge. ``unique: false`` makes the id mean "equal values are
  one person" only, so a customer list whose duplicates carry different member numbers
  dedupes (``identity: {rules: {loyalty_id: {unique: false}}}``).
- ``requires``: a deterministic edge on this identifier also needs these fields to be
  compatible (households share a landline and a surname, not a first name).
- ``link``: whether equal values make a deterministic edge at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IDENTIFIERS = (
    "loyalty_id", "user_id", "anonymous_id", "alias", "link_tracking_id", "order_ref", "card_token", "subscriber_id",
    "email", "phone", "first_name", "last_name", "postcode", "date_of_birth",
)
GOLDEN_FIELDS = ("first_name", "last_name", "email", "phone", "address_line1", "city", "postcode", "date_of_birth")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentifierRule(_Strict):
    link: bool = Field(default=True, description="Equal values make a deterministic edge.")
    priority: int = Field(default=50, ge=0, description="Lower = applied earlier (stronger).")
    max_per_profile: int | None = Field(default=None, ge=1, description="At most this many distinct values per person.")
    blocked_values: list[str] = Field(default_factory=list, description="Junk values, compared case-insensitively.")
    blocked_patterns: list[str] = Field(default_factory=list, description="RE2 patterns on the normalised value.")
    unique: bool = Field(default=False, description="A person holds at most one value (per source): clusters with "
                                                    "different values never merge. false = duplicates may hold several.")
    requires: list[Literal["first_name", "last_name"]] = Field(
        default_factory=list, description="Fields that must be compatible for an edge on this identifier."
    )


_JUNK_EMAIL_VALUES = [
    "test@test.com", "noemail@none.com", "none@none.com", "a@a.com", "no@email.com", "noemail@noemail.com",
    "na@na.com", "n/a", "none", "null", "unknown", "email@email.com", "customer@customer.com",
]
_JUNK_EMAIL_PATTERNS = [
    r"^(test|testing|noemail|no-email|none|nobody|null|na|n\.a|unknown|dummy|fake|asdf|abc|xxx+|no)@",
    r"@(example\.(com|org|net|co\.uk)|test\.com|none\.com|noemail\.com|email\.com|mailinator\.com)$",
    r"^[^@]*$",  # not an address at all
]
_JUNK_PHONE_PATTERNS = [r"0000000", r"1234567", r"9876543", r"1111111", r"9999999", r"^\+44(0|7)0{6,}", r"^\+?\d{0,7}$"]
_JUNK_NAME_VALUES = ["n/a", "na", "none", "-", "test", "x", "xx", "xxx", "unknown", "null", "tbc", "customer",
                     "mr", "mrs", "ms", "miss", "dr", "anon", "anonymous", "no name", "noname", "guest"]


def _default_rules() -> dict[str, IdentifierRule]:
    return {
        # unique: a person holds at most one (per source). `unique: false` alone turns that off,
        # for a customer list whose duplicates carry different member numbers (no hidden limit)
        "loyalty_id": IdentifierRule(priority=10, unique=True),
        "user_id": IdentifierRule(priority=10, unique=True),
        "anonymous_id": IdentifierRule(priority=20, max_per_profile=200),
        # a Segment alias call: the customer's own system says the two ids are one person, so it
        # merges even two login user ids (merge protection yields to it); bounded: an id named in
        # alias calls with more than max_per_profile - 1 other ids links none of them, and an
        # alias merge never gives one person more than max_per_profile user ids (limit:alias)
        "alias": IdentifierRule(priority=20, max_per_profile=5),
        "link_tracking_id": IdentifierRule(priority=30),
        "order_ref": IdentifierRule(priority=25),
        # receipts known only by the card that paid follow the one person whose receipts used it
        # (an attachment, never an edge between profiles, so no priority applies)
        "card_token": IdentifierRule(),
        "subscriber_id": IdentifierRule(priority=30, max_per_profile=5),
        # an equal email or phone is corroborated by a compatible first name: a shared family
        # mailbox or a typo landing on someone else's address is not proof on its own
        "email": IdentifierRule(priority=40, max_per_profile=10, blocked_values=_JUNK_EMAIL_VALUES,
                                blocked_patterns=_JUNK_EMAIL_PATTERNS, requires=["first_name"]),
        "phone": IdentifierRule(priority=50, max_per_profile=5, blocked_patterns=_JUNK_PHONE_PATTERNS,
                                blocked_values=["n/a", "none", "0", "unknown"], requires=["first_name"]),
        "first_name": IdentifierRule(link=False, blocked_values=_JUNK_NAME_VALUES, blocked_patterns=[r"^[^a-z]*$"]),
        "last_name": IdentifierRule(link=False, blocked_values=_JUNK_NAME_VALUES, blocked_patterns=[r"^[^a-z]*$"]),
        "postcode": IdentifierRule(link=False, blocked_values=["n/a", "none", "unknown"]),
        "date_of_birth": IdentifierRule(link=False, blocked_values=["1900-01-01", "1970-01-01", "1901-01-01"]),
    }


class SurvivorshipRule(_Strict):
    strategy: Literal["most_recent", "most_frequent", "source_priority"] = "most_recent"
    source_priority: list[str] = Field(
        default_factory=list, description="Source names, best first (ties and 'source_priority' strategy)."
    )


def _default_survivorship() -> dict[str, SurvivorshipRule]:
    return {
        "first_name": SurvivorshipRule(strategy="most_frequent"),
        "last_name": SurvivorshipRule(strategy="most_frequent"),
        "email": SurvivorshipRule(strategy="most_recent"),
        "phone": SurvivorshipRule(strategy="most_recent"),
        "address_line1": SurvivorshipRule(strategy="most_recent"),
        "city": SurvivorshipRule(strategy="most_recent"),
        "postcode": SurvivorshipRule(strategy="most_recent"),
        "date_of_birth": SurvivorshipRule(strategy="most_frequent"),
    }


class SplinkTraining(_Strict):
    enabled: bool = Field(default=True, description="Off = deterministic rules only.")
    u_max_pairs: float = Field(default=3e6, gt=0, description="Random pairs sampled to estimate u.")
    em_max_pairs: float = Field(default=2e6, gt=0, description="Blocked pairs used per EM session, at most.")
    seed: int = 42
    recall_of_deterministic_rules: float = Field(default=0.7, gt=0, le=1)
    max_iterations: int = Field(default=25, ge=1)
    term_frequencies: bool = Field(default=True, description="Term-frequency adjust exact name, email and city matches.")
    # The recipe is chosen from the columns present (identity/splink_model.choose_recipe);
    # each part can be fixed here instead (Splink SQL on l./r. columns of the model input).
    blocking_rules: list[str] | None = Field(default=None, description="Prediction blocking rules; empty = from the data.")
    lambda_rules: list[str] | None = Field(
        default=None, description="Deterministic rules estimating the prior match probability; empty = from the data.")
    em_blocks: list[str] | None = Field(default=None, description="One EM session per rule; empty = from the data.")
    postcode_district_chars: int | None = Field(
        default=None, ge=-6, le=8,
        description="Postcode characters of the district level: N > 0 keeps the first N (ZIP3: 3), -N drops the "
                    "last N (UK outward code: -3); empty = from the data (all-digit postcodes 3, else -3).")
    # when the saved model is retrained (identity/model_store.py); between, runs score with it
    retrain_every_days: int = Field(
        default=7, ge=0, description="Retrain the Splink model when it is this many days old by the run's as_of; "
                                     "0 = every run.")
    retrain_if_records_grow_by: float = Field(
        default=0.25, gt=0, description="Retrain when the records grew by more than this share since training.")
    retrain_if_match_rate_moves_by: float = Field(
        default=0.25, gt=0, description="Retrain (and score again) when the share of records in a proposed pair "
                                        "moves by more than this share of its value at training.")


class IdentitySettings(_Strict):
    match_threshold: float = Field(
        default=0.99, gt=0, lt=1, description="Splink match probability at or above which an edge is proposed."
    )
    conflict_match_probability: float = Field(
        default=0.9999, gt=0, le=1,
        description="A Splink edge between clusters whose first names or dates of birth disagree merges only at "
                    "or above this probability (the disagreement is weighed, not a veto; 1 = always refuse).",
    )
    max_cluster_size: int = Field(
        default=60, ge=2,
        description="Most profile records (transactions not counted) one person may hold; bigger merges are refused and flagged.",
    )
    default_phone_region: str = Field(default="GB", description="Region for phone numbers written without +country.")
    sources: list[str] | None = Field(
        default=None, description="Source instance names to resolve; empty = every enabled source."
    )
    rules: dict[str, IdentifierRule] = Field(default_factory=_default_rules)
    survivorship: dict[str, SurvivorshipRule] = Field(default_factory=_default_survivorship)
    splink: SplinkTraining = SplinkTraining()
    memory_limit_gb: float = Field(
        default=4.0, gt=0,
        description="DuckDB memory the stage may hold, Splink's database and the warehouse connection together "
                    "(while Splink runs it gets 3/4 of it); past it DuckDB spills to temporary files beside the "
                    "warehouse, removed when the stage ends. Python's own arrays come on top (about 1 GB at 1M "
                    "customers).")
    overrides_file: str = Field(
        default="identity_overrides.csv",
        description="Manual force-merge / force-split pairs of records (by record key), relative to cdp.yaml; "
                    "written by `cdp identity merge|split`, applied before clustering on every run.")

    @field_validator("rules", mode="before")
    @classmethod
    def _merge_rule_defaults(cls, v):
        """A rule given in the config overrides that identifier's default rule field by field."""
        if not isinstance(v, dict):
            return v
        merged: dict = {k: r.model_dump() for k, r in _default_rules().items()}
        for name, rule in v.items():
            if name not in IDENTIFIERS:
                raise ValueError(f"unknown identifier {name!r}; use one of: {', '.join(IDENTIFIERS)}")
            if isinstance(rule, IdentifierRule):
                rule = rule.model_dump()
            if not isinstance(rule, dict):
                raise ValueError(f"rules.{name} must be a mapping")
            merged[name] = {**merged.get(name, {}), **rule}
        return merged

    @field_validator("survivorship", mode="before")
    @classmethod
    def _merge_survivorship_defaults(cls, v):
        if not isinstance(v, dict):
            return v
        merged: dict = {k: r.model_dump() for k, r in _default_survivorship().items()}
        for name, rule in v.items():
            if name not in GOLDEN_FIELDS:
                raise ValueError(f"unknown field {name!r}; use one of: {', '.join(GOLDEN_FIELDS)}")
            merged[name] = rule.model_dump() if isinstance(rule, SurvivorshipRule) else rule
        return merged

    @field_validator("default_phone_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.upper()
        if phonenumbers.country_code_for_region(v) == 0:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (use ISO codes such as GB, IE, US)")
        return v

    def rule(self, identifier: str) -> IdentifierRule:
        return self.rules.get(identifier, IdentifierRule(link=False))


def settings_of(config) -> IdentitySettings:
    """The identity settings of a Config (accepts the model, or a raw mapping)."""
    ident = getattr(config, "identity", config)
    if isinstance(ident, IdentitySettings):
        return ident
    return IdentitySettings.model_validate(ident or {})
