"""Requests checked against the vendors' own API definitions (trimmed copies of Klaviyo's and
Mailchimp's OpenAPI files in tests/fixtures/vendor_specs/, see the README there).

Used by the contract tests on every request a destination builds, and by the local servers
on every request they receive, so neither can drift from what the real API accepts.

Two rules the OpenAPI files do not spell out but the APIs enforce:
- an object that declares its properties refuses others (Klaviyo answers "'x' is not a valid
  field for the resource"), so such objects are closed here;
- Klaviyo retires a revision two years after its release date: a retired or unknown future
  revision is refused.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import date
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from core.settings.activation import revision_retires

SPEC_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vendor_specs"


def _openapi_to_jsonschema(node):
    """OpenAPI 3.0 ``nullable`` as JSON Schema, and declared-property objects closed."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()
           if k not in ("nullable", "example", "examples", "description", "title")}
    if "properties" in out:
        out["properties"] = {k: _openapi_to_jsonschema(v) for k, v in node["properties"].items()}
        out.setdefault("additionalProperties", False)
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Spec:
    def __init__(self, name: str):
        raw = json.loads((SPEC_DIR / f"{name}.json").read_text())
        self.name = name
        self.source = raw["source"]
        self.revision = raw["source"].get("revision")
        schemas = {k: _openapi_to_jsonschema(v) for k, v in raw["components"]["schemas"].items()}
        self.ops = []
        for op in raw["operations"]:
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(op["path"])) + "/?$"
            body = None
            if op["body"] is not None:
                body = _openapi_to_jsonschema(copy.deepcopy(op["body"]))
                body["components"] = {"schemas": schemas}
            self.ops.append((op["method"], re.compile(pattern), op, body))

    def find(self, method: str, path: str):
        known = False
        for m, pattern, op, body in self.ops:
            if pattern.match(path):
                known = True
                if m == method:
                    return op, body
        return None, known

    def check(self, method: str, url: str, headers, body, today: date | None = None) -> str | None:
        """Why the real API would refuse this request, or None when it matches the definition."""
        from jsonschema import Draft202012Validator

        parts = urlsplit(url)
        op, body_schema = self.find(method, parts.path)
        if op is None:
            return f"{method} {parts.path}: {'method not allowed' if body_schema else 'no such endpoint'} in {self.name}'s API"
        lower = {k.lower(): v for k, v in dict(headers or {}).items()}
        for p in op["parameters"]:
            if p["in"] == "header" and p.get("required") and not lower.get(p["name"].lower()):
                return f"{op['operationId']}: missing required header {p['name']!r}"
        if any(p["in"] == "header" and p["name"] == "revision" for p in op["parameters"]):
            why = self.check_revision(lower.get("revision"), today)
            if why:
                return f"{op['operationId']}: {why}"
        unknown = sorted(set(parse_qs(parts.query)) - set(op["query"]))
        if unknown:
            return f"{op['operationId']}: unknown query parameter(s) {', '.join(unknown)}"
        if op["body"] is None:
            return None
        if body is None:
            return f"{op['operationId']}: a request body is required" if op["body_required"] else None
        if op["content_type"] and "json" in op["content_type"]:
            ctype = lower.get("content-type", "")
            if op["content_type"] not in ctype:
                return f"{op['operationId']}: content-type must be {op['content_type']}, not {ctype or 'none'}"
        errors = sorted(Draft202012Validator(body_schema).iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = "/" + "/".join(str(p) for p in e.absolute_path)
            return f"{op['operationId']}: body {where}: {e.message}"
        return None

    def check_revision(self, revision: str | None, today: date | None = None) -> str | None:
        if not revision:
            return "missing revision header"
        try:
            retires = revision_retires(revision)
        except ValueError as e:
            return str(e)
        if self.revision and revision.split(".")[0] > self.revision:
            return f"revision {revision} does not exist (the newest is {self.revision})"
        if retires <= (today or date.today()):
            return f"revision {revision} was retired on {retires.isoformat()}"
        return None


@lru_cache(maxsize=None)
def spec(name: str) -> Spec:
    return Spec(name)
