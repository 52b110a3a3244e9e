"""Running a sync: read the published snapshot, diff against the sync state, deliver in the
destination's batches, and commit each acknowledged batch to the state with its log rows.

If the destination stops answering (bounded retries exhausted) or refuses a whole request (a
4xx such as a mistyped list id), the run stops: every change not acknowledged is recorded as
failed and stays pending, and the next run's diff sends it again.

Exactly once: nothing acknowledged is sent twice, because it is committed before the next
batch; and each batch's intent is committed before it is sent, so a batch that reached the
destination but whose acknowledgement was lost (an answer dropped, or this process killed) is
reconciled first - the destination is asked what it holds - instead of being applied again.
A run left 'running' by a killed process is marked interrupted by the next one.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Callable

from activation.destinations.base import Destination, ErasureTarget, MissingSecret, Outcome
from activation.destinations.files import FilesDestination
from activation.destinations.klaviyo import KlaviyoDestination
from activation.destinations.mailchimp import MailchimpDestination
from activation.destinations.webhook import WebhookDestination
from activation.http import DeliveryFailed
from activation.nudges import NudgeLog, nudges_path
from activation.plan import ACTION_ORDER, Change, Plan, make_plan
from activation.source import SourceError, fetch_fields, read_source
from activation.state import SyncState, state_path
from core.pii import mask_pii, mask_value
from core.settings.activation import SyncConfig, revision_retires
from core.snapshots import PublishError, open_current, read_manifest

log = logging.getLogger("tessera.activation")


class SyncError(RuntimeError):
    """A sync cannot run as configured; the message says what to fix."""


@dataclass
class SyncReport:
    sync: str
    run_id: str
    destination: str
    snapshot: str | None
    dry_run: bool
    planned: dict[str, int]
    skipped: dict[str, int]
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0
    seconds: float = 0.0
    error: str | None = None
    sample: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recovered_runs: int = 0       # runs a killed process left 'running', marked interrupted
    reconciled: int = 0           # rows found applied at the destination after a lost acknowledgement

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0

    def to_dict(self) -> dict:
        return asdict(self)


def get_sync(config, name: str) -> SyncConfig:
    for s in config.syncs:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in config.syncs) or "(none configured)"
    raise SyncError(f"no sync named {name!r} in {config.root / 'cdp.yaml'}; syncs: {known}")


def make_destination(config, sync: SyncConfig, run_id: str) -> Destination:
    d = sync.destination
    if d.type == "klaviyo":
        return KlaviyoDestination(sync.name, d, sync.retry, sync.identifier,
                                  sync.consent.channel if sync.consent else None)
    if d.type == "mailchimp":
        return MailchimpDestination(sync.name, d, sync.retry, list(sync.fields))
    if d.type == "webhook":
        return WebhookDestination(sync.name, d, sync.retry)
    return FilesDestination(sync.name, d, config.root, run_id, list(sync.fields))


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


NUDGES = ("upsert", "add_membership")  # the actions that reach a person (a frequency cap counts them)


def plan_sync(config, sync: SyncConfig, state: SyncState, nudges: NudgeLog | None = None) -> Plan:
    published = config.published_dir
    try:
        con = open_current(published)
    except PublishError as e:
        raise SyncError(str(e)) from None
    try:
        # Experiments attached to this sync: their holdout arms are never sent (cdp.yaml experiments[].syncs).
        holding_out = [e.name for e in config.experiments if sync.name in e.syncs]
        src = read_source(sync, con, read_manifest(published).get("current"), holdout_experiments=holding_out)
        plan = make_plan(sync, src, state.delivered(sync.name))
        sending = [c.person_id for c in plan.changes if c.action in ("upsert", "add_membership")]
        fields = fetch_fields(sync, con, sending, of_total=len(src.wanted))
    except SourceError as e:
        raise SyncError(str(e)) from None
    finally:
        con.close()
    for c in plan.changes:
        if c.action in ("upsert", "add_membership"):
            c.fields.update(fields.get(c.person_id, {}))  # each change owns its dict
            for dropped in src.shared.get(c.person_id, ()):
                c.fields.pop(dropped, None)  # shared with another person: it would merge them
    plan.snapshot = src.snapshot
    if sync.frequency_cap is not None and nudges is not None:
        cap = sync.frequency_cap
        adding = [c.person_id for c in plan.changes if c.action in NUDGES]
        capped = nudges.at_cap(adding, time.time() - cap.days * 86400, sync.consent.channel, cap.max)
        if capped:  # not delivered now, so still pending for a later run
            plan.changes = [c for c in plan.changes if not (c.action in NUDGES and c.person_id in capped)]
            plan.skipped["frequency_capped"] += len(capped)
    return plan


def revision_warning(sync: SyncConfig, today: date | None = None) -> str | None:
    """Klaviyo retires a revision two years after release: warn six months ahead."""
    d = sync.destination
    if d.type != "klaviyo":
        return None
    retires = revision_retires(d.revision)
    today = today or date.today()
    if retires - today <= timedelta(days=182):
        verb = "was retired" if retires <= today else "retires"
        return (f"syncs[{sync.name}].destination.revision {d.revision} {verb} on {retires.isoformat()} "
                "(Klaviyo retires revisions two years after release); move to a current revision")
    return None


def _sample(plan: Plan, personal_key: bool = True, n: int = 5) -> list[dict]:
    out, per = [], {}
    for c in plan.changes:
        if per.get(c.action, 0) >= n:
            continue
        per[c.action] = per.get(c.action, 0) + 1
        out.append({"action": c.action, "reason": c.reason, "person_id": c.person_id,
                    "key": mask_value(c.key) if personal_key else c.key,
                    "fields": sorted(c.fields)})
    return out


def _commit(state: SyncState, sync: str, run_id: str, action: str, outcomes: list[Outcome],
            attempts: dict[str, int]) -> tuple[int, int]:
    upserts, deletes, logs, cleared = [], [], [], []
    sent = rejected = 0
    for o in outcomes:
        c = o.change
        attempt = attempts.get(c.person_id, 0) + 1
        dest_id = o.dest_id or c.dest_id
        cleared.append(c.person_id)
        if o.ok:
            sent += 1
            logs.append((c.person_id, action, "sent", attempt, None))
            contact = o.contact or c.contact
            if action in ("retire", "merge"):
                deletes.append((c.person_id, c.key))
            elif action == "remove":
                upserts.append((c.person_id, c.key, dest_id, c.field_hash, False, None, contact))
            else:
                upserts.append((c.person_id, c.key, dest_id, c.field_hash, True, None, contact))
        else:
            rejected += 1
            logs.append((c.person_id, action, "rejected", attempt, mask_pii(o.reason)))
            if action in ("upsert", "add_membership"):
                # Remember what was refused, so it is not resent until the person's fields change.
                upserts.append((c.person_id, c.key, dest_id, c.field_hash, c.was_in_audience,
                                mask_pii(o.reason) or "rejected", c.contact))
        if c.takes_over and action in ("upsert", "add_membership"):
            deletes.append((c.takes_over, c.key))
    state.commit_batch(sync, run_id, upserts, deletes, logs, cleared, [])
    return sent, rejected


def run_sync(config, name: str, dry_run: bool = False,
             progress: Callable[[str], None] | None = None) -> SyncReport:
    """Run one sync (or, with ``dry_run``, only plan it). Returns what happened."""
    sync = get_sync(config, name)
    say = progress or (lambda m: log.info(m))
    run_id = _new_run_id()
    t0 = time.perf_counter()
    capped = sync.frequency_cap is not None and (not dry_run or nudges_path(config.root).exists())
    nudges = NudgeLog(nudges_path(config.root)) if capped else None
    try:
        return _run_sync(config, sync, dry_run, say, run_id, t0, nudges)
    finally:
        if nudges is not None:
            nudges.close()


def _record_nudges(nudges: NudgeLog | None, sync: SyncConfig, run_id: str, action: str, outcomes) -> None:
    """Deliveries that reached a person, into the nudge log the frequency caps count."""
    if nudges is None or action not in NUDGES:
        return
    at = time.time()
    nudges.record([(f"sync:{sync.name}", f"{run_id}:{o.change.person_id}", o.change.person_id, sync.consent.channel, at)
                   for o in outcomes if o.ok])


def _run_sync(config, sync: SyncConfig, dry_run: bool, say, run_id: str, t0: float,
              nudges: NudgeLog | None) -> SyncReport:
    with SyncState(state_path(config.root), read_only=dry_run) as state:
        plan = plan_sync(config, sync, state, nudges)
        report = SyncReport(sync.name, run_id, sync.destination.type, plan.snapshot, dry_run, plan.counts(),
                            dict(plan.skipped), sample=_sample(plan, sync.identifier != "person_id"))
        warning = revision_warning(sync)
        if warning:
            report.warnings.append(warning)
            log.warning(warning)
        if dry_run:
            report.seconds = round(time.perf_counter() - t0, 3)
            return report
        try:
            dest = make_destination(config, sync, run_id)
        except MissingSecret as e:
            raise SyncError(str(e)) from None
        attempts = state.pending(sync.name)
        report.recovered_runs = state.recover_stale_runs(sync.name)
        if report.recovered_runs:
            say(f"sync {sync.name}: {report.recovered_runs} earlier run(s) were killed mid-run; marked interrupted, "
                "their unacknowledged batches are reconciled with the destination")
        intents = state.intents(sync.name)
        state.start_run(sync.name, run_id, plan.snapshot, len(plan.changes))
        dest.intend = lambda action, changes: state.record_intent(sync.name, run_id, action, changes)
        if plan.takeovers:  # merges where the survivor already holds the profile: state only
            state.commit_batch(sync.name, run_id,
                               [(pid, d.dest_key, d.dest_id, d.field_hash, d.in_audience, d.rejected_reason, d.contact)
                                for pid, d in plan.takeovers],
                               [(d.person_id, d.dest_key) for _, d in plan.takeovers], [], [], [])
        say(f"sync {sync.name}: {report.planned} to {sync.destination.type} (snapshot {plan.snapshot})")
        remaining: list[Change] = []
        try:
            for action in ACTION_ORDER:
                todo = plan.by_action(action)
                if not todo:
                    continue
                done: set[str] = set()
                try:
                    # sent before, never acknowledged: what the destination already holds is done
                    maybe = [c for c in todo if intents.get(c.person_id, (None, None))[1] == c.field_hash
                             and intents[c.person_id][0] == action]
                    held = dest.held(action, maybe) if maybe else []
                    if held:
                        s, r = _commit(state, sync.name, run_id, action, held, attempts)
                        _record_nudges(nudges, sync, run_id, action, held)
                        report.sent += s
                        report.reconciled += len(held)
                        done.update(o.change.person_id for o in held)
                        todo = [c for c in todo if c.person_id not in done]
                    for outcomes in (dest.deliver(action, todo) if todo else ()):
                        s, r = _commit(state, sync.name, run_id, action, outcomes, attempts)
                        _record_nudges(nudges, sync, run_id, action, outcomes)
                        report.sent += s
                        report.rejected += r
                        done.update(o.change.person_id for o in outcomes)
                except DeliveryFailed as e:
                    report.error = mask_pii(str(e))  # a destination's error may quote the rows
                    remaining = [c for c in todo if c.person_id not in done]
                    later = ACTION_ORDER[ACTION_ORDER.index(action) + 1:]
                    remaining += [c for a in later for c in plan.by_action(a)]
                    break
        finally:
            if remaining:
                reason = f"not acknowledged: {report.error}"
                state.commit_batch(sync.name, run_id, [], [],
                                   [(c.person_id, c.action, "failed", attempts.get(c.person_id, 0) + 1, reason)
                                    for c in remaining], [],
                                   [(c.person_id, c.action, reason) for c in remaining])
                report.failed = len(remaining)
            report.requests = dest.requests
            dest.close()
            state.finish_run(sync.name, run_id, report.sent, report.rejected, report.failed, report.requests)
    report.seconds = round(time.perf_counter() - t0, 3)
    say(f"sync {sync.name}: sent {report.sent}, rejected {report.rejected}, failed {report.failed} "
        f"in {report.requests} requests, {report.seconds:.1f}s")
    if plan.skipped.get("shared_identifier"):
        say(f"sync {sync.name}: {plan.skipped['shared_identifier']} person(s) share a mapped identifier (e.g. a "
            "household phone) with another person; that field was not sent for them")
    return report


def run_all(config, dry_run: bool = False, progress=None) -> list[SyncReport]:
    return [run_sync(config, s.name, dry_run=dry_run, progress=progress) for s in config.syncs if s.enabled]


def erase_persons(config, person_ids) -> dict:
    """Delete these persons from every destination any sync delivered them to, then purge them
    from the sync state and the sync log. Returns a report of where each was found and what
    was removed. A destination that cannot be reached leaves those persons' state in place (so
    a second call retries them) and is listed under ``failed``."""
    person_ids = sorted({str(p) for p in person_ids})
    report = {"persons": len(person_ids), "destinations": [], "failed": [], "state_rows_removed": {}}
    if not person_ids:
        return report
    keep: set[str] = set()
    configured = {s.name: s for s in config.syncs}
    with SyncState(state_path(config.root)) as state:
        synced = [r[0] for r in state.con.execute(
            "SELECT DISTINCT sync FROM sync_state WHERE list_contains(?, person_id)", [person_ids]).fetchall()]
        for name in sorted(synced):
            delivered = state.delivered(name)
            targets = [ErasureTarget(p, delivered[p].dest_key, delivered[p].dest_id, delivered[p].contact)
                       for p in person_ids if p in delivered]
            sync = configured.get(name)
            if sync is None:
                report["failed"].append({"sync": name, "reason": "sync no longer in the config; its destination "
                                         "was not contacted", "persons": [t.person_id for t in targets]})
                continue
            entry = {"sync": name, "destination": sync.destination.type, "deleted": [], "failed": []}
            try:
                dest = make_destination(config, sync, "erasure-" + _new_run_id())
                try:
                    for results in dest.erase(targets):
                        for t, ok, reason in results:
                            (entry["deleted"] if ok else entry["failed"]).append(
                                t.person_id if ok else {"person_id": t.person_id, "reason": reason})
                finally:
                    dest.close()
            except (DeliveryFailed, MissingSecret) as e:
                done = set(entry["deleted"])
                entry["failed"] += [{"person_id": t.person_id, "reason": str(e)} for t in targets
                                    if t.person_id not in done]
            keep |= {f["person_id"] for f in entry["failed"]}
            report["destinations"].append(entry)
            if entry["failed"]:
                report["failed"].append({"sync": name, "persons": [f["person_id"] for f in entry["failed"]]})
        purge = [p for p in person_ids if p not in keep]
        report["state_rows_removed"] = state.purge_persons(purge) if purge else {}
    report["complete"] = not report["failed"]
    return report
