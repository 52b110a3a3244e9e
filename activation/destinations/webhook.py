"""A webhook: JSON batches, each signed with HMAC-SHA256.

Body: ``{"sync", "batch_id", "events": [{"event_id", "action", "person_id", "key", "fields"}]}``
where action is upsert | remove | retire | merge | erase. Headers: ``X-Tessera-Timestamp``,
``X-Tessera-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`` and ``Idempotency-Key``
(the batch id). A 2xx acknowledges the batch; the receiver may list refused rows as
``{"rejected": [{"person_id", "reason"}]}``.

Exactly once is the receiver's half: ``event_id`` is stable per row and change (the same row
re-sent after a lost answer or a crash carries the same id, and the same batch the same
``Idempotency-Key``), so a receiver that remembers ids applies each once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import HttpClient, RequestRefused
from activation.plan import Change
from core.settings.activation import Retry
from core.settings.activation import Webhook as WebhookConfig

SIGNATURE_HEADER = "X-Tessera-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
TIMESTAMP_HEADER = "X-Tessera-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookDestination(Destination):
    name = "webhook"

    def __init__(self, sync: str, cfg: WebhookConfig, retry: Retry):
        self.sync = sync
        self.cfg = cfg
        self.secret = secret_from_env(sync, "secret_env", cfg.secret_env)
        self.http = HttpClient(retry, headers={"content-type": "application/json"})

    @property
    def requests(self) -> int:
        return self.http.stats.requests

    def close(self) -> None:
        self.http.close()

    def event_id(self, action: str, person_id: str, key: str, field_hash: str | None) -> str:
        return hashlib.sha256(f"{self.sync}|{action}|{person_id}|{key}|{field_hash or ''}".encode()).hexdigest()[:32]

    def _post(self, events: list[dict]) -> tuple[bool, str | None, dict[str, str]]:
        batch_id = hashlib.sha256("|".join(e["event_id"] for e in events).encode()).hexdigest()[:32]
        body = json.dumps({"sync": self.sync, "batch_id": batch_id, "events": events},
                          separators=(",", ":")).encode()
        ts = str(int(time.time()))
        # Retried as is after a lost answer: the receiver dedups by Idempotency-Key / event_id.
        resp = self.http.request("POST", self.cfg.url, data=body,
                                 headers={TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(self.secret, ts, body),
                                          IDEMPOTENCY_HEADER: batch_id})
        if resp.status_code >= 400:
            raise RequestRefused(f"POST webhook: HTTP {resp.status_code}; the whole batch was refused, "
                                 "the rows stay pending")
        rejected = {}
        try:
            for r in (resp.json() or {}).get("rejected") or []:
                rejected[str(r.get("person_id"))] = str(r.get("reason") or "rejected")
        except ValueError:
            pass
        return True, None, rejected

    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        for batch in chunks(changes, self.cfg.batch_size):
            kind = "upsert" if action == "add_membership" else action
            events = [{"event_id": self.event_id(kind, c.person_id, c.key, c.field_hash), "action": kind,
                       "person_id": c.person_id, "key": c.key, "fields": c.fields} for c in batch]
            self.intend(action, batch)
            ok, reason, rejected = self._post(events)
            yield [Outcome(c, ok and c.person_id not in rejected, reason or rejected.get(c.person_id)) for c in batch]

    def erase(self, targets: list[ErasureTarget]):
        for batch in chunks(targets, self.cfg.batch_size):
            ok, reason, rejected = self._post(
                [{"event_id": self.event_id("erase", t.person_id, t.key, None), "action": "erase",
                  "person_id": t.person_id, "key": t.key, "fields": {}} for t in batch])
            yield [(t, ok and t.person_id not in rejected, reason or rejected.get(t.person_id)) for t in batch]
