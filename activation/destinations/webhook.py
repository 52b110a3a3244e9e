"""A webhook: JSON batches, each signed with HMAC-SHA256.

Body: ``{"sync", "batch_id", "events": [{"action", "person_id", "key", "fields"}]}`` where
action is upsert | remove | retire | erase. Headers: ``X-Tessera-Timestamp`` and
``X-Tessera-Signature: sha256=<hex HMAC of "<timestamp>.<body>">``. A 2xx acknowledges the
batch; the receiver may list refused rows as ``{"rejected": [{"person_id", "reason"}]}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import HttpClient
from activation.plan import Change
from core.settings.activation import Retry
from core.settings.activation import Webhook as WebhookConfig

SIGNATURE_HEADER = "X-Tessera-Signature"
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

    def _post(self, events: list[dict]) -> tuple[bool, str | None, dict[str, str]]:
        body = json.dumps({"sync": self.sync,
                           "batch_id": hashlib.sha256(json.dumps(events, sort_keys=True).encode()).hexdigest()[:16],
                           "events": events}, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        resp = self.http.request("POST", self.cfg.url, data=body,
                                 headers={TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(self.secret, ts, body)})
        if resp.status_code >= 400:
            return False, f"HTTP {resp.status_code}", {}
        rejected = {}
        try:
            for r in (resp.json() or {}).get("rejected") or []:
                rejected[str(r.get("person_id"))] = str(r.get("reason") or "rejected")
        except ValueError:
            pass
        return True, None, rejected

    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        for batch in chunks(changes, self.cfg.batch_size):
            events = [{"action": "upsert" if action == "add_membership" else action,
                       "person_id": c.person_id, "key": c.key, "fields": c.fields} for c in batch]
            ok, reason, rejected = self._post(events)
            yield [Outcome(c, ok and c.person_id not in rejected, reason or rejected.get(c.person_id)) for c in batch]

    def erase(self, targets: list[ErasureTarget]):
        for batch in chunks(targets, self.cfg.batch_size):
            ok, reason, rejected = self._post(
                [{"action": "erase", "person_id": t.person_id, "key": t.key, "fields": {}} for t in batch])
            yield [(t, ok and t.person_id not in rejected, reason or rejected.get(t.person_id)) for t in batch]
