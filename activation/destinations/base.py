"""What every destination offers the sync runner.

``deliver(action, changes)`` sends one action's changes in the destination's batches and
yields one list of :class:`Outcome` per acknowledged batch, so the runner can commit state
after each; it raises :class:`~activation.http.DeliveryFailed` for a batch that could not be
delivered (nothing of it acknowledged). ``erase(entries)`` deletes persons for good.

Exactly once: before each request the destination calls ``intend(changes)`` (the runner
records the intent in the sync state). A write whose answer is lost is not blindly re-sent:
``held(action, changes)`` asks the destination what it already holds, and only the rest goes
again. The runner asks the same after a crash, for rows whose intent is still recorded.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

from activation.plan import Change


class MissingSecret(RuntimeError):
    """The environment variable the config names for a secret is not set."""


def secret_from_env(sync: str, key: str, var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise MissingSecret(
            f"syncs[{sync}].destination.{key}: the environment variable {var} is not set; "
            f"export it with the destination's secret before running the sync"
        )
    return value


@dataclass(frozen=True)
class Outcome:
    change: Change
    ok: bool
    reason: str | None = None      # the destination's reason for a rejection
    dest_id: str | None = None     # the destination's own id for the profile, when learned
    contact: str | None = None     # the email / phone the destination addresses consent by


@dataclass(frozen=True)
class ErasureTarget:
    person_id: str
    key: str
    dest_id: str | None
    contact: str | None = None


class Destination(ABC):
    name = "destination"
    intend: Callable[[str, list[Change]], None] = staticmethod(lambda action, changes: None)

    def held(self, action: str, changes: list[Change]) -> list[Outcome]:
        """Outcomes for the changes the destination already holds (a write applied whose answer
        was lost). By default nothing is known to be held, and a re-send must be idempotent."""
        return []

    @abstractmethod
    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        """Send one kind of change in batches, yielding each acknowledged batch's outcomes."""

    @abstractmethod
    def erase(self, targets: list[ErasureTarget]) -> Iterator[list[tuple[ErasureTarget, bool, str | None]]]:
        """Delete persons at the destination, yielding (target, deleted, reason) per batch."""

    @property
    def requests(self) -> int:
        return 0

    def close(self) -> None:  # noqa: B027 (optional hook: most destinations hold nothing to close)
        pass


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
