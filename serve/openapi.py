"""The OpenAPI definition of ``cdp serve`` (served at /openapi.json; fuzzed by schemathesis)."""

from __future__ import annotations

from core.segment_spec import CALL_TYPES

_ID = {"type": "string", "minLength": 1, "maxLength": 200}
_EVENT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": list(CALL_TYPES)},
        "messageId": _ID,
        "userId": _ID,
        "anonymousId": _ID,
        "event": {"type": "string"},
        "name": {"type": "string"},
        "previousId": _ID,
        "groupId": _ID,
        "traits": {"type": "object"},
        "properties": {"type": "object"},
        "context": {"type": "object"},
        "timestamp": {"type": "string", "format": "date-time"},
        "originalTimestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
    },
}
_RESULT = {"type": "object", "required": ["success"],
           "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}}}
_ERROR = {"description": "Refused; `message` says why.",
          "content": {"application/json": {"schema": _RESULT}}}
_COLLECT_RESPONSES = {
    "200": {"description": "Stored durably (fsync'd); a re-delivered messageId is accepted and not stored twice.",
            "content": {"application/json": {"schema": _RESULT}}},
    "400": _ERROR, "401": _ERROR, "429": _ERROR, "503": _ERROR,
}
_NUMBER = {"type": "number", "nullable": True}
_TEXT = {"type": "string", "nullable": True}
# serve/decide.py::cart_intent; null when the person has no open cart
_CART_INTENT = {
    "type": "object", "nullable": True, "required": ["reason"],
    "description": "Cart intent of the open cart. reason: cart_intent_live_model (the published model run on the "
                   "live session's features), cart_intent_batch_score / cart_intent_value_cohort (until the model is "
                   "loaded), no_published_model.",
    "properties": {
        "reason": {"type": "string", "enum": ["cart_intent_live_model", "cart_intent_batch_score",
                                              "cart_intent_value_cohort", "no_published_model"]},
        "cart_id": _TEXT, "cart_value": _NUMBER, "purchase_probability": _NUMBER,
        "intent_group": {"type": "string", "nullable": True, "enum": ["likely", "on_the_fence", "unlikely", None]},
        "expected_return_hours": _NUMBER, "model_version": _TEXT,
        "features": {"type": "string", "description": "Where the live model's features came from: batch_cart, "
                     "batch_cart_live, live_cart, live_cart_history (a person the batch had no open cart for, "
                     "on their history at the cutoff) or live_cart_no_batch_history (nothing before the "
                     "cutoff: the no-history defaults) (+ _given_value when the request "
                     "gave the cart's value)."}}}
_WRITE = [{"writeKey": []}]
_READ = [{"readKeyBasic": []}, {"readKeyBearer": []}]


def _call(call: str) -> dict:
    schema = {**_EVENT, "required": []}
    return {"post": {"summary": f"Segment {call} call", "security": _WRITE, "tags": ["collector"],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                     "responses": _COLLECT_RESPONSES}}


_BATCH = {"post": {"summary": "A batch of calls (Segment's /v1/batch; /v1/b is the same)", "security": _WRITE,
                   "tags": ["collector"],
                   "requestBody": {"required": True, "content": {"application/json": {"schema": {
                       "type": "object", "required": ["batch"],
                       "properties": {"batch": {"type": "array", "items": _EVENT}, "sentAt": {"type": "string"},
                                      "context": {"type": "object"}}}}}},
                   "responses": _COLLECT_RESPONSES}}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "Tessera CDP real-time API (cdp serve)", "version": "1"},
    "components": {"securitySchemes": {
        "writeKey": {"type": "http", "scheme": "basic", "description": "Segment's form: the write key as user name."},
        "readKeyBasic": {"type": "http", "scheme": "basic"},
        "readKeyBearer": {"type": "http", "scheme": "bearer"},
    }},
    "paths": {
        **{f"/v1/{c}": _call(c) for c in CALL_TYPES},
        "/v1/batch": _BATCH,
        "/v1/b": _BATCH,
        "/v1/profiles/{id}": {"get": {
            "summary": "A person's profile: published traits, segments, consent, scores, recommendations, live session",
            "security": _READ, "tags": ["profiles"],
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": _ID,
                            "description": "A person_id, userId or anonymousId."}],
            "responses": {
                "200": {"description": "The profile", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["person_id", "provisional", "consent"],
                    "properties": {"person_id": {"type": "string", "nullable": True},
                                   "provisional": {"type": "boolean"}, "traits": {"type": "object"},
                                   "segments": {"type": "array", "items": {"type": "string"}},
                                   "consent": {"type": "object"}, "scores": {"type": "object"},
                                   "recommendations": {"type": "array"},
                                   "live": {"type": "object", "nullable": True},
                                   "snapshot": {"type": "string", "nullable": True}}}}}},
                "401": _ERROR, "404": {"description": "No profile for this id",
                                       "content": {"application/json": {"schema": {"type": "object"}}}},
                "429": _ERROR}}},
        "/v1/decide": {"post": {
            "summary": "Cart intent and the next-best-offer for a person, now",
            "security": _READ, "tags": ["decisions"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"person_id": _ID, "userId": _ID, "anonymousId": _ID,
                               "context": {"type": "object", "properties": {
                                   "page": {"type": "object"},
                                   "cart": {"type": "object", "properties": {"value": {"type": "number"}}}}}}}}}},
            "responses": {
                "200": {"description": "The decision", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["provisional", "next_best_offer"],
                    "properties": {"person_id": {"type": "string", "nullable": True},
                                   "provisional": {"type": "boolean"},
                                   "cart_intent": _CART_INTENT,
                                   "next_best_offer": {"type": "object", "required": ["offer", "channel"]},
                                   "snapshot": {"type": "string", "nullable": True},
                                   "took_ms": {"type": "number"}}}}}},
                "400": _ERROR, "401": _ERROR, "429": _ERROR}}},
        "/health": {"get": {"summary": "Liveness and counters", "security": [], "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    },
}
