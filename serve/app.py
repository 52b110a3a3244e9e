"""The ASGI application of ``cdp serve`` (Starlette on uvicorn).

- ``POST /v1/track|identify|page|screen|group|alias|batch`` and ``/v1/b``: Segment's HTTP
  Tracking API, write keys only. 200 means the events are fsync'd in the log.
- ``GET /v1/profiles/{id}`` and ``POST /v1/decide``: read keys only.
- ``GET /health``, ``GET /openapi.json``: no key.

Logs name the route, status and time, never an id, a key or a body (ids are personal data).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activation.nudges import nudges_path
from core.config import Config, ConfigError
from core.pii import install_log_masking
from serve import cart_model
from serve.collector import Rejected, basic_auth_key, decode_body, events_of, landed_record, log_line, received_at_text
from serve.decide import cart_intent as live_cart_intent
from serve.decide import decide
from serve.live import LiveState, Published
from serve.log import LANDED_TAG, EventLog, LogBusy, LogFollower, log_dir_name, worker_of_log_dir
from serve.openapi import OPENAPI
from serve.triggers import CartAbandonmentTrigger, SendStore

log = logging.getLogger("tessera.serve")
CALLS = ("track", "identify", "page", "screen", "group", "alias")
LIVE_BATCH_S = 0.1
FOLLOW_S = 0.05  # how often a worker reads the other workers' logs (part of cross-worker freshness)
Reply = tuple  # (status, JSON body bytes, extra headers)


def _json(obj) -> bytes:
    """A response body: orjson; numpy scalars as numbers; anything else JSON cannot hold as text."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


OK = (200, _json({"success": True}), {})


async def read_body(receive, limit: int) -> bytes | None:
    """The request body from ASGI ``receive``; None once it is over ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


async def send_reply(send, reply: Reply) -> None:
    status, body, extra = reply
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def as_response(reply: Reply) -> Response:
    status, body, extra = reply
    return Response(body, status_code=status, headers=extra, media_type="application/json")


def _keys(config: Config, names: list[str], kind: str) -> list[str]:
    keys = []
    for name in names:
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"serve.{kind}_keys_env: the environment variable {name} is not set; export the key "
                              "before `cdp serve`")
        keys.append(value)
    return keys


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1, now)
        return True


class Server:
    """Everything the routes share; started and stopped by the app's lifespan."""

    def __init__(self, config: Config, worker: int = 0, workers: int = 1):
        self.config = config
        s = config.serve
        self.settings = s
        self.worker, self.workers = worker, workers
        source = next((x for x in config.sources if x.name == s.source and x.kind == "web"), None)
        if source is None or "events" not in source.entities:
            raise ConfigError(f"serve.source: {s.source!r} is not a web source with an events entity in sources; "
                              "name the web source the collector lands events for")
        if not s.write_keys_env:
            raise ConfigError("serve.write_keys_env: name at least one environment variable holding a write key")
        self.source = source
        self.write_keys = _keys(config, s.write_keys_env, "write")
        self.read_keys = _keys(config, s.read_keys_env, "read")
        # a key's limit is the server's: each of N workers allows its Nth
        self.limiter = RateLimiter(s.rate_limit_per_second / workers, max(1, s.rate_limit_burst // workers))
        # messageId -> None once durable, or the write's future while it is in flight
        self.seen: OrderedDict[str, object] = OrderedDict()
        # messageIds other workers logged (their follower's thread -> this loop's `seen`)
        self._followed_ids: deque = deque(maxlen=s.dedup_ids)
        self.follower: LogFollower | None = None
        self.spool = config.serve_spool
        self.log: EventLog | None = None
        self.state = LiveState(s.session_minutes, source.entities["events"].event_names)
        self.trigger: CartAbandonmentTrigger | None = None
        self.sends: SendStore | None = None
        self._live_queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = {"events_accepted": 0, "events_duplicate": 0, "requests_rejected": 0, "events_followed": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        install_log_masking()
        self.spool.mkdir(parents=True, exist_ok=True)
        glob = self.source.entities["events"].path
        try:
            self.log = EventLog(self.spool, self.config.landing_dir, glob, self.settings.rotate_bytes,
                                self.settings.rotate_seconds, worker=self.worker)
        except LogBusy as e:
            raise ConfigError(f"serve.spool: {e}; stop it first, or give this server its own spool") from None
        if self.worker == 0:
            self._land_retired_workers(glob)
        self._remember_recent(self.log.recovered)
        self._swap_in(Published(self.config.published_dir, self.source.name))
        self.sends = SendStore(nudges_path(self.config.root))
        if self.settings.cart_abandonment is not None and self.worker == 0:  # one worker fires: once per cart
            self.trigger = CartAbandonmentTrigger(self.settings.cart_abandonment, self.state, self.sends,
                                                  self._intent_of)
        replayed = self.state.replay(self.landed_files(), since=time.time() - 86400)
        log.info("serve: replayed %d recent events into live state", replayed)
        gc.collect()  # the replayed profiles too are long-lived: out of the GC's scans (see _swap_in)
        gc.freeze()
        loops = [(self._live_loop, "live-state"), (self._snapshot_loop, "snapshot-watch")]
        if self.workers > 1:
            # following starts after the replay: a segment still in a log folder was not in it
            self.follower = LogFollower(self.spool, self.worker, self._followed)
            loops.append((self._follow_loop, "log-follower"))
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Graceful: every acknowledged event is in a landing file when this returns."""
        self._stop.set()
        if self.log is not None:
            self.log.close()
        for t in self._threads:
            t.join(timeout=5)
        if self.follower is not None:
            self.follower.close()
        if self.trigger is not None:
            self.trigger.close()
        if self.sends is not None:
            self.sends.close()

    def landed_files(self) -> list[Path]:
        glob = self.source.entities["events"].path
        return [p for p in self.config.landing_dir.glob(glob.replace("*", LANDED_TAG + "*"))]

    def _remember_recent(self, recovered: list[bytes]) -> None:
        """messageIds of the recovered segment and the newest landed files, newest last."""
        ids: list[str] = []
        for path in sorted(self.landed_files(), key=lambda p: p.stat().st_mtime, reverse=True):
            if len(ids) >= self.settings.dedup_ids:
                break
            ids.extend(json.loads(line).get("messageId") for line in path.read_bytes().splitlines() if line.strip())
        ids.reverse()
        ids.extend(json.loads(line).get("messageId") for line in recovered if line.strip())
        for i in ids[-self.settings.dedup_ids:]:
            self.seen[i] = None

    def _land_retired_workers(self, glob: str) -> None:
        """Log folders of workers beyond ``workers`` (the server ran with more before): worker 0
        lands what they hold, so no acknowledged event waits for a worker that never starts."""
        for d in sorted(self.spool.glob("log-*")):
            w = worker_of_log_dir(d.name)
            if w is None or w < self.workers or d.name != log_dir_name(w) or not any(d.glob("*.jsonl")):
                continue
            try:
                old = EventLog(self.spool, self.config.landing_dir, glob, self.settings.rotate_bytes,
                               self.settings.rotate_seconds, worker=w)
            except LogBusy:
                continue
            self._remember_recent(old.recovered)
            old.close()
            log.info("serve: landed the log of retired worker %d", w)

    def _followed(self, lines: list[bytes]) -> None:
        records = [orjson.loads(line) for line in lines]
        self._followed_ids.extend(r.get("messageId") for r in records)
        # a messageId this worker already logged (re-delivered to two workers within FOLLOW_S,
        # both wrote it) or already followed is not applied twice to the live state
        seen = self.seen
        records = [r for r in records if r.get("messageId") not in seen]
        self.stats["events_followed"] += len(records)
        if records:
            self._live_queue.put(records)

    def _follow_loop(self) -> None:
        """Every worker's events into this worker's live state (and its messageId memory), within
        FOLLOW_S + LIVE_BATCH_S of their write."""
        while not self._stop.wait(FOLLOW_S):
            try:
                self.follower.poll()
            except Exception as e:  # live state is a view; the logs hold the events
                log.error("following the other workers' logs failed: %s", type(e).__name__)

    def _live_loop(self) -> None:
        """Applies acknowledged events to the live state, in batches gathered for up to
        LIVE_BATCH_S after the first: normalising a batch (core.segment_spec, DuckDB) costs
        ~15 ms of CPU whatever its size, so at most 1 / LIVE_BATCH_S of those a second, however
        many requests bring the events. Freshness pays at most LIVE_BATCH_S."""
        while not self._stop.is_set():
            try:
                records = list(self._live_queue.get(timeout=0.5))
            except queue.Empty:
                continue
            until = time.monotonic() + LIVE_BATCH_S
            while len(records) < 5000:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    records.extend(self._live_queue.get(timeout=left))
                except queue.Empty:
                    break
            try:
                self.state.apply(records)
            except Exception as e:  # live state is a view; the log already holds the events
                log.error("live state update failed: %s", type(e).__name__)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                current = Published.current_run(self.config.published_dir)
                if current and current != (self.state.published.run_id if self.state.published else None):
                    self._swap_in(Published(self.config.published_dir, self.source.name))
                    log.info("serve: switched to published snapshot %s", current)
            except Exception as e:
                log.error("snapshot swap failed: %s", type(e).__name__)

    def _swap_in(self, pub: Published) -> None:
        """The snapshot and its cart-intent model switch together: a decision never pairs one
        snapshot's scores with another's model."""
        model = self._cart_model_of(pub)
        with self.state.lock:
            self.state.set_published(pub)
            self.state.cart_model = model
        # The snapshot is millions of long-lived objects (1M customers: ids, consent, offers,
        # carts). Left to the cyclic GC, each full collection walks them all and stalls every
        # request for tens of milliseconds (decide p99); frozen, the GC never scans them again.
        # Refcounting still frees them when a later snapshot replaces this one.
        gc.collect()
        gc.freeze()
        log.info("serve: cart intent %s", f"live from model {model.model_version}" if model else
                 "from published scores (no saved model matching the snapshot)")

    def _cart_model_of(self, pub: Published):
        """The snapshot's cart-intent model, read from the snapshot itself (serve/cart_model.py):
        the server never opens the warehouse a run writes."""
        if pub.con is None:
            return None
        version = next((row[5] for row in pub.cart_intent.values()), None)
        try:
            return cart_model.load(pub.con.cursor(), version)
        except Exception as e:  # a snapshot whose model cannot be read: its published scores answer
            log.error("serve: cart-intent model not loaded (%s); using the published scores", type(e).__name__)
            return None

    def _intent_of(self, person_id: str, person) -> dict | None:
        return live_cart_intent(self.state, person_id, person, None, self.config.cart_intent)

    def emails_sent_7d(self, person_id: str) -> int:
        # live nudges and batch syncs' alike (the shared nudge log)
        return self.sends.count_since(person_id, time.time() - 7 * 86400, "email_marketing") if self.sends else 0

    # ------------------------------------------------------------------ requests
    def key_of(self, authorization: bytes | str | None, keys: list[str]) -> str | None:
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        given = basic_auth_key(authorization)
        if given is None:
            return None
        return next((k for k in keys if hmac.compare_digest(k.encode(), given.encode())), None)

    async def collect(self, call: str | None, headers: dict[bytes, bytes], receive) -> Reply:
        """One collector request (ASGI: the request's headers and its ``receive``). The hot path:
        no framework objects, one group-committed log write for the request's events."""
        key = self.key_of(headers.get(b"authorization"), self.write_keys)
        length = headers.get(b"content-length", b"")
        limit = self.settings.max_batch_bytes
        if length.isdigit() and int(length) > limit:
            return self._reject(400, f"request body is over {limit} bytes")
        raw = await read_body(receive, limit)
        if raw is None:
            return self._reject(400, f"request body is over {limit} bytes")
        encoding = headers.get(b"content-encoding")
        try:
            body = decode_body(raw, encoding.decode("latin-1") if encoding else None, limit)
        except Rejected as e:
            return self._reject(400, str(e))
        if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
            key = next((k for k in self.write_keys if hmac.compare_digest(k.encode(), body["writeKey"].encode())), None)
        if key is None:
            return self._reject(401, "a valid write key is required (Basic auth, the key as user name)")
        if not self.limiter.allow(key):
            return self._reject(429, "rate limit exceeded for this key", {"Retry-After": "1"})
        try:
            events = events_of(body, call, self.settings.max_event_bytes)
        except Rejected as e:
            return self._reject(400, str(e))
        received = received_at_text(datetime.now(timezone.utc))
        seen = self.seen
        followed = self._followed_ids
        while followed:  # what other workers logged: a re-delivery to this one is not written twice
            seen.setdefault(followed.popleft(), None)
        records, fresh, waits = [], {}, set()
        for e in events:
            rec = landed_record(e, received)
            mid = rec["messageId"]
            if mid in seen or mid in fresh:
                self.stats["events_duplicate"] += 1
                if seen.get(mid) is not None:  # its first delivery is still being written
                    waits.add(seen[mid])
                continue
            fresh[mid] = None
            records.append(rec)
        pending = []
        if records:
            written = self.log.append([log_line(r) for r in records])
            for mid in fresh:  # claimed now; a concurrent re-delivery answers when this is durable
                seen[mid] = written
            pending.append(written)
        try:
            for f in [*pending, *waits]:
                await asyncio.wrap_future(f)
        except Exception:
            for mid in fresh:
                seen.pop(mid, None)
            return self._reject(503, "the event log could not be written; retry")
        if records:
            for mid in fresh:
                seen[mid] = None
            while len(seen) > self.settings.dedup_ids:
                seen.popitem(last=False)
            self.stats["events_accepted"] += len(records)
            self._live_queue.put(records)
        return OK

    def _reject(self, status: int, reason: str, headers: dict | None = None) -> Reply:
        self.stats["requests_rejected"] += 1
        return status, _json({"success": False, "message": reason}), headers or {}

    def read_auth(self, authorization: bytes | str | None) -> Reply | None:
        key = self.key_of(authorization, self.read_keys)
        if key is None:
            return self._reject(401, "a valid read key is required (Basic or Bearer)")
        if not self.limiter.allow("read:" + key):
            return self._reject(429, "rate limit exceeded for this key", {"Retry-After": "1"})
        return None

    def profile(self, web_id: str) -> dict | None:
        state = self.state
        person_id = state.person_key(web_id)
        person = state.get(person_id)
        pub = state.published
        if person is None and not (pub is not None and person_id in pub.persons):
            return None
        one = lambda sql: (pub.query(sql, [person_id]) or [None])[0] if pub else None  # noqa: E731
        traits = one("SELECT * EXCLUDE (as_of) FROM customers WHERE person_id = ?")
        behaviour = one("SELECT * EXCLUDE (person_id, as_of) FROM customer_traits WHERE person_id = ?")
        segments = [r["segment"] for r in (pub.query("SELECT segment FROM segment_membership WHERE person_id = ? "
                                                     "ORDER BY segment", [person_id]) if pub else [])]
        recs = pub.query("SELECT rank, sku, score, reason FROM recommendations WHERE person_id = ? ORDER BY rank",
                         [person_id]) if pub else []
        churn = one("SELECT churn_probability, risk_tier, model_version, top_reasons FROM churn_scores "
                    "WHERE person_id = ?")
        with state.lock:
            consent = {}
            for channel in ("email_marketing", "sms_marketing", "web_personalisation"):
                ok, source = state.consent_of(person, person_id, channel)
                consent[channel] = {"granted": ok, "source": source}
            live = None if person is None else {
                "sessions": person.sessions, "events": person.events,
                "last_seen": _iso(person.last_seen), "session_started": _iso(person.session_started),
                "cart": {"cart_id": person.cart_id, "value": person.cart_value,
                         "items": [{"sku": s, **i} for s, i in person.cart.items()],
                         "checkout_started": person.checkout_started},
                "last_views": [{"sku": v["sku"], "at": _iso(v["at"])} for v in person.views],
            }
            intent = live_cart_intent(state, person_id, person, None, self.config.cart_intent)
        return {"person_id": None if person_id.startswith("provisional:") else person_id,
                "provisional": person_id.startswith("provisional:"),
                "traits": _plain({**(traits or {}), **(behaviour or {})}) if traits or behaviour else {},
                "segments": segments, "consent": consent,
                "scores": {"churn": _plain(churn), "cart_intent": intent},
                "recommendations": _plain(recs), "live": live,
                "snapshot": pub.run_id if pub else None}


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def route_of(path: str) -> str | None:
    if path.startswith("/v1/profiles/"):
        return "/v1/profiles/{id}"
    if path in ("/v1/decide", "/health", "/openapi.json"):
        return path
    if path.startswith("/v1/") and path[4:] in (*CALLS, "batch", "b"):
        return path
    return None


def build_app(config: Config, worker: int = 0, workers: int = 1) -> "AccessLog":
    server = Server(config, worker, workers)

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(server.start)
        try:
            yield
        finally:
            await asyncio.to_thread(server.close)

    async def profile(request: Request) -> Response:
        refused = server.read_auth(request.headers.get("authorization"))
        if refused:
            return as_response(refused)
        body = await asyncio.to_thread(server.profile, request.path_params["id"])
        if body is None:
            return JSONResponse({"message": "no profile for this id"}, status_code=404)
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        pub = server.state.published
        return JSONResponse({"status": "ok", "snapshot": pub.run_id if pub else None,
                             "worker": server.worker, "workers": server.workers,
                             "events_accepted": server.stats["events_accepted"],
                             "events_followed": server.stats["events_followed"],
                             "events_applied_live": server.state.applied,
                             "log_commits": server.log.commits if server.log else 0,
                             "log_commit_seconds": round(server.log.commit_seconds, 3) if server.log else 0.0,
                             "nudges_sent": len(server.trigger.fired) if server.trigger else 0,
                             "nudges_skipped": dict(server.trigger.skipped) if server.trigger else {}})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def post_only(request: Request) -> Response:  # the POST routes are served by AccessLog
        return JSONResponse({"message": "method not allowed"}, status_code=405, headers={"Allow": "POST"})

    routes = [Route("/v1/profiles/{id:str}", profile, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"]),
              Route("/v1/{call:str}", post_only)]
    app = Starlette(routes=routes, lifespan=lifespan)

    app.state.server = server
    return AccessLog(app, server)


async def decide_reply(server: Server, headers: dict[bytes, bytes], receive) -> Reply:
    refused = server.read_auth(headers.get(b"authorization"))
    if refused:
        return refused
    raw = await read_body(receive, server.settings.max_batch_bytes)
    if raw is None:
        return server._reject(400, f"request body is over {server.settings.max_batch_bytes} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return server._reject(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return server._reject(400, "body must be a JSON object")
    web_id = next((body[k] for k in ("person_id", "userId", "anonymousId") if isinstance(body.get(k), str) and body[k]),
                  None)
    if web_id is None:
        return server._reject(400, "give person_id, userId or anonymousId")
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    config = server.config
    result = decide(server.state, web_id, context, config.cart_intent, config.offers, server.emails_sent_7d)
    return 200, _json(result), {}


class AccessLog:
    """ASGI wrapper: unknown paths get a 404 without reaching a route; every request is logged
    by its route's template, never its path (a profile's path holds a person's id).

    The two hot routes, the collector's POSTs and ``POST /v1/decide``, are served here on plain
    ASGI (no framework objects: about half a request's CPU under Starlette was its routing,
    middleware and request/response objects); the rest go to the Starlette app."""

    def __init__(self, app: Starlette, server: Server):
        self.app = app
        self.state = app.state
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = route_of(path)
        if route is None:
            return await send_reply(send, (404, b'{"message":"not found"}', {}))
        status = 0
        try:
            if scope["method"] == "POST" and route != "/v1/profiles/{id}" and route.startswith("/v1/"):
                headers = dict(scope["headers"])
                if route == "/v1/decide":
                    reply = await decide_reply(self.server, headers, receive)
                else:
                    call = path[4:]
                    reply = await self.server.collect(None if call in ("batch", "b") else call, headers, receive)
                status = reply[0]
                await send_reply(send, reply)
                return

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, receive, send_status)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info("%s %s %d %.1fms", scope["method"], route, status, (time.perf_counter() - started) * 1000)
