"""The ``syncs:`` section of cdp.yaml: one entry per reverse-ETL sync.

Secrets never sit in the file: a destination names the environment variable that holds its
key (``api_key_env: KLAVIYO_API_KEY``), read when the sync runs.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.published import CONSENT_CHANNELS
from core.settings.names import NAME_RE, snake_name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyncSource(_Strict):
    """Exactly one of: a segment name, a published table keyed by person_id, or a read-only query."""

    segment: str | None = Field(default=None, description="Name of a segment in the published segment_membership.")
    table: str | None = Field(default=None, description="A published table with a person_id column.")
    query: str | None = Field(
        default=None, description="SELECT over the published snapshot returning person_id and the mapped columns."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "SyncSource":
        given = [k for k in ("segment", "table", "query") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of segment, table or query")
        if self.table and not re.fullmatch(NAME_RE, self.table):
            raise ValueError(f"table {self.table!r} is not a published table name (lower-case letters, digits, _)")
        if self.query:
            head = self.query.lstrip().split(None, 1)[0].lower() if self.query.strip() else ""
            if head not in ("select", "with", "from"):
                raise ValueError("query must be a read-only SELECT (it may start with WITH)")
        return self

    def describe(self) -> str:
        if self.segment:
            return f"segment {self.segment}"
        if self.table:
            return f"table {self.table}"
        return "query"


class Retry(_Strict):
    """Bounded exponential backoff with jitter on 429, 5xx, timeouts and dropped connections."""

    max_attempts: int = Field(default=5, ge=1, le=20)
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=30.0, ge=0)
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request connect/read timeout.")


# The newest stable revision of Klaviyo's published OpenAPI (github.com/klaviyo/openapi,
# openapi/stable.json, info.version) when this default was last moved.
KLAVIYO_REVISION = "2026-07-15"
REVISION_RE = r"\d{4}-\d{2}-\d{2}(\.[a-z0-9]+)?"


def revision_retires(revision: str) -> date:
    """Klaviyo retires a revision two years after its release date (its versioning policy)."""
    if not re.fullmatch(REVISION_RE, revision or ""):
        raise ValueError(f"revision {revision!r} is not of Klaviyo's form YYYY-MM-DD[.suffix]")
    released = date.fromisoformat(revision[:10])
    try:
        return released.replace(year=released.year + 2)
    except ValueError:  # 29 February
        return released.replace(year=released.year + 2, day=28)


class Klaviyo(_Strict):
    type: Literal["klaviyo"]
    base_url: str = "https://a.klaviyo.com"
    api_key_env: str = Field(description="Environment variable holding the private API key.")
    list_id: str | None = Field(default=None, description="List the synced profiles belong to (needed for removals).")
    revision: str = Field(default=KLAVIYO_REVISION, pattern=REVISION_RE,
                          description="Klaviyo API revision header; warned about six months before it retires.")
    batch_size: int = Field(default=10_000, ge=1, le=10_000, description="Profiles per bulk import job.")
    max_request_bytes: int = Field(default=5_000_000, ge=10_000, le=5_000_000)
    job_poll_interval_s: float = Field(default=2.0, ge=0)
    job_timeout_s: float = Field(default=600.0, gt=0)

    marketing: Literal[True] = True


class Mailchimp(_Strict):
    type: Literal["mailchimp"]
    base_url: str = Field(description="https://<dc>.api.mailchimp.com (the data centre of your account).")
    api_key_env: str = Field(description="Environment variable holding the API key.")
    list_id: str = Field(description="Audience (list) id.")
    status_if_new: Literal["subscribed", "pending", "transactional"] = "subscribed"
    batch_size: int = Field(default=500, ge=1, le=500)

    marketing: Literal[True] = True


class Webhook(_Strict):
    type: Literal["webhook"]
    url: str
    secret_env: str = Field(description="Environment variable holding the HMAC-SHA256 signing secret.")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    marketing: bool = Field(default=True, description="A marketing webhook needs a consent rule.")


class Files(_Strict):
    type: Literal["files"]
    folder: str = Field(description="Folder the drops are written into (relative to the config's folder).")
    format: Literal["csv", "parquet"] = "csv"
    marketing: bool = False


Destination = Annotated[Union[Klaviyo, Mailchimp, Webhook, Files], Field(discriminator="type")]


class ConsentRule(_Strict):
    channel: Literal[CONSENT_CHANNELS]  # type: ignore[valid-type]


class FrequencyCap(_Strict):
    """At most ``max`` nudges a person on the consent channel within ``days``, counting this
    sync's, other capped syncs' and ``cdp serve``'s live nudges (activation/nudges.py)."""

    max: int = Field(default=1, ge=1)
    days: float = Field(default=1.0, gt=0)


def _cron(v: str) -> str:
    fields = v.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?]+", f) for f in fields):
        raise ValueError(f"{v!r} is not a 5-field cron expression such as '0 4 * * *'")
    return v


SyncName = snake_name("vip_to_klaviyo")


class SyncConfig(_Strict):
    name: SyncName
    source: SyncSource
    destination: Destination
    identifier: str = Field(default="email", description="Source column that keys the person at the destination.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Destination field -> source column, e.g. {first_name: first_name}."
    )
    mode: Literal["upsert", "mirror", "add_only"] = "upsert"
    schedule: str | None = Field(default=None, description="Cron (UTC) for the Dagster schedule; empty = none.")
    consent: ConsentRule | None = None
    frequency_cap: FrequencyCap | None = Field(
        default=None, description="Leave out of a run whoever reached the cap on the consent channel (live nudges "
                                  "count); they are sent by a later run once under it. Needs a consent rule.")
    retry: Retry = Retry()
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return _cron(v) if v else None

    @model_validator(mode="after")
    def _rules(self) -> "SyncConfig":
        d = self.destination
        if self.frequency_cap is not None and self.consent is None:
            raise ValueError("frequency_cap counts nudges on the consent channel: add a consent rule "
                             "(consent: {channel: email_marketing})")
        if d.marketing and self.consent is None:
            raise ValueError(
                f"destination {d.type!r} is a marketing destination: add a consent rule "
                f"(consent: {{channel: email_marketing}}) so only persons who opted in are sent"
                + ("; or set destination.marketing: false if this webhook is not marketing" if d.type == "webhook" else "")
            )
        if d.type == "mailchimp" and self.identifier != "email":
            raise ValueError("mailchimp keys members by email: identifier must be 'email'")
        if d.type == "klaviyo" and self.identifier not in ("email", "phone", "person_id"):
            raise ValueError("klaviyo identifier must be one of: email, phone, person_id")
        if d.type == "klaviyo" and self.identifier == "person_id" and not ({"email", "phone_number"} & set(self.fields)):
            raise ValueError("a klaviyo sync keyed by person_id must map email or phone_number in fields: "
                             "consent changes and erasure address the profile by them")
        if d.type == "klaviyo" and self.mode == "mirror" and not d.list_id:
            raise ValueError("mode mirror removes persons from a list: set destination.list_id")
        return self


def _unique_names(syncs: list[SyncConfig]) -> list[SyncConfig]:
    seen: set[str] = set()
    for s in syncs:
        if s.name in seen:
            raise ValueError(f"the sync name {s.name!r} is used twice; names must be unique")
        seen.add(s.name)
    return syncs


Syncs = Annotated[list[SyncConfig], AfterValidator(_unique_names)]
