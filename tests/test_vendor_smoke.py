"""Against the real Klaviyo / Mailchimp APIs, only when their keys are in the environment
(skipped otherwise, as in CI; everything else runs against the spec-validated local servers).

    KLAVIYO_API_KEY=pk_... KLAVIYO_LIST_ID=Xy12Ab \\
    MAILCHIMP_API_KEY=...-us21 MAILCHIMP_LIST_ID=abc123 \\
        .venv/bin/python -m pytest -s tests/test_vendor_smoke.py

Each test adds one throw-away contact (tessera-smoke+<random>@example.com), changes it,
withdraws its consent, then erases it, printing every step; nothing else in the account is touched.
"""

from __future__ import annotations

import os
import secrets

import pytest

from activation.destinations.base import ErasureTarget
from activation.plan import Change
from core.settings.activation import Klaviyo, Mailchimp, Retry


def _needs(*names):
    missing = [n for n in names if not os.environ.get(n)]
    return pytest.mark.skipif(bool(missing), reason=f"real-API smoke test: set {', '.join(missing)} to run it")


def _email() -> str:
    return f"tessera-smoke+{secrets.token_hex(4)}@example.com"


@_needs("KLAVIYO_API_KEY", "KLAVIYO_LIST_ID")
def test_klaviyo_real_api_add_change_unsubscribe_erase():
    from activation.destinations.klaviyo import KlaviyoDestination

    cfg = Klaviyo.model_validate({"type": "klaviyo", "api_key_env": "KLAVIYO_API_KEY",
                                  "list_id": os.environ["KLAVIYO_LIST_ID"], "job_poll_interval_s": 2})
    dest = KlaviyoDestination("smoke", cfg, Retry(), "email", "email_marketing")
    email = _email()
    add = Change("upsert", "SMOKE1", email, {"first_name": "Smoke", "city": "Leeds", "tier": "test"}, "h1", None, "new")
    for out in dest.deliver("upsert", [add]):
        print("klaviyo import + subscribe:", [(o.ok, o.reason) for o in out])
        assert all(o.ok for o in out)
    change = Change("upsert", "SMOKE1", email, {"first_name": "Smoked"}, "h2", None, "changed", was_in_audience=True)
    for out in dest.deliver("upsert", [change]):
        print("klaviyo update:", [(o.ok, o.reason) for o in out])
    gone = Change("remove", "SMOKE1", email, {}, "h2", None, "no_consent", contact=email)
    for out in dest.deliver("remove", [gone]):
        print("klaviyo unsubscribe:", [(o.ok, o.reason) for o in out])
    for res in dest.erase([ErasureTarget("SMOKE1", email, None, email)]):
        print("klaviyo deletion job:", [(ok, reason) for _, ok, reason in res])
        assert all(ok for _, ok, _ in res)
    print(f"klaviyo: {dest.requests} requests, revision {cfg.revision}")
    dest.close()


@_needs("MAILCHIMP_API_KEY", "MAILCHIMP_LIST_ID")
def test_mailchimp_real_api_add_change_unsubscribe_erase():
    from activation.destinations.mailchimp import MailchimpDestination

    dc = os.environ["MAILCHIMP_API_KEY"].rsplit("-", 1)[-1]
    cfg = Mailchimp.model_validate({"type": "mailchimp", "api_key_env": "MAILCHIMP_API_KEY",
                                    "list_id": os.environ["MAILCHIMP_LIST_ID"], "base_url": f"https://{dc}.api.mailchimp.com",
                                    "status_if_new": "transactional"})
    dest = MailchimpDestination("smoke", cfg, Retry(), ["FNAME"])
    email = _email()
    for out in dest.deliver("upsert", [Change("upsert", "SMOKE1", email, {"FNAME": "Smoke"}, "h1", None, "new")]):
        print("mailchimp batch upsert:", [(o.ok, o.reason) for o in out])
    for out in dest.deliver("remove", [Change("remove", "SMOKE1", email, {}, "h1", None, "no_consent")]):
        print("mailchimp unsubscribe:", [(o.ok, o.reason) for o in out])
    for res in dest.erase([ErasureTarget("SMOKE1", email, None)]):
        print("mailchimp delete-permanent:", [(ok, reason) for _, ok, reason in res])
        assert all(ok for _, ok, _ in res)
    print(f"mailchimp: {dest.requests} requests")
    dest.close()
