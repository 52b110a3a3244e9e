"""HTTP with bounded retries: exponential backoff with full jitter on 429 (Retry-After wins),
5xx, timeouts and dropped connections; the RateLimit-* headers pace the next request.

A response the destination meant (2xx, or a 4xx other than 429) is returned to the caller to
interpret; when the attempts run out, :class:`DeliveryFailed` is raised and the caller leaves
the rows pending for the next run.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field

import requests

from core.settings.activation import Retry

log = logging.getLogger("tessera.activation")
MAX_SERVER_WAIT_S = 120.0  # a Retry-After / RateLimit-Reset longer than this is treated as this


# Mailchimp's member paths carry the MD5 of the member's email: a pseudonymous key that
# outlives an erasure in logs and messages, so it is never quoted.
_MEMBER_IN_PATH = re.compile(r"(/members/)[^/?#]+")


def describe(method: str, url: str) -> str:
    """'METHOD path' for logs and messages: no query string, no member hash."""
    path = _MEMBER_IN_PATH.sub(r"\1<member>", url.split("?")[0])
    return f"{method} {path}"


class DeliveryFailed(RuntimeError):
    """The destination could not be reached or kept failing; nothing was acknowledged."""


class Unacknowledged(DeliveryFailed):
    """A write went out and no answer came back: the destination may have applied it. Not retried
    blindly (that applied batches twice); the caller asks the destination what it holds."""


class RequestRefused(DeliveryFailed):
    """The destination refused the whole request (a 4xx such as an unknown list id): a fault of the
    configuration, not of the rows, so the rows stay pending instead of being marked rejected."""


@dataclass
class HttpStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    slept_s: float = 0.0


@dataclass
class HttpClient:
    retry: Retry
    headers: dict[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    stats: HttpStats = field(default_factory=HttpStats)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.headers.update(self.headers)
        if self.auth:
            self.session.auth = self.auth
        self._not_before = 0.0  # set from RateLimit-Remaining/Reset

    def close(self) -> None:
        self.session.close()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.slept_s += seconds
            time.sleep(seconds)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.retry.max_delay_s, self.retry.base_delay_s * (2 ** (attempt - 1)))
        return random.uniform(0, cap)  # full jitter

    def _pace_from(self, resp: requests.Response) -> None:
        remaining, reset = resp.headers.get("RateLimit-Remaining"), resp.headers.get("RateLimit-Reset")
        if remaining is not None and reset is not None:
            try:
                if int(remaining) <= 0:
                    self._not_before = time.monotonic() + min(float(reset), MAX_SERVER_WAIT_S)
            except ValueError:
                pass

    def request(self, method: str, url: str, unsafe: bool = False, **kwargs) -> requests.Response:
        """``unsafe``: a non-idempotent write; a timeout or dropped connection after it was sent
        raises :class:`Unacknowledged` instead of re-sending."""
        what = describe(method, url)
        last = ""
        for attempt in range(1, self.retry.max_attempts + 1):
            self._sleep(self._not_before - time.monotonic())
            self.stats.requests += 1
            try:
                resp = self.session.request(method, url, timeout=self.retry.timeout_s, **kwargs)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                last = f"{type(e).__name__}"
                if unsafe and not isinstance(e, requests.ConnectTimeout) and "refused" not in str(e).lower():
                    raise Unacknowledged(f"{what}: no answer ({last}); it may have been applied") from None
                wait = self._backoff(attempt)
            else:
                self._pace_from(resp)
                if resp.status_code == 429:
                    self.stats.throttled += 1
                    last = "429 Too Many Requests"
                    retry_after = resp.headers.get("Retry-After")
                    try:
                        wait = min(float(retry_after), MAX_SERVER_WAIT_S) if retry_after else self._backoff(attempt)
                    except ValueError:
                        wait = self._backoff(attempt)
                elif resp.status_code in (401, 403):
                    # Not the rows' fault: nothing is marked rejected, everything stays pending.
                    raise DeliveryFailed(f"{what}: HTTP {resp.status_code}, the destination refused the credentials; "
                                         "check the API key in the environment variable the config names")
                elif resp.status_code >= 500:
                    last = f"{resp.status_code} {resp.reason}"
                    wait = self._backoff(attempt)
                else:
                    return resp
            if attempt < self.retry.max_attempts:
                self.stats.retries += 1
                log.info("%s: %s, retry %d/%d in %.2fs", what, last, attempt, self.retry.max_attempts - 1, wait)
                self._sleep(wait)
        raise DeliveryFailed(f"{what} failed after {self.retry.max_attempts} attempts (last: {last})")
