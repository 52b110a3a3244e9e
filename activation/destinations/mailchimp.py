"""Mailchimp Marketing API 3.0 (HTTP Basic auth with the API key).

- upserts: ``POST /3.0/lists/{id}`` with ``members`` (≤500 per call) and ``update_existing``;
  the response's ``errors`` become per-row rejections with Mailchimp's reason
- removal: archive, ``DELETE /3.0/lists/{id}/members/{subscriber_hash}``
- erasure: ``POST /3.0/lists/{id}/members/{subscriber_hash}/actions/delete-permanent``

The subscriber hash is the MD5 of the lower-cased email.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import HttpClient
from activation.plan import Change
from core.settings.activation import Mailchimp as MailchimpConfig
from core.settings.activation import Retry

COMMIT_EVERY = 100  # single-member calls are acknowledged to the state in groups of this size


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


def _reason(resp) -> str:
    try:
        body = resp.json()
        return f"HTTP {resp.status_code}: {body.get('title', '')} {body.get('detail', '')}".strip()
    except ValueError:
        return f"HTTP {resp.status_code}"


class MailchimpDestination(Destination):
    name = "mailchimp"

    def __init__(self, sync: str, cfg: MailchimpConfig, retry: Retry):
        key = secret_from_env(sync, "api_key_env", cfg.api_key_env)
        self.cfg = cfg
        self.lists = f"{cfg.base_url.rstrip('/')}/3.0/lists/{cfg.list_id}"
        self.http = HttpClient(retry, auth=("tessera", key), headers={"content-type": "application/json"})

    @property
    def requests(self) -> int:
        return self.http.stats.requests

    def close(self) -> None:
        self.http.close()

    def _member(self, c: Change) -> dict:
        merge = {k: v for k, v in c.fields.items() if v is not None}
        m = {"email_address": c.key, "status_if_new": self.cfg.status_if_new}
        if not c.was_in_audience and c.reason != "new":
            m["status"] = self.cfg.status_if_new  # back from archive / rejoined
        if merge:
            m["merge_fields"] = merge
        return m

    def _upsert(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        for batch in chunks(changes, self.cfg.batch_size):
            body = {"members": [self._member(c) for c in batch], "update_existing": True}
            resp = self.http.request("POST", self.lists, json=body)
            if resp.status_code >= 400:
                reason = _reason(resp)
                yield [Outcome(c, False, reason) for c in batch]
                continue
            errors = {}
            for e in resp.json().get("errors") or []:
                email = str(e.get("email_address", "")).lower()
                errors[email] = f"{e.get('error_code') or 'ERROR'}: {e.get('error') or ''}".strip()
            yield [Outcome(c, c.key not in errors, errors.get(c.key), subscriber_hash(c.key)) for c in batch]

    def _per_member(self, items: list, method: str, suffix: str, key_of) -> Iterator[list]:
        for part in chunks(items, COMMIT_EVERY):
            results = []
            for item in part:
                resp = self.http.request(method, f"{self.lists}/members/{subscriber_hash(key_of(item))}{suffix}")
                ok = resp.status_code < 400 or resp.status_code == 404  # 404: not there, nothing to do
                results.append((item, ok, None if ok else _reason(resp)))
            yield results

    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        if action in ("upsert", "add_membership"):
            yield from self._upsert(changes)
        elif action in ("remove", "retire"):
            # Archive: the contact leaves the audience and stops counting; reversible, unlike deletion.
            for results in self._per_member(changes, "DELETE", "", lambda c: c.key):
                yield [Outcome(c, ok, reason, subscriber_hash(c.key)) for c, ok, reason in results]
        else:
            raise ValueError(f"unknown action {action}")

    def erase(self, targets: list[ErasureTarget]):
        yield from self._per_member(targets, "POST", "/actions/delete-permanent", lambda t: t.key)
