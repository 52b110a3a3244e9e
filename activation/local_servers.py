"""Klaviyo- and Mailchimp-shaped HTTP servers on 127.0.0.1, for tests and the benchmark.

Every request is first checked against the vendor's own API definition (the trimmed OpenAPI
files in tests/fixtures/vendor_specs/, through :mod:`activation.contract`) and refused with a
400 as the real API would, so these servers cannot accept what Klaviyo or Mailchimp refuse.

They implement the endpoints the syncs use, with the real batch limits (Klaviyo: ≤10,000
profiles and ≤5 MB per import job, ≤1,000 ids per list call, ≤100 per profiles page;
Mailchimp: ≤500 members per batch), authentication, a fixed-window rate limit answering 429
with Retry-After (and RateLimit-* headers otherwise), and injectable faults:

    server.inject("POST /api/profile-bulk-import-jobs", "429", 0.01)   # next matching request
    server.inject("POST /3.0/lists", "500")
    server.inject("...", "timeout", 1.0)   # hold the request, then drop it unapplied
    server.inject("...", "drop")           # close the connection without answering
    server.inject("...", "hang")           # hold until release_hung(), then drop it unapplied
    server.inject("...", "ack_lost")       # apply it, then drop the connection: the answer is lost
    server.inject("...", "apply_hang")     # apply it, then hold until release_hung() and drop
    server.die_after(n)                    # after n applied writes, refuse everything until revive()

A faulted request is never applied (except ack_lost / apply_hang, which are applied and never
answered). ``deliveries`` counts, per profile key, how many times an upsert was applied: the
tests assert exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from activation.contract import spec

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class _Drop(Exception):
    """Close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalAPI/1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self, method: str) -> None:
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = app.dispatch(method, self.path, self.headers, body)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")


class LocalAPI(ABC):
    """Common parts: start/stop, faults, rate limit, request counts, contract checks."""

    SPEC: str = ""

    def __init__(self, burst_per_s: int | None = None, steady_per_min: int | None = None):
        self.lock = threading.RLock()
        self.burst_per_s, self.steady_per_min = burst_per_s, steady_per_min
        self._windows: dict[str, tuple[int, int]] = {}
        self._faults: list[list] = []  # [route prefix, kind, arg, matching requests still to let through]
        self.hung = threading.Event()  # set when a request is being held by a "hang" fault
        self._hung = threading.Event()
        self._down = False
        self._writes_left: int | None = None
        self.requests: Counter = Counter()
        self.throttled = 0
        self.refused: list[str] = []   # contract violations answered with 400
        self.faults_served: Counter = Counter()
        self.httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # lifecycle -------------------------------------------------------------------
    def start(self, port: int = 0) -> "LocalAPI":
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port or self.port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._hung.set()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # faults ------------------------------------------------------------------------
    def inject(self, route: str, kind: str, arg: float | None = None, times: int = 1, skip: int = 0) -> None:
        """Fault ``times`` requests whose 'METHOD /path' starts with ``route``, after letting
        ``skip`` matching requests through."""
        with self.lock:
            self._faults += [[route, kind, arg, skip] for _ in range(times)]

    def die_after(self, writes: int) -> None:
        with self.lock:
            self._writes_left = writes

    def revive(self) -> None:
        with self.lock:
            self._down, self._writes_left = False, None

    def release_hung(self) -> None:
        self._hung.set()

    def _take_fault(self, route: str):
        with self.lock:
            for i, (prefix, kind, arg, skip) in enumerate(self._faults):
                if route.startswith(prefix):
                    if skip > 0:
                        for f in self._faults:
                            if f[0] == prefix:
                                f[3] -= 1
                        return None
                    del self._faults[i]
                    self.faults_served[kind] += 1
                    return kind, arg
        return None

    def _count_write(self) -> None:
        with self.lock:
            if self._writes_left is not None:
                self._writes_left -= 1
                if self._writes_left <= 0:
                    self._down = True

    def _rate(self) -> tuple[bool, dict, float]:
        """Fixed windows (1 s burst, 60 s steady): (allowed, headers, retry_after)."""
        if not self.burst_per_s and not self.steady_per_min:
            return True, {}, 0
        now = time.time()
        with self.lock:
            states = []
            for name, size, limit in (("burst", 1, self.burst_per_s), ("steady", 60, self.steady_per_min)):
                if limit:
                    window = int(now // size)
                    w, n = self._windows.get(name, (window, 0))
                    states.append((name, size, limit, window, n if w == window else 0))
            blocked = [(w + 1) * size - now for _, size, limit, w, n in states if n >= limit]
            if blocked:
                self.throttled += 1
                return False, {}, max(blocked)
            for name, _size, _limit, w, n in states:
                self._windows[name] = (w, n + 1)
            _, size, limit, w, n = states[-1]  # report the steady window when there is one
            return True, {"RateLimit-Limit": limit, "RateLimit-Remaining": limit - n - 1,
                          "RateLimit-Reset": int((w + 1) * size - now)}, 0

    def dispatch(self, method: str, path: str, headers, body: bytes):
        parts = urlsplit(path)
        route = f"{method} {parts.path}"
        with self.lock:
            self.requests[route.split("/")[0] + "/" + "/".join(parts.path.split("/")[1:3])] += 1
            down = self._down
        if down:
            raise _Drop()
        fault = self._take_fault(route)
        if fault and fault[0] in ("ack_lost", "apply_hang"):
            self._apply(method, path, headers, body)  # applied, then the answer never arrives
            if fault[0] == "apply_hang":
                self.hung.set()
                self._hung.wait(60)
            raise _Drop()
        if fault:
            kind, arg = fault
            if kind == "429":
                return 429, {"Retry-After": arg if arg is not None else 1}, {"errors": [{"status": 429, "title": "Throttled"}]}
            if kind == "500":
                return 500, {}, {"errors": [{"status": 500, "title": "Server error"}]}
            if kind == "timeout":
                time.sleep(arg or 1.0)
                raise _Drop()
            if kind == "hang":
                self.hung.set()
                self._hung.wait(60)
                raise _Drop()
            raise _Drop()
        auth_error = self.check_auth(headers)
        if auth_error:
            return auth_error
        allowed, rl_headers, retry_after = self._rate()
        if not allowed:
            return 429, {"Retry-After": f"{max(retry_after, 0.01):.2f}"}, {"errors": [{"status": 429, "title": "Throttled"}]}
        status, extra, out = self._apply(method, path, headers, body)
        return status, {**rl_headers, **extra}, out

    def _apply(self, method: str, path: str, headers, body: bytes):
        parts = urlsplit(path)
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return self.refuse("Invalid JSON")
        why = spec(self.SPEC).check(method, path, headers, payload)
        if why:
            with self.lock:
                self.refused.append(why)
            return self.refuse(why)
        status, extra, out = self.handle(method, parts.path, parse_qs(parts.query), payload, len(body))
        if method != "GET" and status < 400:
            self._count_write()
        return status, extra, out

    def refuse(self, why: str):
        return 400, {}, {"errors": [{"status": 400, "code": "invalid", "title": "Invalid input.", "detail": why}]}

    def check_auth(self, headers):
        return None

    @abstractmethod
    def handle(self, method, path, query, payload, size):
        """The API itself: (status, headers, JSON body) for one authorised, unfaulted request."""


# ------------------------------------------------------------------------------ Klaviyo
class LocalKlaviyo(LocalAPI):
    SPEC = "klaviyo"
    MAX_PROFILES, MAX_BYTES, MAX_LIST_IDS, MAX_PAGE = 10_000, 5_000_000, 1_000, 100

    def __init__(self, api_key: str = "pk_test", lists=("LIST1",), **rate):
        super().__init__(**rate)
        self.api_key = api_key
        self.profiles: dict[str, dict] = {}
        self.lists: dict[str, set[str]] = {lid: set() for lid in lists}
        self.jobs: dict[str, dict] = {}
        self.deliveries: Counter = Counter()     # profile key -> applied upserts
        self.deleted: list[str] = []             # keys deleted by data-privacy deletion jobs
        self.list_removals: Counter = Counter()
        self.merges: list[tuple[str, str]] = []  # (email merged away, email kept)
        self.unsubscribed: Counter = Counter()   # email/phone -> unsubscribe jobs applied
        self.events: dict[tuple, dict] = {}      # (metric, profile key, unique_id) -> event: Create Event

    def check_auth(self, headers):
        if headers.get("Authorization") != f"Klaviyo-API-Key {self.api_key}":
            return 401, {}, {"errors": [{"status": 401, "title": "Incorrect authentication credentials."}]}
        if not headers.get("revision"):
            return 400, {}, {"errors": [{"status": 400, "title": "Missing revision header"}]}
        return None

    @staticmethod
    def _err(status, title, detail=""):
        return status, {}, {"errors": [{"status": status, "title": title, "detail": detail}]}

    def _find(self, attrs: dict) -> str | None:
        for k in ("email", "phone_number", "external_id"):
            v = attrs.get(k)
            if v is None:
                continue
            for pid, p in self.profiles.items():
                if p.get(k) == v:
                    return pid
        return None

    def _index(self, k: str) -> dict[str, str]:
        return {p[k]: pid for pid, p in self.profiles.items() if p.get(k) is not None}

    def handle(self, method, path, query, payload, size):
        with self.lock:
            return self._handle(method, path, query, payload, size)

    def _handle(self, method, path, query, payload, size):
        seg = [s for s in path.split("/") if s]
        if seg[:2] == ["api", "profile-bulk-import-jobs"]:
            if method == "POST" and len(seg) == 2:
                return self._import(payload, size)
            job = self.jobs.get(seg[2]) if len(seg) > 2 else None
            if job is None:
                return self._err(404, "Not found")
            if len(seg) == 3:
                return 200, {}, {"data": self._job_resource(seg[2])}
            if seg[3] == "import-errors":
                return 200, {}, {"data": job["errors"], "links": {"next": None}}
        if seg[:2] == ["api", "profiles"] and method == "GET":
            return self._get_profiles(query)
        if len(seg) == 5 and seg[:2] == ["api", "lists"] and seg[3:] == ["relationships", "profiles"]:
            members = self.lists.get(seg[2])
            if members is None:
                return self._err(404, "List not found")
            ids = [d["id"] for d in (payload or {}).get("data", [])]
            if len(ids) > self.MAX_LIST_IDS:
                return self._err(400, "Too many profiles", f"at most {self.MAX_LIST_IDS} per call")
            if method == "POST":
                members.update(i for i in ids if i in self.profiles)
            else:
                for i in ids:
                    if i in members:
                        members.discard(i)
                        self.list_removals[self.profiles[i].get("email") or i] += 1
            return 204, {}, None
        if len(seg) == 2 and seg[1] in ("profile-subscription-bulk-create-jobs", "profile-subscription-bulk-delete-jobs"):
            return self._subscriptions(seg[1].endswith("create-jobs"), payload)
        if seg[:2] == ["api", "profile-merge"] and method == "POST":
            into = payload["data"]["id"]
            sources = [d["id"] for d in payload["data"]["relationships"]["profiles"]["data"]]
            if into not in self.profiles or any(s not in self.profiles for s in sources):
                return self._err(404, "Not found", "profile")
            keep = self.profiles[into]
            for sid in sources:
                gone = self.profiles.pop(sid)
                for k, v in gone.items():  # the destination profile's values win
                    if k == "properties":
                        keep["properties"] = {**v, **keep["properties"]}
                    elif keep.get(k) is None:
                        keep[k] = v
                for members in self.lists.values():
                    if sid in members:
                        members.discard(sid)
                        members.add(into)
                self.merges.append((gone.get("email"), keep.get("email")))
            return 200, {}, {"data": {"type": "profile", "id": into, "attributes": {}}}
        if seg == ["api", "events"] and method == "POST":
            # Klaviyo records the first event of a unique_id per profile and metric, and answers
            # 202 to a repeat as well
            attrs = payload["data"]["attributes"]
            who = attrs["profile"]["data"].get("attributes") or {}
            key = next((who.get(k) for k in ("external_id", "email", "phone_number") if who.get(k)), None)
            if key is None:
                return self._err(400, "Invalid input", "the profile needs an email, phone_number or external_id")
            self.events.setdefault((attrs["metric"]["data"]["attributes"]["name"], key,
                                    attrs.get("unique_id") or attrs.get("time")), attrs)
            return 202, {}, None
        if seg[:2] == ["api", "data-privacy-deletion-jobs"] and method == "POST":
            attrs = payload["data"]["attributes"]["profile"]["data"].get("attributes") or {}
            pid = payload["data"]["attributes"]["profile"]["data"].get("id") or self._find(attrs)
            if pid in self.profiles:
                p = self.profiles.pop(pid)
                for members in self.lists.values():
                    members.discard(pid)
                self.deleted.append(p.get("email") or p.get("phone_number") or p.get("external_id"))
            return 202, {}, None
        return self._err(404, "Not found", f"{method} {path}")

    def _subscriptions(self, subscribe: bool, payload):
        data = payload["data"]
        lid = (((data.get("relationships") or {}).get("list") or {}).get("data") or {}).get("id")
        if lid is not None and lid not in self.lists:
            return self._err(404, "List not found", lid)
        for p in data["attributes"]["profiles"]["data"]:
            attrs = p["attributes"]
            pid = self._find({k: attrs.get(k) for k in ("email", "phone_number")})
            if pid is None:
                if not subscribe:
                    continue  # nobody to unsubscribe
                pid = uuid.uuid4().hex[:26].upper()
                self.profiles[pid] = {"properties": {}, **{k: attrs[k] for k in ("email", "phone_number") if attrs.get(k)}}
            consent = self.profiles[pid].setdefault("subscriptions", {})
            for channel, params in attrs["subscriptions"].items():
                consent[channel] = params["marketing"]["consent"]
            if lid is not None:
                (self.lists[lid].add if subscribe else self.lists[lid].discard)(pid)
            if not subscribe:
                self.unsubscribed[attrs.get("email") or attrs.get("phone_number")] += 1
        return 202, {}, {"data": {"type": data["type"], "id": uuid.uuid4().hex}}

    def _import(self, payload, size):
        if size > self.MAX_BYTES:
            return self._err(413, "Payload too large", f"at most {self.MAX_BYTES} bytes per request")
        data = payload["data"]
        profiles = data["attributes"]["profiles"]["data"]
        if len(profiles) > self.MAX_PROFILES:
            return self._err(400, "Too many profiles", f"at most {self.MAX_PROFILES} per job")
        lists = [d["id"] for d in ((data.get("relationships") or {}).get("lists") or {}).get("data", [])]
        for lid in lists:
            if lid not in self.lists:
                return self._err(404, "List not found", lid)
        indexes = {k: self._index(k) for k in ("email", "phone_number", "external_id")}
        errors = []
        for i, p in enumerate(profiles):
            attrs = dict(p["attributes"])
            email = attrs.get("email")
            if email is not None and not EMAIL_RE.match(email):
                errors.append({"type": "import-error", "id": uuid.uuid4().hex, "attributes": {
                    "code": "invalid", "title": "Invalid email address",
                    "detail": "The email address is not valid.",
                    "source": {"pointer": f"/data/attributes/profiles/data/{i}"}, "original_payload": attrs}})
                continue
            pid = p.get("id") if p.get("id") in self.profiles else None
            pid = pid or next((indexes[k][attrs[k]] for k in ("email", "phone_number", "external_id")
                               if attrs.get(k) is not None and attrs[k] in indexes[k]), None)
            if pid is None:
                pid = uuid.uuid4().hex[:26].upper()
                self.profiles[pid] = {"properties": {}}
            prof = self.profiles[pid]
            props = attrs.pop("properties", None) or {}
            location = attrs.pop("location", None) or {}
            prof.update({k: v for k, v in attrs.items() if v is not None})
            prof["properties"].update(props)
            if location:
                prof["location"] = {**prof.get("location", {}), **location}
            for k in indexes:
                if prof.get(k) is not None:
                    indexes[k][prof[k]] = pid
            for lid in lists:
                self.lists[lid].add(pid)
            self.deliveries[attrs.get("email") or attrs.get("phone_number") or attrs.get("external_id")] += 1
        job_id = uuid.uuid4().hex
        self.jobs[job_id] = {"total": len(profiles), "failed": len(errors), "errors": errors}
        return 202, {}, {"data": self._job_resource(job_id)}

    def _job_resource(self, job_id):
        j = self.jobs[job_id]
        return {"type": "profile-bulk-import-job", "id": job_id, "attributes": {
            "status": "complete", "total_count": j["total"], "completed_count": j["total"] - j["failed"],
            "failed_count": j["failed"]}}

    def _get_profiles(self, query):
        size = int((query.get("page[size]") or ["20"])[0])
        if size > self.MAX_PAGE:
            return self._err(400, "Invalid page size", f"page[size] at most {self.MAX_PAGE}")
        flt = (query.get("filter") or [""])[0]
        m = re.fullmatch(r"(any|equals)\((\w+),(.*)\)", unquote(flt))
        if not m:
            return self._err(400, "Invalid filter", flt)
        op, field, raw = m.groups()
        values = json.loads(raw) if op == "any" else [json.loads(raw)]
        if len(values) > self.MAX_PAGE:
            return self._err(400, "Invalid filter", "at most 100 values")
        index = self._index(field)
        only = (query.get("fields[profile]") or [""])[0].split(",")
        found = [{"type": "profile", "id": index[v], "attributes": {
            k: x for k, x in self.profiles[index[v]].items() if k != "subscriptions" and (not only[0] or k in only)}}
            for v in values if v in index]
        return 200, {}, {"data": found[:size], "links": {"next": None}}

    # for tests ----------------------------------------------------------------------
    def profile_keys(self) -> set[str]:
        with self.lock:
            return {p.get("email") for p in self.profiles.values()}

    def list_keys(self, list_id: str = "LIST1") -> set[str]:
        with self.lock:
            return {self.profiles[pid].get("email") for pid in self.lists[list_id]}

    def profile(self, email: str) -> dict | None:
        with self.lock:
            return next((p for p in self.profiles.values() if p.get("email") == email), None)


# ------------------------------------------------------------------------------ Mailchimp
def _md5(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


class LocalMailchimp(LocalAPI):
    SPEC = "mailchimp"
    MAX_MEMBERS = 500
    DEFAULT_MERGE_FIELDS = ("FNAME", "LNAME", "ADDRESS", "PHONE", "BIRTHDAY")  # a new audience's

    def __init__(self, api_key: str = "mc_test-us1", lists=("AUD1",), **rate):
        super().__init__(**rate)
        self.api_key = api_key
        self.lists: dict[str, dict[str, dict]] = {lid: {} for lid in lists}
        self.merge_fields: dict[str, list[str]] = {lid: list(self.DEFAULT_MERGE_FIELDS) for lid in lists}
        self.deliveries: Counter = Counter()
        self.archived: Counter = Counter()
        self.deleted: list[str] = []

    def check_auth(self, headers):
        auth = headers.get("Authorization") or ""
        ok = False
        if auth.startswith("Basic "):
            try:
                ok = base64.b64decode(auth[6:]).decode().split(":", 1)[1] == self.api_key
            except (ValueError, IndexError):
                ok = False
        if not ok:
            return 401, {}, {"title": "API Key Invalid", "status": 401, "detail": "Your API key may be invalid."}
        return None

    def handle(self, method, path, query, payload, size):
        with self.lock:
            return self._handle(method, path, query, payload)

    @staticmethod
    def _err(status, title, detail):
        return status, {}, {"type": "about:blank", "title": title, "status": status, "detail": detail}

    def refuse(self, why: str):
        return self._err(400, "Invalid Resource", why)

    def _handle(self, method, path, query, payload):
        seg = [s for s in path.split("/") if s]
        if len(seg) < 3 or seg[:2] != ["3.0", "lists"] or seg[2] not in self.lists:
            return self._err(404, "Resource Not Found", "The requested resource could not be found.")
        members = self.lists[seg[2]]
        tags = self.merge_fields[seg[2]]
        if seg[3:] == ["merge-fields"]:
            if method == "GET":
                return 200, {}, {"merge_fields": [{"tag": t, "name": t, "type": "text"} for t in tags],
                                 "total_items": len(tags)}
            tag = (payload.get("tag") or payload["name"])[:10].upper()
            if tag in tags:
                return self._err(400, "Invalid Resource", f"A Merge Field with the tag \"{tag}\" already exists.")
            tags.append(tag)
            return 200, {}, {"tag": tag, "name": payload["name"], "type": payload["type"]}
        if len(seg) == 3 and method == "POST":
            batch = (payload or {}).get("members") or []
            if len(batch) > self.MAX_MEMBERS:
                return self._err(400, "Invalid Resource", f"at most {self.MAX_MEMBERS} members per batch")
            new, updated, errors = [], [], []
            for m in batch:
                email = m.get("email_address") or ""
                if not EMAIL_RE.match(email):
                    errors.append({"email_address": email, "error": f"{email} looks fake or invalid, please enter "
                                   "a real email address.", "error_code": "ERROR_GENERIC", "field": "email_address"})
                    continue
                h = _md5(email)
                cur = members.get(h)
                if cur is None:
                    cur = members[h] = {"id": h, "email_address": email, "merge_fields": {},
                                        "status": m.get("status_if_new") or m.get("status")}
                    new.append(cur)
                elif not payload.get("update_existing"):
                    errors.append({"email_address": email, "error": "already a list member", "error_code": "ERROR_CONTACT_EXISTS"})
                    continue
                else:
                    if cur["status"] == "archived":
                        cur["status"] = m.get("status") or m.get("status_if_new", "subscribed")
                    elif m.get("status"):
                        cur["status"] = m["status"]
                    updated.append(cur)
                # like Mailchimp: values for tags the audience does not have are dropped silently
                cur["merge_fields"].update({k: v for k, v in (m.get("merge_fields") or {}).items() if k in tags})
                self.deliveries[email] += 1
            return 200, {}, {"new_members": new, "updated_members": updated, "errors": errors,
                             "total_created": len(new), "total_updated": len(updated), "error_count": len(errors)}
        if len(seg) >= 5 and seg[3] == "members":
            h = seg[4]
            cur = members.get(h)
            if cur is None:
                return self._err(404, "Resource Not Found", "The requested resource could not be found.")
            if len(seg) == 5 and method == "GET":
                return 200, {}, cur
            if len(seg) == 5 and method == "DELETE":
                cur["status"] = "archived"
                self.archived[cur["email_address"]] += 1
                return 204, {}, None
            if seg[5:] == ["actions", "delete-permanent"] and method == "POST":
                self.deleted.append(members.pop(h)["email_address"])
                return 204, {}, None
        return self._err(404, "Resource Not Found", f"{method} {path}")

    # for tests ----------------------------------------------------------------------
    def member_keys(self, list_id: str = "AUD1", status: str | None = "subscribed") -> set[str]:
        with self.lock:
            return {m["email_address"] for m in self.lists[list_id].values() if status is None or m["status"] == status}

    def member(self, email: str, list_id: str = "AUD1") -> dict | None:
        with self.lock:
            return self.lists[list_id].get(_md5(email))
