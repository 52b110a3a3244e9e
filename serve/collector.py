"""Segment's HTTP Tracking API, as a collector receives it: bodies, limits, events -> log lines.

What an event *means* (event time, canonical names, person traits) is not decided here: the
batch loader derives it from the landed fields with ``core.segment_spec``, and the live state
runs the same module over the same dicts. The collector only checks what Segment's own API
checks, fills what the API fills (``messageId`` if absent, ``receivedAt``, the batch's
``sentAt`` / ``context``) and keeps the contract's fields.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
import zlib
from datetime import datetime, timezone

import orjson

from core.contracts import entity
from core.segment_spec import CALL_TYPES

WEB_FIELDS = tuple(f.name for f in entity("web", "events").fields)
# Fields a client may send that the contract does not hold, folded where the spec puts them.
_FOLDED_INTO_PROPERTIES = ("name", "category")


class Rejected(ValueError):
    """A request Segment's API would answer 400; the message is the reason (never a value)."""


def decode_body(raw: bytes, content_encoding: str | None, max_bytes: int) -> object:
    """The JSON body, gunzipped when sent so; refuses more than ``max_bytes`` once decoded."""
    if (content_encoding or "").lower().strip() in ("gzip", "x-gzip"):
        try:
            # bounded: a small gzip bomb must not expand past the limit in memory
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = d.decompress(raw, max_bytes + 1)
            if len(raw) > max_bytes or d.unconsumed_tail:
                raise Rejected(f"request body is over {max_bytes} bytes once decompressed")
        except (zlib.error, gzip.BadGzipFile, EOFError):
            raise Rejected("body is not valid gzip") from None
    if len(raw) > max_bytes:
        raise Rejected(f"request body is over {max_bytes} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("body is not valid JSON") from None


def basic_auth_key(header: str | None) -> str | None:
    """The key of ``Authorization: Basic base64(key:)`` (Segment's form) or ``Bearer key``."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user or None


def _check(event: dict, where: str) -> None:
    t = event.get("type")
    if t not in CALL_TYPES:
        raise Rejected(f"{where}: type must be one of {', '.join(CALL_TYPES)}")
    if not (event.get("userId") or event.get("anonymousId")):
        raise Rejected(f"{where}: userId or anonymousId is required")
    if t == "track" and not isinstance(event.get("event"), str):
        raise Rejected(f"{where}: a track call needs an event name")
    if t == "alias" and not event.get("previousId"):
        raise Rejected(f"{where}: an alias call needs previousId")
    if t == "group" and not event.get("groupId"):
        raise Rejected(f"{where}: a group call needs groupId")
    for key in ("traits", "properties", "context"):
        if event.get(key) is not None and not isinstance(event[key], dict):
            raise Rejected(f"{where}: {key} must be an object")
    for key in ("userId", "anonymousId", "messageId", "previousId", "groupId"):
        if event.get(key) is not None and not isinstance(event[key], (str, int)):
            raise Rejected(f"{where}: {key} must be a string")


def events_of(body: object, call: str | None, max_event_bytes: int) -> list[dict]:
    """The events of one request (``call`` = the path's call type, None for batch), checked,
    each with the request-level ``sentAt`` / ``context`` it inherits; a bad one rejects all
    (nothing of a request is half-acknowledged)."""
    if not isinstance(body, dict):
        raise Rejected("body must be a JSON object")
    if call is None and "batch" in body:
        batch = body["batch"]
        if not isinstance(batch, list):
            raise Rejected("batch must be a list of events")
        shared = {k: body[k] for k in ("sentAt", "context") if k in body}
    elif call is None:
        batch, shared = [body], {}  # /v1/b with one event
    else:
        batch, shared = [{**body, "type": body.get("type") or call}], {}
    events = []
    for i, e in enumerate(batch):
        where = f"batch[{i}]" if call is None else "event"
        if not isinstance(e, dict):
            raise Rejected(f"{where}: an event must be a JSON object")
        size = len(_dumps(e))
        if size > max_event_bytes:
            raise Rejected(f"{where}: event is over {max_event_bytes} bytes")
        _check(e, where)
        if "context" in shared and isinstance(shared["context"], dict):
            e = {**e, "context": {**shared["context"], **(e.get("context") or {})}}
        if "sentAt" in shared and not e.get("sentAt"):
            e = {**e, "sentAt": shared["sentAt"]}
        events.append(e)
    return events


def received_at_text(received_at: datetime) -> str:
    """``receivedAt`` as landed: ISO 8601, UTC, milliseconds (computed once per request)."""
    return received_at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId", "messageId")


def landed_record(event: dict, received_at: datetime | str) -> dict:
    """The contract's fields of one event, as the log and the landing file hold it."""
    record = {k: event[k] for k in WEB_FIELDS if event.get(k) is not None}
    for k in _ID_FIELDS:
        v = record.get(k)
        if v is not None and not isinstance(v, str):
            record[k] = str(v)
    if "messageId" not in record:
        record["messageId"] = "srv-" + uuid.uuid4().hex
    for k in _FOLDED_INTO_PROPERTIES:
        if isinstance(event.get(k), str):
            record["properties"] = {**{f: event[f] for f in _FOLDED_INTO_PROPERTIES if isinstance(event.get(f), str)},
                                    **(record.get("properties") or {})}
            break
    record["receivedAt"] = received_at if isinstance(received_at, str) else received_at_text(received_at)
    return record


def _dumps(obj) -> bytes:
    """Compact UTF-8 JSON; orjson (a tenth of json's cost), json for what orjson refuses
    (integers beyond 64 bits, which json.loads accepts)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def log_line(record: dict) -> bytes:
    return _dumps(record) + b"\n"
