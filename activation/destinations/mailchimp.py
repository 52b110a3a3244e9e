"""Mailchimp Marketing API 3.0 (HTTP Basic auth with the API key), as its OpenAPI definition
describes it (tests/fixtures/vendor_specs/mailchimp.json):

- merge fields: before the first upsert of a run, ``GET /3.0/lists/{id}/merge-fields`` and
  ``POST`` the mapped tags the audience lacks (Mailchimp silently drops values for unknown tags)
- upserts: ``POST /3.0/lists/{id}`` with ``members`` (≤500 per call, each with ``status`` and
  ``status_if_new``) and ``update_existing``; the response's ``errors`` become per-row
  rejections. A batch whose answer is lost is reconciled by reading the members back.
- consent withdrawn: the same batch call with ``status: unsubscribed`` (Mailchimp keeps the
  opt-out; an archived member can be re-added by anyone and keeps none)
- leaving the audience otherwise, or a duplicate address: archive,
  ``DELETE /3.0/lists/{id}/members/{subscriber_hash}``
- erasure: ``POST /3.0/lists/{id}/members/{subscriber_hash}/actions/delete-permanent``

The subscriber hash is the MD5 of the lower-cased email.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import DeliveryFailed, HttpClient, RequestRefused, Unacknowledged
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

    def __init__(self, sync: str, cfg: MailchimpConfig, retry: Retry, field_names: list[str] | None = None):
        key = secret_from_env(sync, "api_key_env", cfg.api_key_env)
        self.cfg = cfg
        self.lists = f"{cfg.base_url.rstrip('/')}/3.0/lists/{cfg.list_id}"
        self.field_names = list(field_names or [])
        self._fields_checked = False
        self.http = HttpClient(retry, auth=("tessera", key), headers={"content-type": "application/json"})

    @property
    def requests(self) -> int:
        return self.http.stats.requests

    def close(self) -> None:
        self.http.close()

    # ---------------------------------------------------------------- merge fields
    def _ensure_merge_fields(self) -> None:
        if self._fields_checked or not self.field_names:
            return
        resp = self.http.request("GET", f"{self.lists}/merge-fields", params={"count": "1000"})
        if resp.status_code >= 400:
            raise RequestRefused(f"GET merge-fields: {_reason(resp)}; the rows stay pending")
        have = {f.get("tag") for f in resp.json().get("merge_fields") or []}
        for tag in self.field_names:
            if tag not in have:
                made = self.http.request("POST", f"{self.lists}/merge-fields",
                                         json={"tag": tag, "name": tag, "type": "text"})
                if made.status_code >= 400:
                    raise RequestRefused(f"POST merge-fields ({tag}): {_reason(made)}; the rows stay pending")
        self._fields_checked = True

    # ---------------------------------------------------------------- members
    def _member(self, c: Change, action: str) -> dict:
        if action == "remove":  # consent withdrawn: an opt-out Mailchimp keeps
            return {"email_address": c.key, "status": "unsubscribed", "status_if_new": "unsubscribed"}
        m = {"email_address": c.key, "status_if_new": self.cfg.status_if_new}
        if self.cfg.status_if_new != "pending" or not c.was_in_audience:
            # "pending" on a member already subscribed would send them a new confirmation email
            m["status"] = self.cfg.status_if_new
        merge = {k: v for k, v in c.fields.items() if v is not None}
        if merge:
            m["merge_fields"] = merge
        return m

    def _post_batch(self, action: str, batch: list[Change]) -> list[Outcome]:
        self.intend(action, batch)
        body = {"members": [self._member(c, action) for c in batch], "update_existing": True}
        try:
            resp = self.http.request("POST", self.lists, json=body, unsafe=True)
        except Unacknowledged:
            held = {o.change.person_id: o for o in self.held(action, batch)}
            rest = [c for c in batch if c.person_id not in held]
            return list(held.values()) + (self._post_batch(action, rest) if rest else [])
        if resp.status_code >= 400:
            raise RequestRefused(f"POST lists/{{id}} (batch): {_reason(resp)}; the whole request was refused, "
                                 "the rows stay pending")
        errors = {}
        for e in resp.json().get("errors") or []:
            email = str(e.get("email_address", "")).lower()
            errors[email] = f"{e.get('error_code') or 'ERROR'}: {e.get('error') or ''}".strip()
        return [Outcome(c, c.key not in errors, errors.get(c.key), subscriber_hash(c.key), c.key) for c in batch]

    def held(self, action: str, changes: list[Change]) -> list[Outcome]:
        """The members Mailchimp already holds as this batch would leave them."""
        if action not in ("upsert", "add_membership", "remove"):
            return []
        out = []
        for c in changes:
            resp = self.http.request("GET", f"{self.lists}/members/{subscriber_hash(c.key)}")
            if resp.status_code == 404:
                continue
            if resp.status_code >= 400:
                raise DeliveryFailed(f"GET member (reconcile): {_reason(resp)}")
            have, want = resp.json(), self._member(c, action)
            if want.get("status", have.get("status")) == have.get("status") and all(
                    (have.get("merge_fields") or {}).get(k) == v for k, v in (want.get("merge_fields") or {}).items()):
                out.append(Outcome(c, True, None, subscriber_hash(c.key), c.key))
        return out

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
            self._ensure_merge_fields()
            for batch in chunks(changes, self.cfg.batch_size):
                yield self._post_batch(action, batch)
        elif action == "remove":
            withdrawn = [c for c in changes if c.reason == "no_consent"]
            for batch in chunks(withdrawn, self.cfg.batch_size):
                yield self._post_batch("remove", batch)
            yield from self._archive([c for c in changes if c.reason != "no_consent"])
        elif action in ("retire", "merge"):
            # Mailchimp has no merge: the duplicate address leaves the audience (archived, reversible)
            yield from self._archive(changes)
        else:
            raise ValueError(f"unknown action {action}")

    def _archive(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        for results in self._per_member(changes, "DELETE", "", lambda c: c.key):
            yield [Outcome(c, ok, reason, subscriber_hash(c.key), c.key) for c, ok, reason in results]

    def erase(self, targets: list[ErasureTarget]):
        yield from self._per_member(targets, "POST", "/actions/delete-permanent", lambda t: t.key)
