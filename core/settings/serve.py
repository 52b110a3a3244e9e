"""The ``serve:`` section of cdp.yaml: the real-time server (``cdp serve``, package ``serve``).

Keys never sit in the file: ``write_keys_env`` / ``read_keys_env`` name environment variables,
each holding one key (a write key lets an SDK send events; a read key lets an application read
profiles and ask for decisions). The server refuses to start while a named variable is unset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.published import CONSENT_CHANNELS, CONTACT_CHANNELS
from core.settings.activation import KLAVIYO_REVISION, REVISION_RE, Retry, Webhook


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _env_names(v: list[str]) -> list[str]:
    for name in v:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
    return v


class KlaviyoEvent(_Strict):
    """A trigger delivered as a Klaviyo event (Create Event), for a Klaviyo flow to send."""

    type: Literal["klaviyo"]
    base_url: str = "https://a.klaviyo.com"
    api_key_env: str = Field(description="Environment variable holding the private API key.")
    revision: str = Field(default=KLAVIYO_REVISION, pattern=REVISION_RE, description="Klaviyo API revision header.")
    metric: str = Field(default="Cart Abandoned", min_length=1, max_length=127,
                        description="The event's metric name (what the Klaviyo flow is triggered by).")
    identifier: Literal["person_id", "email"] = Field(
        default="person_id", description="How the profile is named: person_id as external_id (as a person_id-keyed "
                                         "sync writes it) or the person's email from the published customers.")


class CartAbandonment(_Strict):
    """An add-to-cart with no checkout within ``window_seconds`` -> one webhook call per cart,
    for a person in one of ``intent_groups`` who consents on ``consent_channel``; a purchase (or
    a checkout) inside the window cancels it."""

    window_seconds: float = Field(default=1800, gt=0, description="How long a cart may wait for a checkout.")
    intent_groups: list[str] = Field(default_factory=lambda: ["on_the_fence"],
                                     description="Cart-intent groups that get a nudge (likely / on_the_fence / unlikely).")
    consent_channel: str = Field(default="email_marketing", description=f"One of {', '.join(CONSENT_CHANNELS)}.")
    max_per_person_per_day: int = Field(default=1, ge=1, description="Frequency cap on nudges per person.")
    destination: Webhook | KlaviyoEvent = Field(discriminator="type")
    retry: Retry = Retry(max_attempts=3, base_delay_s=0.2, max_delay_s=2.0, timeout_s=5.0)

    @field_validator("intent_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        bad = [g for g in v if g not in ("likely", "on_the_fence", "unlikely")]
        if bad:
            raise ValueError(f"unknown intent group(s) {bad}; use likely, on_the_fence, unlikely")
        return v

    @field_validator("consent_channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        if v not in CONSENT_CHANNELS:
            raise ValueError(f"unknown consent channel {v!r}; use one of {', '.join(CONSENT_CHANNELS)}")
        return v

    @model_validator(mode="after")
    def _klaviyo_channel(self) -> "CartAbandonment":
        # Klaviyo's marketing consent is per channel, email or SMS: a flow message goes out on one
        if isinstance(self.destination, KlaviyoEvent) and self.consent_channel not in CONTACT_CHANNELS:
            raise ValueError(f"a Klaviyo destination needs consent_channel {' or '.join(CONTACT_CHANNELS)} "
                             f"(Klaviyo's marketing consent is per email / SMS channel), not {self.consent_channel!r}")
        return self


class ServeSettings(_Strict):
    host: str = Field(default="127.0.0.1", description="Interface to listen on (put a reverse proxy in front "
                                                       "for TLS and exposure beyond this host).")
    port: int = Field(default=8787, ge=1, le=65535)
    source: str = Field(default="web", description="The web source whose landing folder receives collected events.")
    write_keys_env: list[str] = Field(default_factory=list, description="Environment variables, each holding one "
                                      "write key (the SDK's writeKey).")
    read_keys_env: list[str] = Field(default_factory=list, description="Environment variables, each holding one "
                                     "read key (profiles and decisions).")
    spool: Path = Field(default=Path(".serve"), description="Folder of the fsync'd append log and live state.")
    rotate_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Log size that rotates it into a landing file.")
    rotate_seconds: float = Field(default=60.0, gt=0, description="Log age that rotates it into a landing file.")
    max_event_bytes: int = Field(default=32 * 1024, ge=1024, description="Segment's limit per event.")
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024, description="Segment's limit per request.")
    dedup_ids: int = Field(default=1_000_000, ge=1000, description="Recent messageIds remembered to drop re-deliveries.")
    rate_limit_per_second: float = Field(default=2000.0, gt=0, description="Requests per second per key (token bucket).")
    rate_limit_burst: int = Field(default=4000, ge=1, description="Requests a key may send at once.")
    session_minutes: int = Field(default=30, ge=1, description="Inactivity that ends a live session.")
    cart_abandonment: CartAbandonment | None = None
    workers: int = Field(default=1, ge=1, le=32, description="Worker processes on one port (each with its own "
                         "fsync'd log, following every worker's log into its live state).")
    worker_socket: Literal["reuseport", "shared"] = Field(
        default="reuseport", description="How workers share the port: a socket per worker with SO_REUSEPORT, the "
                                         "kernel spreading connections (reuseport; the lower decision p99 of the "
                                         "two in bench_serve), or one listening socket the supervisor opens and "
                                         "every worker accepts from (shared).")

    _check_write = field_validator("write_keys_env")(classmethod(lambda cls, v: _env_names(v)))
    _check_read = field_validator("read_keys_env")(classmethod(lambda cls, v: _env_names(v)))

    @model_validator(mode="after")
    def _separate_keys(self) -> "ServeSettings":
        both = set(self.write_keys_env) & set(self.read_keys_env)
        if both:
            raise ValueError(f"{sorted(both)} named as both write and read key; keep the keys separate")
        return self
