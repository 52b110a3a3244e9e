"""`cdp serve`'s OpenAPI definition, fuzzed with schemathesis against the running server: no
request, however malformed, gets a server error, and every answer is one the definition
declares (status, content type, body schema)."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.openapi import from_dict
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.config import load_config
from serve.openapi import OPENAPI
from tests.serve_world import READ_KEY, WRITE_KEY, ServerThread, publish_world, write_project

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_openapi_definition_holds_under_fuzzing(tmp_path):
    config = load_config(write_project(tmp_path / "p"))
    publish_world(config.published_dir, persons={"P1": {"anon": "anon-1", "consent": {"email_marketing": "granted"},
                                                        "cart": ("c-1", 10.0, 0.1, "on_the_fence"),
                                                        "offer": ("cart_reminder", "email", False)}})
    schema = from_dict(OPENAPI)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == 11
    with ServerThread(config) as srv:
        for op in operations:
            good = _basic(READ_KEY if op.path in ("/v1/profiles/{id}", "/v1/decide") else WRITE_KEY)

            @settings(max_examples=4, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(),
                   headers=st.sampled_from([{"Authorization": good}, {"Authorization": _basic("nope")}, {}]))
            def fuzz(case, headers):
                case.call_and_validate(base_url=srv.url, headers=headers, checks=CHECKS)

            fuzz()
