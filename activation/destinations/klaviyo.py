"""Klaviyo (JSON:API, ``revision`` header, ``Authorization: Klaviyo-API-Key …``), as its OpenAPI
definition describes it (tests/fixtures/vendor_specs/klaviyo.json):

- upserts: bulk import jobs, ``POST /api/profile-bulk-import-jobs`` (≤10,000 profiles and
  ≤5 MB per request), adding to the sync's list in the same job; the job is polled to the end
  and its ``import-errors`` become per-row rejections with Klaviyo's reason. Standard attributes
  first, address fields in ``location``, phone in E.164, the rest in ``properties``. Import jobs
  are idempotent by identifier; a job whose answer is lost is reconciled by reading the profiles
  back (``GET /api/profiles``) before anything is re-sent.
- consent: a marketing sync subscribes new / returning persons with
  ``POST /api/profile-subscription-bulk-create-jobs`` and unsubscribes persons who withdrew
  consent with ``POST /api/profile-subscription-bulk-delete-jobs`` (Klaviyo: removing a profile
  from a list does not change its consent, so other lists and flows would still mail them)
- leaving the audience (mirror): ``/api/lists/{id}/relationships/profiles/`` DELETE
- a duplicate profile (persons merged, or an email change): ``POST /api/profile-merge`` into the
  surviving profile, which keeps the history
- erasure: ``POST /api/data-privacy-deletion-jobs`` by Klaviyo id, email or phone (the only
  identifiers it accepts; the state holds the email / phone of a person_id-keyed sync)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

from activation.destinations.base import Destination, ErasureTarget, Outcome, chunks, secret_from_env
from activation.http import DeliveryFailed, HttpClient, RequestRefused, Unacknowledged
from activation.plan import Change
from core.normalise import phone_e164
from core.settings.activation import Klaviyo as KlaviyoConfig
from core.settings.activation import Retry

log = logging.getLogger("tessera.activation")
# In the order of Klaviyo's profile attributes; custom properties come after them.
STANDARD_ATTRIBUTES = ("email", "phone_number", "external_id", "first_name", "last_name", "organization",
                       "locale", "title", "image")
LOCATION_ATTRIBUTES = ("address1", "address2", "city", "country", "region", "zip", "timezone", "latitude",
                       "longitude", "ip")
ID_ATTRIBUTE = {"email": "email", "phone": "phone_number", "person_id": "external_id"}
CHANNEL = {"email_marketing": ("email", "email"), "sms_marketing": ("sms", "phone_number")}
JSONAPI = "application/vnd.api+json"
LIST_CALL_MAX = 1000
SUBSCRIPTION_JOB_MAX = 1000
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


def _refused(what: str, resp) -> RequestRefused:
    return RequestRefused(f"{what}: {_reason(resp)}; the whole request was refused, the rows stay pending")


class KlaviyoDestination(Destination):
    name = "klaviyo"

    def __init__(self, sync: str, cfg: KlaviyoConfig, retry: Retry, identifier: str,
                 consent_channel: str | None = None):
        key = secret_from_env(sync, "api_key_env", cfg.api_key_env)
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        self.id_attr = ID_ATTRIBUTE[identifier]
        self.channel = CHANNEL.get(consent_channel or "")
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
    def _attributes(self, c: Change) -> dict:
        """Standard attributes first, then location, then custom properties; phone in E.164."""
        given = {k: v for k, v in c.fields.items() if v is not None}  # bulk import cannot clear a field
        given[self.id_attr] = c.key
        if "phone_number" in given:
            given["phone_number"] = phone_e164(str(given["phone_number"]))
            if given["phone_number"] is None:
                given.pop("phone_number")  # not a phone number: Klaviyo would refuse the whole profile
        attrs = {k: given[k] for k in STANDARD_ATTRIBUTES if k in given}
        location = {k: given[k] for k in LOCATION_ATTRIBUTES if k in given}
        if location:
            attrs["location"] = location
        props = {k: v for k, v in given.items() if k not in attrs and k not in location}
        if props:
            attrs["properties"] = props
        return attrs

    def contact_of(self, c: Change) -> str | None:
        """The email or phone consent is recorded under (what unsubscribe and erasure address)."""
        if self.id_attr in ("email", "phone_number") and (self.channel is None or self.channel[1] == self.id_attr):
            return c.key
        attrs = self._attributes(c)
        return attrs.get(self.channel[1] if self.channel else "email") or attrs.get("email") or attrs.get("phone_number")

    def _profile(self, c: Change) -> dict:
        return {"type": "profile", "attributes": self._attributes(c)}

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

    def _rejections(self, batch: list[Change], job_id: str) -> dict[int, str]:
        try:
            attrs = self._wait_for_job(job_id)
            errors = self._import_errors(job_id) if attrs.get("failed_count") else []
        except DeliveryFailed as e:
            # The 202 is the acknowledgement; waiting only turns import errors into rejections.
            log.warning("import job %s accepted, but its outcome could not be read (%s); counted as sent", job_id, e)
            return {}
        rejected: dict[int, str] = {}
        index_of_key = {c.key: i for i, c in enumerate(batch)}
        for e in errors:
            a = e.get("attributes") or {}
            pointer = ((a.get("source") or {}).get("pointer") or "")
            if pointer.rsplit("/", 1)[-1].isdigit():
                idx = int(pointer.rsplit("/", 1)[-1])
            else:
                idx = index_of_key.get(str((a.get("original_payload") or {}).get(self.id_attr, "")).lower())
            if idx is not None and 0 <= idx < len(batch):
                rejected[idx] = f"{a.get('title') or a.get('code') or 'rejected'}: {a.get('detail') or ''}".strip()
        return rejected

    def _import(self, batch: list[Change], body: bytes) -> list[Outcome]:
        self.intend("upsert", batch)
        try:
            resp = self.http.request("POST", f"{self.base}/api/profile-bulk-import-jobs/", data=body, unsafe=True)
        except Unacknowledged:
            # The job may have run: keep what Klaviyo holds, send only the rest (once more).
            held = {o.change.person_id: o for o in self.held("upsert", batch)}
            rest = [c for c in batch if c.person_id not in held]
            again = self._import(rest, self._job_body([self._profile(c) for c in rest])) if rest else []
            return list(held.values()) + again
        if resp.status_code >= 400:
            raise _refused("POST profile-bulk-import-jobs", resp)
        rejected = self._rejections(batch, resp.json()["data"]["id"])
        return [Outcome(c, i not in rejected, rejected.get(i), c.dest_id, self.contact_of(c))
                for i, c in enumerate(batch)]

    def _upsert(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        for batch, body in self._batches(changes):
            outcomes = self._import(batch, body)
            joining = [o.change for o in outcomes if o.ok and not o.change.was_in_audience]
            if joining and self.channel:
                self._subscription_jobs("create", joining)
            yield outcomes

    def _lookup(self, attr: str, values: list[str], full: bool = False) -> dict[str, dict]:
        """value -> profile resource, for the profiles Klaviyo holds under these values."""
        found: dict[str, dict] = {}
        for part in chunks(sorted(set(values)), LOOKUP_PAGE):
            url = f"{self.base}/api/profiles/"
            params = {"filter": "any(%s,%s)" % (attr, json.dumps(part)), "page[size]": str(LOOKUP_PAGE)}
            if not full:
                params["fields[profile]"] = attr
            while url:
                resp = self.http.request("GET", url, params=params)
                if resp.status_code >= 400:
                    raise DeliveryFailed(f"GET profiles (lookup): {_reason(resp)}")
                body = resp.json()
                for p in body.get("data") or []:
                    v = (p.get("attributes") or {}).get(attr)
                    if v is not None:
                        found[str(v).lower() if attr == "email" else str(v)] = p
                url, params = (body.get("links") or {}).get("next"), None
        return found

    def held(self, action: str, changes: list[Change]) -> list[Outcome]:
        """The upserts whose every sent attribute Klaviyo already holds (an import applied whose
        answer was lost). Other actions are idempotent and are simply sent again."""
        if action != "upsert" or not changes:
            return []
        profiles = self._lookup(self.id_attr, [c.key for c in changes], full=True)
        out = []
        for c in changes:
            have = (profiles.get(c.key) or {}).get("attributes")
            if have is None:
                continue
            want = self._attributes(c)
            same = all((have.get(k) or {}).get(kk) == vv for k, v in want.items() if isinstance(v, dict)
                       for kk, vv in v.items()) and \
                all(have.get(k) == v for k, v in want.items() if not isinstance(v, dict))
            if same:
                out.append(Outcome(c, True, None, profiles[c.key].get("id"), self.contact_of(c)))
        return out

    # ---------------------------------------------------------------- consent and lists
    def _subscription_jobs(self, kind: str, changes: list[Change]) -> None:
        """Subscribe (create) or unsubscribe (delete) on the sync's consent channel; the list, when
        configured, is joined or left in the same job."""
        channel, attr = self.channel
        consent = {"create": "SUBSCRIBED", "delete": "UNSUBSCRIBED"}[kind]
        for part in chunks(changes, SUBSCRIPTION_JOB_MAX):
            profiles = []
            for c in part:
                contact = c.contact if kind == "delete" else self.contact_of(c)
                if c.key and self.id_attr == attr:
                    contact = c.key
                if contact:
                    profiles.append({"type": "profile", "attributes": {
                        attr: contact, "subscriptions": {channel: {"marketing": {"consent": consent}}}}})
            if not profiles:
                continue
            data: dict = {"type": f"profile-subscription-bulk-{kind}-job",
                          "attributes": {"profiles": {"data": profiles}}}
            if self.cfg.list_id:
                data["relationships"] = {"list": {"data": {"type": "list", "id": self.cfg.list_id}}}
            resp = self.http.request("POST", f"{self.base}/api/profile-subscription-bulk-{kind}-jobs/",
                                     json={"data": data})
            if resp.status_code >= 400:
                raise _refused(f"POST profile-subscription-bulk-{kind}-jobs", resp)

    def _membership(self, method: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        if not self.cfg.list_id:
            yield [Outcome(c, True, None, None, c.contact) for c in changes]  # no list: nothing to leave
            return
        for part in chunks(changes, LIST_CALL_MAX):
            ids = {k: p["id"] for k, p in self._lookup(self.id_attr, [c.key for c in part if not c.dest_id]).items()}
            ids.update({c.key: c.dest_id for c in part if c.dest_id})
            present = [c for c in part if c.key in ids]
            if present:
                body = {"data": [{"type": "profile", "id": ids[c.key]} for c in present]}
                resp = self.http.request(method, f"{self.base}/api/lists/{self.cfg.list_id}/relationships/profiles/",
                                         json=body)
                if resp.status_code >= 400:
                    raise _refused(f"{method} list relationships", resp)
            # a profile Klaviyo does not have is not in the list: removing it is done
            yield [Outcome(c, True, None, ids.get(c.key), c.contact) for c in part]

    def _remove(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        withdrawn = [c for c in changes if c.reason == "no_consent"]
        if withdrawn and self.channel:
            for part in chunks(withdrawn, SUBSCRIPTION_JOB_MAX):
                self._subscription_jobs("delete", part)  # unsubscribes and leaves the list
                yield [Outcome(c, True, None, c.dest_id, c.contact) for c in part]
            changes = [c for c in changes if c.reason != "no_consent"]
        if changes:
            yield from self._membership("DELETE", changes)

    # ---------------------------------------------------------------- merges and deletion
    def _merge(self, changes: list[Change]) -> Iterator[list[Outcome]]:
        for part in chunks(changes, LOOKUP_PAGE):
            ids = {k: p["id"] for k, p in self._lookup(self.id_attr, [c.key for c in part] +
                                                         [c.into_key for c in part if c.into_key]).items()}
            results = []
            for c in part:
                source, into = c.dest_id or ids.get(c.key), ids.get(c.into_key or "")
                if source is None or into is None or source == into:
                    # the old profile is gone already, or there is no survivor to keep its history
                    results.append(Outcome(c, True))
                    continue
                body = {"data": {"type": "profile-merge", "id": into, "relationships": {
                    "profiles": {"data": [{"type": "profile", "id": source}]}}}}
                resp = self.http.request("POST", f"{self.base}/api/profile-merge/", json=body)
                if resp.status_code >= 400 and resp.status_code != 404:
                    raise _refused("POST profile-merge", resp)
                results.append(Outcome(c, True))
            yield results

    def _deletion_identifier(self, key: str, dest_id: str | None, contact: str | None) -> dict | None:
        """What the deletion endpoint accepts: the Klaviyo id, else the email or phone number."""
        if dest_id:
            return {"id": dest_id}
        if self.id_attr in ("email", "phone_number"):
            return {"attributes": {self.id_attr: key}}
        if contact:
            return {"attributes": {"phone_number" if contact.startswith("+") else "email": contact}}
        found = self._lookup(self.id_attr, [key])  # an external id only: find the profile's id
        return {"id": found[key]["id"]} if key in found else None

    def _delete_profiles(self, items: list, of) -> Iterator[list]:
        for part in chunks(items, 50):
            results = []
            for item in part:
                ident = self._deletion_identifier(*of(item))
                if ident is None:
                    results.append((item, True, None))  # Klaviyo holds no such profile
                    continue
                body = {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": {
                    "type": "profile", **ident}}}}}
                if "attributes" not in body["data"]["attributes"]["profile"]["data"]:
                    body["data"]["attributes"]["profile"]["data"]["attributes"] = {}
                resp = self.http.request("POST", f"{self.base}/api/data-privacy-deletion-jobs/", json=body)
                ok = resp.status_code < 400 or resp.status_code == 404
                results.append((item, ok, None if ok else _reason(resp)))
            yield results

    # ---------------------------------------------------------------- the interface
    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        if action == "upsert":
            yield from self._upsert(changes)
        elif action == "add_membership":
            with_contact = [c for c in changes if c.dest_id or c.contact or self.id_attr != "external_id"]
            if self.channel:
                for part in chunks(with_contact, SUBSCRIPTION_JOB_MAX):
                    self._subscription_jobs("create", part)
                    yield [Outcome(c, True, None, c.dest_id, c.contact) for c in part]
            else:
                yield from self._membership("POST", with_contact)
            yield from self._upsert([c for c in changes if c not in with_contact])
        elif action == "remove":
            yield from self._remove(changes)
        elif action == "merge":
            yield from self._merge(changes)
        elif action == "retire":
            for results in self._delete_profiles(changes, lambda c: (c.key, c.dest_id, c.contact)):
                yield [Outcome(c, ok, reason) for c, ok, reason in results]
        else:
            raise ValueError(f"unknown action {action}")

    def erase(self, targets: list[ErasureTarget]):
        yield from self._delete_profiles(targets, lambda t: (t.key, t.dest_id, t.contact))
