"""A small published snapshot for the activation tests: persons, traits, segments, consent and
identity changes, published with publish.snapshot.publish like the real publish asset does."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from core.config import config_from_dict
from publish.snapshot import publish

_run = itertools.count(1)


@dataclass
class World:
    """Everything a snapshot holds, editable between publishes."""

    persons: dict[str, dict] = field(default_factory=dict)        # person_id -> customer columns
    segments: dict[str, set[str]] = field(default_factory=dict)   # segment -> person_ids
    consent: dict[tuple[str, str], str] = field(default_factory=dict)  # (person_id, channel) -> status
    changes: list[tuple[str, str, str | None]] = field(default_factory=list)  # (person_id, change, other)

    @classmethod
    def make(cls, n: int, consent_every: int = 1) -> "World":
        w = cls()
        for i in range(n):
            pid = f"P{i:05d}"
            w.persons[pid] = {"first_name": f"Ann{i}", "last_name": f"Lee{i}", "email": f"ann.lee{i}@example.com",
                              "phone": f"+4477009{i:05d}", "lifecycle_stage": "active", "order_count": i % 7}
            if i % consent_every == 0:
                w.consent[(pid, "email_marketing")] = "granted"
        w.segments["vip"] = set(w.persons)
        return w

    def publish(self, published_dir: Path) -> str:
        con = duckdb.connect()
        pids = sorted(self.persons)

        def table(name, cols: dict[str, list]):
            con.register(f"_{name}", pa.table(cols))
            con.execute(f"CREATE TABLE {name} AS SELECT *, DATE '2026-11-22' AS as_of FROM _{name}")

        table("customers", {"person_id": pids, **{c: [self.persons[p][c] for p in pids]
                                                  for c in ("first_name", "last_name", "email", "phone")}})
        table("customer_traits", {"person_id": pids, "lifecycle_stage": [self.persons[p]["lifecycle_stage"] for p in pids],
                                  "order_count": [self.persons[p]["order_count"] for p in pids]})
        seg_rows = sorted((s, p) for s, ps in self.segments.items() for p in ps)
        table("segment_membership", {"segment": pa.array([s for s, _ in seg_rows], pa.string()),
                                     "person_id": pa.array([p for _, p in seg_rows], pa.string())})
        c_rows = sorted(self.consent.items())
        table("consent", {"person_id": pa.array([k[0] for k, _ in c_rows], pa.string()),
                          "channel": pa.array([k[1] for k, _ in c_rows], pa.string()),
                          "status": pa.array([v for _, v in c_rows], pa.string()),
                          "source": pa.array(["test"] * len(c_rows), pa.string())})
        table("identity_changes", {"run_id": pa.array(["r"] * len(self.changes), pa.string()),
                                   "person_id": pa.array([c[0] for c in self.changes], pa.string()),
                                   "change": pa.array([c[1] for c in self.changes], pa.string()),
                                   "other_person_id": pa.array([c[2] for c in self.changes], pa.string()),
                                   "changed_at": pa.array(list(range(len(self.changes))), pa.int64())})
        run_id = f"run{next(_run):04d}"
        names = ["customers", "customer_traits", "segment_membership", "consent", "identity_changes"]
        publish(con, {n: f"main.{n}" for n in names}, published_dir, run_id, gate={"passed": True})
        con.close()
        return run_id

    def merge(self, old: str, into: str) -> None:
        self.persons.pop(old)
        for ps in self.segments.values():
            ps.discard(old)
        for k in [k for k in self.consent if k[0] == old]:
            self.consent.pop(k)
        self.changes.append((old, "merged_into", into))


FAST_RETRY = {"max_attempts": 4, "base_delay_s": 0.002, "max_delay_s": 0.05, "timeout_s": 0.4}


def klaviyo_sync(url: str, name: str = "vip_klaviyo", **over) -> dict:
    return {"name": name, "source": {"segment": "vip"},
            "destination": {"type": "klaviyo", "base_url": url, "api_key_env": "TEST_KLAVIYO_KEY", "list_id": "LIST1",
                            "batch_size": 10, "job_poll_interval_s": 0.0, **over.pop("destination", {})},
            "fields": {"first_name": "first_name", "last_name": "last_name", "lifecycle_stage": "lifecycle_stage",
                       "order_count": "order_count"},
            "mode": "mirror", "consent": {"channel": "email_marketing"}, "retry": FAST_RETRY,
            "schedule": "0 4 * * *", **over}


def mailchimp_sync(url: str, name: str = "vip_mailchimp", **over) -> dict:
    return {"name": name, "source": {"segment": "vip"},
            "destination": {"type": "mailchimp", "base_url": url, "api_key_env": "TEST_MAILCHIMP_KEY", "list_id": "AUD1",
                            "batch_size": 8, **over.pop("destination", {})},
            "fields": {"FNAME": "first_name", "LNAME": "last_name"},
            "mode": "mirror", "consent": {"channel": "email_marketing"}, "retry": FAST_RETRY, **over}


def make_config(root: Path, syncs: list[dict]):
    return config_from_dict({"paths": {"published": str(root / "published")}, "syncs": syncs}, root)
