"""Klaviyo (JSON:API, ``revision`` header, ``Authorization: Klaviyo-API-Key …``).

- upserts: bulk import jobs, ``POST /api/profile-bulk-import-jobs/`` (≤10,000 profiles and
  ≤5 MB per request), adding to the sync's list in the same job; the job is polled to the end
  and its ``import-errors`` become per-row rejections with Klaviyo's reason
- list membership: ``/api/lists/{id}/relationships/profiles/`` POST / DELETE (≤1,000 ids per
  call); profile ids are looked up by identifier (``GET /api/profiles/?filter=any(...)``) when
  the state does not know them yet
- retire a duplicate and erase: ``POST /api/data-privacy-deletion-jobs/``
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import DeliveryFailed, HttpClient
from activation.plan import Change
from core.settings.activation import Klaviyo as KlaviyoConfig
from core.settings.activation import Retry

log = logging.getLogger("tessera.activation")
STANDARD_ATTRIBUTES = {"email", "phone_number", "external_id", "first_name", "last_name", "organization",
                       "title", "image", "locale"}
ID_ATTRIBUTE = {"email": "email", "phone": "phone_number", "person_id": "external_id"}
JSONAPI = "application/vnd.api+json"
LIST_CALL_MAX = 1000
LOOKUP_PAGE = 100


def _reason(resp) -> str:
    try:
        errs = resp.json().get("errors") or []
        if errs:
            e = errs[0]
            return f"HTTP {resp.status_code}: {e.get('title') or ''} {e.get('detail') or ''}".strip()
    except ValueError:
        pass
    return f"HTTP {resp.status_code}"


class KlaviyoDestination(Destination):
    name = "klaviyo"

    def __init__(self, sync: str, cfg: KlaviyoConfig, retry: Retry, identifier: str):
        key = secret_from_env(sync, "api_key_env", cfg.api_key_env)
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        self.id_attr = ID_ATTRIBUTE[identifier]
        self.http = HttpClient(retry, headers={
            "Authorization": f"Klaviyo-API-Key {key}", "revision": cfg.revision,
            "accept": JSONAPI, "content-type": JSONAPI,
        })

    @property
    def requests(self) -> int:
        return self.http.stats.requests

    def close(self) -> None:
        self.http.close()

    # ---------------------------------------------------------------- payloads
    def _profile(self, c: Change) -> dict:
        attrs: dict = {self.id_attr: c.key}
        props: dict = {}
        for k, v in c.fields.items():
            if v is None or k == self.id_attr:
                continue  # bulk import cannot clear a field; leave it as it is
            (attrs if k in STANDARD_ATTRIBUTES else props)[k] = v
        if props:
            attrs["properties"] = props
        return {"type": "profile", "attributes": attrs}

    def _job_body(self, profiles: list[dict]) -> bytes:
        data: dict = {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}
        if self.cfg.list_id:
            data["relationships"] = {"lists": {"data": [{"type": "list", "id": self.cfg.list_id}]}}
        return json.dumps({"data": data}, separators=(",", ":")).encode()

    def _batches(self, changes: list[Change]) -> Iterator[tuple[list[Change], bytes]]:
        """≤ batch_size profiles and ≤ max_request_bytes per request (a batch over the byte
        limit is halved until it fits)."""
        pending = [changes[i:i + self.cfg.batch_size] for i in range(0, len(changes), self.cfg.batch_size)]
        while pending:
            batch = pending.pop(0)
            body = self._job_body([self._profile(c) for c in batch])
            if len(body) > self.cfg.max_request_bytes and len(batch) > 1:
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            yield batch, body

    # ---------------------------------------------------------------- upserts
    def _wait_for_job(self, job_id: str) -> dict:
        deadline = time.monotonic() + self.cfg.job_timeout_s
        while True:
            resp = self.http.request("GET", f"{self.base}/api/profile-bulk-import-jobs/{job_id}/")
            if resp.status_code >= 400:
                raise DeliveryFailed(f"GET import job {job_id}: {_reason(resp)}")
            attrs = resp.json()["data"]["attributes"]
            if attrs.get("status") in ("complete", "cancelled") or time.monotonic() > deadline:
                return attrs
            time.sleep(self.cfg.job_poll_interval_s)

    def _import_errors(self, job_id: str) -> list[dict]:
        url = f"{self.base}/api/profile-bulk-import-jobs/{job_id}/import-errors/"
        errors = []
        while url:
            resp = self.http.request("GET", url)
            if resp.status_code >= 400:
                raise DeliveryFailed(f"GET import errors of job {job_id}: {_reason(resp)}")
            body = resp.json()
            errors.extend(body.get("data") or [])
            url = (body.get("links") or {}).get("next")
        return errors

    def _upsert(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        for batch, body in self._batches(changes):
            resp = self.http.request("POST", f"{self.base}/api/profile-bulk-import-jobs/", data=body)
            if resp.status_code >= 400:  # the destination refused the whole request
                reason = _reason(resp)
                yield [Outcome(c, False, reason) for c in batch]
                continue
            job_id = resp.json()["data"]["id"]
            # The 202 is the acknowledgement: from here the batch is never sent again. Waiting
            # for the job only turns Klaviyo's per-profile import errors into rejections.
            try:
                attrs = self._wait_for_job(job_id)
                errors = self._import_errors(job_id) if attrs.get("failed_count") else []
            except DeliveryFailed as e:
                log.warning("import job %s accepted, but its outcome could not be read (%s); counted as sent",
                            job_id, e)
                errors = []
            rejected: dict[int, str] = {}
            if errors:
                index_of_key = {c.key: i for i, c in enumerate(batch)}
                for e in errors:
                    a = e.get("attributes") or {}
                    pointer = ((a.get("source") or {}).get("pointer") or "")
                    idx = None
                    if pointer.rsplit("/", 1)[-1].isdigit():
                        idx = int(pointer.rsplit("/", 1)[-1])
                    else:
                        payload = (a.get("original_payload") or {})
                        idx = index_of_key.get(str(payload.get(self.id_attr, "")).lower())
                    if idx is not None and 0 <= idx < len(batch):
                        rejected[idx] = f"{a.get('title') or a.get('code') or 'rejected'}: {a.get('detail') or ''}".strip()
            yield [Outcome(c, i not in rejected, rejected.get(i), c.dest_id) for i, c in enumerate(batch)]

    # ---------------------------------------------------------------- list membership
    def _lookup_ids(self, changes: list[Change]) -> dict[str, str]:
        """key -> Klaviyo profile id for changes whose id the state does not hold."""
        found = {c.key: c.dest_id for c in changes if c.dest_id}
        missing = [c.key for c in changes if not c.dest_id]
        for part in chunks(missing, LOOKUP_PAGE):
            flt = "any(%s,%s)" % (self.id_attr, json.dumps(part))
            url = f"{self.base}/api/profiles/"
            params = {"filter": flt, "page[size]": str(LOOKUP_PAGE), "fields[profile]": self.id_attr}
            while url:
                resp = self.http.request("GET", url, params=params)
                if resp.status_code >= 400:
                    raise DeliveryFailed(f"GET profiles (id lookup): {_reason(resp)}")
                body = resp.json()
                for p in body.get("data") or []:
                    v = (p.get("attributes") or {}).get(self.id_attr)
                    if v is not None:
                        found[str(v).lower() if self.id_attr == "email" else str(v)] = p["id"]
                url, params = (body.get("links") or {}).get("next"), None
        return found

    def _membership(self, method: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        if not self.cfg.list_id:
            yield [Outcome(c, True) for c in changes]  # no list: nothing to add to or remove from
            return
        for part in chunks(changes, LIST_CALL_MAX):
            ids = self._lookup_ids(part)
            present = [c for c in part if c.key in ids]
            if present:
                body = {"data": [{"type": "profile", "id": ids[c.key]} for c in present]}
                resp = self.http.request(method, f"{self.base}/api/lists/{self.cfg.list_id}/relationships/profiles/",
                                         json=body)
                if resp.status_code >= 400:
                    reason = _reason(resp)
                    yield [Outcome(c, False, reason) for c in part]
                    continue
            # a profile Klaviyo does not have is not in the list: removing it is done
            yield [Outcome(c, True, None, ids.get(c.key)) for c in part]

    # ---------------------------------------------------------------- deletion
    def _delete_profiles(self, items: list, key_of) -> Iterator[list]:
        for part in chunks(items, 50):
            results = []
            for item in part:
                body = {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": {
                    "type": "profile", "attributes": {self.id_attr: key_of(item)}}}}}}
                resp = self.http.request("POST", f"{self.base}/api/data-privacy-deletion-jobs/", json=body)
                results.append((item, resp.status_code < 400 or resp.status_code == 404,
                                None if resp.status_code < 400 else _reason(resp)))
            yield results

    # ---------------------------------------------------------------- the interface
    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        if action == "upsert":
            yield from self._upsert(changes)
        elif action == "add_membership":
            with_id = [c for c in changes if c.dest_id]
            yield from self._membership("POST", with_id)
            yield from self._upsert([c for c in changes if not c.dest_id])
        elif action == "remove":
            yield from self._membership("DELETE", changes)
        elif action == "retire":
            for results in self._delete_profiles(changes, lambda c: c.key):
                yield [Outcome(c, ok, reason) for c, ok, reason in results]
        else:
            raise ValueError(f"unknown action {action}")

    def erase(self, targets: list[ErasureTarget]):
        yield from self._delete_profiles(targets, lambda t: t.key)
