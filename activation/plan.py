"""The diff: what the destination should get this run, from what the source wants and what the
sync state says was delivered.

Per person, one of:
  upsert          new to the destination, or its fields changed (add_only: new only)
  add_membership  fields unchanged but not in the list/audience any more (e.g. consent given again)
  remove          out of the list/audience: consent withdrawn (every mode) or left the source (mirror)
  retire          a profile goes: the person vanished (erased, or split up)
  merge           a duplicate profile goes into the surviving one: the person was merged into
                  another, or their key changed (Klaviyo merges profiles; others retire the old one)

A merged-away person whose destination key now belongs to the survivor is not a change at all:
the survivor takes over the state row (``takes_over``), so the destination keeps one profile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from activation.source import SourceRead
from activation.state import Delivered
from core.settings.activation import SyncConfig

# merges run after upserts: the surviving profile must exist before another is merged into it
ACTION_ORDER = ("retire", "remove", "upsert", "add_membership", "merge")


@dataclass(frozen=True)
class Change:
    action: str
    person_id: str
    key: str
    fields: dict                  # filled in from the snapshot for upserts (see sync.plan_sync)
    field_hash: str | None
    dest_id: str | None
    reason: str                   # new | changed | rejoined | no_consent | left_source | merged | vanished | key_changed
    takes_over: str | None = None  # person_id whose state row this person inherits
    was_in_audience: bool = False
    contact: str | None = None     # email / phone the destination addresses consent by (from the state)
    into_key: str | None = None    # merge: the surviving profile's key


@dataclass
class Plan:
    sync: str
    changes: list[Change]
    takeovers: list[tuple[str, Delivered]]  # (new person_id, inherited row) with nothing to send
    skipped: Counter = field(default_factory=Counter)
    snapshot: str | None = None

    def by_action(self, action: str) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    def counts(self) -> dict[str, int]:
        c = Counter()
        for ch in self.changes:
            name = {"upsert": "additions" if ch.reason == "new" else "updates",
                    "add_membership": "additions", "remove": "removals", "retire": "retirements",
                    "merge": "retirements"}[ch.action]
            c[name] += 1
        return {k: c.get(k, 0) for k in ("additions", "updates", "removals", "retirements")}


def _final(merged_into: dict[str, str], pid: str) -> str:
    seen = set()
    while pid in merged_into and pid not in seen:
        seen.add(pid)
        pid = merged_into[pid]
    return pid


def make_plan(sync: SyncConfig, src: SourceRead, delivered: dict[str, Delivered]) -> Plan:
    by_key = {d.dest_key: d for d in delivered.values()}
    claimed: set[str] = set()     # delivered person_ids accounted for by a wanted person
    orphans: dict[str, Delivered] = {}  # a wanted person's old row under a key they no longer have
    changes: list[Change] = []
    takeovers: list[tuple[str, Delivered]] = []
    skipped = Counter()

    for pid, w in src.wanted.items():
        prev = delivered.get(pid)
        existing: Delivered | None = None
        if prev is not None and prev.dest_key == w.key:
            existing = prev
        elif w.key in by_key:
            existing = by_key[w.key]          # someone else's row holds this key: inherit it (merge)
            if prev is not None:
                orphans[pid] = prev
        elif prev is not None:
            orphans[pid] = prev               # same person, new key: the old profile is a duplicate
        if existing is not None:
            claimed.add(existing.person_id)
        takes_over = existing.person_id if existing is not None and existing.person_id != pid else None

        if existing is None:
            changes.append(Change("upsert", pid, w.key, {}, w.field_hash, None, "new"))
            continue
        if existing.rejected_reason is not None and existing.field_hash == w.field_hash:
            skipped["rejected_unchanged"] += 1   # the destination refused exactly this; wait for a change
            if takes_over:
                takeovers.append((pid, existing))
            continue
        if existing.field_hash != w.field_hash and not (sync.mode == "add_only" and existing.in_audience):
            changes.append(Change("upsert", pid, w.key, {}, w.field_hash, existing.dest_id, "changed",
                                  takes_over, existing.in_audience))
        elif not existing.in_audience:
            changes.append(Change("add_membership", pid, w.key, {}, w.field_hash, existing.dest_id,
                                  "rejoined", takes_over))
        elif takes_over:
            takeovers.append((pid, existing))

    for pid, d in delivered.items():
        if pid in claimed:
            continue  # still this person's (or the survivor's) profile
        into_key = None
        if pid in orphans:
            action, reason = "merge", "key_changed"
            into_key = src.wanted[pid].key
        elif pid in src.merged_into:
            action, reason = "merge", "merged"
            survivor = src.wanted.get(_final(src.merged_into, pid))
            into_key = survivor.key if survivor is not None else None
            if into_key is None:
                action = "retire"  # the survivor is not sent here: nothing to merge into
        elif pid not in src.known_persons:
            action, reason = "retire", "vanished"  # no longer a person at all (erased, or split up)
        elif src.consented is not None and pid not in src.consented and d.in_audience:
            action, reason = "remove", "no_consent"
        elif sync.mode == "mirror" and d.in_audience and pid not in src.wanted:
            action, reason = "remove", "left_source"
        else:
            continue
        changes.append(Change(action, pid, d.dest_key, {}, d.field_hash, d.dest_id, reason,
                              was_in_audience=d.in_audience, contact=d.contact, into_key=into_key))

    skipped["no_consent"] = len(src.no_consent)
    skipped["no_identifier"] = src.no_identifier
    skipped["duplicate_key"] = src.duplicate_key
    skipped["shared_identifier"] = len(src.shared)
    order = {a: i for i, a in enumerate(ACTION_ORDER)}
    changes.sort(key=lambda c: (order[c.action], c.person_id))
    return Plan(sync.name, changes, takeovers, skipped)
