"""The ASGI application of ``cdp serve`` (Starlette on uvicorn).

- ``POST /v1/track|identify|page|screen|group|alias|batch`` and ``/v1/b``: Segment's HTTP
  Tracking API, write keys only. 200 means the events are fsync'd in the log.
- ``GET /v1/profiles/{id}`` and ``POST /v1/decide``: read keys only.
- ``GET /health``, ``GET /openapi.json``: no key.

Logs name the route, status and time, never an id, a key or a body (ids are personal data).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activation.nudges import nudges_path
from core.config import Config, ConfigError
from core.pii import install_log_masking
from serve import cart_model
from serve.collector import Rejected, basic_auth_key, decode_body, events_of, landed_record, log_line
from serve.decide import cart_intent as live_cart_intent
from serve.decide import decide
from serve.live import LiveState, Published
from serve.log import LANDED_TAG, EventLog
from serve.openapi import OPENAPI
from serve.triggers import CartAbandonmentTrigger, SendStore

log = logging.getLogger("tessera.serve")
CALLS = ("track", "identify", "page", "screen", "group", "alias")


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

    def __init__(self, config: Config):
        self.config = config
        s = config.serve
        self.settings = s
        source = next((x for x in config.sources if x.name == s.source and x.kind == "web"), None)
        if source is None or "events" not in source.entities:
            raise ConfigError(f"serve.source: {s.source!r} is not a web source with an events entity in sources; "
                              "name the web source the collector lands events for")
        if not s.write_keys_env:
            raise ConfigError("serve.write_keys_env: name at least one environment variable holding a write key")
        self.source = source
        self.write_keys = _keys(config, s.write_keys_env, "write")
        self.read_keys = _keys(config, s.read_keys_env, "read")
        self.limiter = RateLimiter(s.rate_limit_per_second, s.rate_limit_burst)
        # messageId -> None once durable, or the write's future while it is in flight
        self.seen: OrderedDict[str, object] = OrderedDict()
        self.spool = config.serve_spool
        self.log: EventLog | None = None
        self.state = LiveState(s.session_minutes, source.entities["events"].event_names)
        self.trigger: CartAbandonmentTrigger | None = None
        self.sends: SendStore | None = None
        self._live_queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = {"events_accepted": 0, "events_duplicate": 0, "requests_rejected": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        install_log_masking()
        self.spool.mkdir(parents=True, exist_ok=True)
        glob = self.source.entities["events"].path
        self.log = EventLog(self.spool, self.config.landing_dir, glob, self.settings.rotate_bytes,
                            self.settings.rotate_seconds)
        self._remember_recent(self.log.recovered)
        self._swap_in(Published(self.config.published_dir, self.source.name))
        self.sends = SendStore(nudges_path(self.config.root))
        if self.settings.cart_abandonment is not None:
            self.trigger = CartAbandonmentTrigger(self.settings.cart_abandonment, self.state, self.sends,
                                                  self._intent_of)
        replayed = self.state.replay(self.landed_files(), since=time.time() - 86400)
        log.info("serve: replayed %d recent events into live state", replayed)
        for target, name in ((self._live_loop, "live-state"), (self._snapshot_loop, "snapshot-watch")):
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

    def _live_loop(self) -> None:
        while not self._stop.is_set():
            try:
                records = [self._live_queue.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(records) < 5000:
                try:
                    records.append(self._live_queue.get_nowait())
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
    def key_of(self, request: Request, keys: list[str], body_key: str | None = None) -> str | None:
        given = basic_auth_key(request.headers.get("authorization")) or body_key
        if given is None:
            return None
        return next((k for k in keys if hmac.compare_digest(k.encode(), given.encode())), None)

    async def collect(self, request: Request, call: str | None) -> Response:
        key = self.key_of(request, self.write_keys)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.settings.max_batch_bytes:
            return self._reject(400, f"request body is over {self.settings.max_batch_bytes} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.settings.max_batch_bytes:
                return self._reject(400, f"request body is over {self.settings.max_batch_bytes} bytes")
        try:
            body = decode_body(raw, request.headers.get("content-encoding"), self.settings.max_batch_bytes)
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
        now = datetime.now(timezone.utc)
        records, fresh, waits = [], [], set()
        for e in events:
            rec = landed_record(e, now)
            mid = rec["messageId"]
            if mid in self.seen or mid in fresh:
                self.stats["events_duplicate"] += 1
                if self.seen.get(mid) is not None:  # its first delivery is still being written
                    waits.add(self.seen[mid])
                continue
            fresh.append(mid)
            records.append(rec)
        pending = []
        if records:
            written = self.log.append([log_line(r) for r in records])
            for mid in fresh:  # claimed now; a concurrent re-delivery answers when this is durable
                self.seen[mid] = written
            pending.append(written)
        try:
            for f in [*pending, *waits]:
                await asyncio.wrap_future(f)
        except Exception:
            for mid in fresh:
                self.seen.pop(mid, None)
            return self._reject(503, "the event log could not be written; retry")
        if records:
            for mid in fresh:
                self.seen[mid] = None
            while len(self.seen) > self.settings.dedup_ids:
                self.seen.popitem(last=False)
            self.stats["events_accepted"] += len(records)
            for r in records:
                self._live_queue.put(r)
        return JSONResponse({"success": True})

    def _reject(self, status: int, reason: str, headers: dict | None = None) -> Response:
        self.stats["requests_rejected"] += 1
        return JSONResponse({"success": False, "message": reason}, status_code=status, headers=headers)

    def read_auth(self, request: Request) -> Response | None:
        key = self.key_of(request, self.read_keys)
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


def build_app(config: Config) -> "AccessLog":
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(server.start)
        try:
            yield
        finally:
            await asyncio.to_thread(server.close)

    async def collect(request: Request) -> Response:
        call = request.path_params.get("call")
        return await server.collect(request, None if call in ("batch", "b") else call)

    async def profile(request: Request) -> Response:
        refused = server.read_auth(request)
        if refused:
            return refused
        body = await asyncio.to_thread(server.profile, request.path_params["id"])
        if body is None:
            return JSONResponse({"message": "no profile for this id"}, status_code=404)
        return JSONResponse(body)

    async def decide_route(request: Request) -> Response:
        refused = server.read_auth(request)
        if refused:
            return refused
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return server._reject(400, "body is not valid JSON")
        if not isinstance(body, dict):
            return server._reject(400, "body must be a JSON object")
        web_id = next((body[k] for k in ("person_id", "userId", "anonymousId") if isinstance(body.get(k), str) and body[k]),
                      None)
        if web_id is None:
            return server._reject(400, "give person_id, userId or anonymousId")
        context = body.get("context") if isinstance(body.get("context"), dict) else {}
        result = decide(server.state, web_id, context, config.cart_intent, config.offers, server.emails_sent_7d)
        return JSONResponse(result)

    async def health(request: Request) -> Response:
        pub = server.state.published
        return JSONResponse({"status": "ok", "snapshot": pub.run_id if pub else None,
                             "events_accepted": server.stats["events_accepted"],
                             "events_applied_live": server.state.applied,
                             "nudges_sent": len(server.trigger.fired) if server.trigger else 0})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    # /v1/decide before the collector's /v1/{call}
    routes = [Route("/v1/decide", decide_route, methods=["POST"]),
              Route("/v1/profiles/{id:str}", profile, methods=["GET"]),
              Route("/v1/{call:str}", collect, methods=["POST"]),
              Route("/health", health, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)

    app.state.server = server
    return AccessLog(app)


class AccessLog:
    """ASGI wrapper: unknown paths get a 404 without reaching a route; every request is logged
    by its route's template, never its path (a profile's path holds a person's id)."""

    def __init__(self, app: Starlette):
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = route_of(scope["path"])
        if route is None:
            return await JSONResponse({"message": "not found"}, status_code=404)(scope, receive, send)
        status = [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            log.info("%s %s %d %.1fms", scope["method"], route, status[0], (time.perf_counter() - started) * 1000)
