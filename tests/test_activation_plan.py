"""The diff on its own: what each mode sends, given what the source wants and what was delivered."""

import json

from activation.plan import make_plan
from activation.source import SourceRead, Wanted
from activation.state import Delivered
from core.settings.activation import SyncConfig


def _sync(mode: str) -> SyncConfig:
    return SyncConfig.model_validate({
        "name": "s", "source": {"segment": "vip"}, "mode": mode, "consent": {"channel": "email_marketing"},
        "destination": {"type": "mailchimp", "base_url": "http://x", "api_key_env": "K", "list_id": "A"}})


def _src(wanted: dict[str, tuple[str, str]], consented=None, known=None, merged=None) -> SourceRead:
    w = {p: Wanted(p, k, h) for p, (k, h) in wanted.items()}
    return SourceRead(w, set(), 0, 0, set(known if known is not None else w), merged or {},
                      set(consented if consented is not None else w), "snap")


def _d(pid, key, h, in_audience=True, rejected=None) -> Delivered:
    return Delivered(pid, key, None, h, in_audience, rejected)


def _actions(plan):
    return sorted((c.action, c.person_id, c.reason) for c in plan.changes)


DELIVERED = {"A": _d("A", "a@x.io", "h1"), "B": _d("B", "b@x.io", "h1"), "C": _d("C", "c@x.io", "h1")}


def test_modes_decide_updates_and_leavers():
    # A unchanged, B changed, C left the segment, D is new
    src = _src({"A": ("a@x.io", "h1"), "B": ("b@x.io", "h2"), "D": ("d@x.io", "h1")}, known={"A", "B", "C", "D"},
               consented={"A", "B", "C", "D"})
    assert _actions(make_plan(_sync("upsert"), src, DELIVERED)) == [
        ("upsert", "B", "changed"), ("upsert", "D", "new")]
    assert _actions(make_plan(_sync("mirror"), src, DELIVERED)) == [
        ("remove", "C", "left_source"), ("upsert", "B", "changed"), ("upsert", "D", "new")]
    assert _actions(make_plan(_sync("add_only"), src, DELIVERED)) == [("upsert", "D", "new")]


def test_consent_withdrawn_removes_in_every_mode_and_rejections_wait_for_a_change():
    src = _src({"A": ("a@x.io", "h1")}, consented={"A"}, known={"A", "B", "C"})
    delivered = {**DELIVERED, "C": _d("C", "c@x.io", "h1", in_audience=False)}  # already removed once
    for mode in ("upsert", "mirror", "add_only"):
        assert _actions(make_plan(_sync(mode), src, delivered)) == [("remove", "B", "no_consent")]
    refused = {"A": _d("A", "a@x.io", "h1", in_audience=False, rejected="invalid")}
    plan = make_plan(_sync("upsert"), _src({"A": ("a@x.io", "h1")}), refused)
    assert plan.changes == [] and plan.skipped["rejected_unchanged"] == 1
    assert _actions(make_plan(_sync("upsert"), _src({"A": ("a@x.io", "h9")}), refused)) == [("upsert", "A", "changed")]


def test_merges_and_key_changes_leave_one_profile():
    # B merged into A with the same email: A takes over B's row, nothing is sent
    plan = make_plan(_sync("mirror"), _src({"A": ("b@x.io", "h1")}, merged={"B": "A"}), {"B": DELIVERED["B"]})
    assert plan.changes == [] and [(p, d.person_id) for p, d in plan.takeovers] == [("A", "B")]
    # B merged into A with a different email: B's profile is merged into A's (after A's upsert)
    plan = make_plan(_sync("upsert"), _src({"A": ("a@x.io", "h1")}, merged={"B": "A"}),
                     {"A": DELIVERED["A"], "B": DELIVERED["B"]})
    assert [(c.action, c.person_id, c.reason, c.into_key) for c in plan.changes] == [("merge", "B", "merged", "a@x.io")]
    # A's email changed: the new profile is added, then the old one merged into it
    plan = make_plan(_sync("upsert"), _src({"A": ("a2@x.io", "h1")}), {"A": DELIVERED["A"]})
    assert [(c.action, c.key, c.reason, c.into_key) for c in plan.changes] == [
        ("upsert", "a2@x.io", "new", None), ("merge", "a@x.io", "key_changed", "a2@x.io")]
    # a person who vanished without a merge record is retired too
    plan = make_plan(_sync("upsert"), _src({}, known=set()), {"C": DELIVERED["C"]})
    assert _actions(plan) == [("retire", "C", "vanished")]


def test_klaviyo_import_jobs_respect_the_byte_limit(monkeypatch):
    from activation.destinations.klaviyo import KlaviyoDestination
    from activation.plan import Change
    from core.settings.activation import Klaviyo, Retry

    monkeypatch.setenv("K", "pk")
    cfg = Klaviyo.model_validate({"type": "klaviyo", "api_key_env": "K", "list_id": "L", "batch_size": 100,
                                  "max_request_bytes": 10_000})
    dest = KlaviyoDestination("s", cfg, Retry(), "email")
    changes = [Change("upsert", f"P{i}", f"p{i}@x.io", {"first_name": "N" * 200, "tier": i}, "h", None, "new")
               for i in range(250)]
    batches = list(dest._batches(changes))
    assert all(len(body) <= 10_000 for _, body in batches)
    assert [c.person_id for b, _ in batches for c in b] == [c.person_id for c in changes]
    first = json.loads(batches[0][1])["data"]
    assert first["relationships"]["lists"]["data"] == [{"type": "list", "id": "L"}]
    assert first["attributes"]["profiles"]["data"][0]["attributes"] == {
        "email": "p0@x.io", "first_name": "N" * 200, "properties": {"tier": 0}}
