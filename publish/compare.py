"""Two published snapshots side by side: do they hold the same persons, segments and scores?

What the incremental runs promise (README "One as_of per run, and runs that skip what did not
change"): a project run day after day publishes what a full rebuild of the same landed data
publishes, up to the models' age (a saved model scores until its refit). The pipeline bench
(``bench/bench_pipeline.py --compare-full``) and ``tests/test_incremental_agreement.py`` measure
that with this module; so can a user comparing two snapshots of one project (a rollback
candidate against the current one, say).

Only ids, segment names and numbers are read: no PII leaves either file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.snapshots import open_snapshot

# (table, key columns, score column): the scores compared person by person
SCORES = (("churn_scores", ("person_id",), "churn_probability"),
          ("cart_intent", ("person_id", "cart_id"), "purchase_probability"))


@dataclass
class Comparison:
    """Counts of what agrees. ``records``: source records in both snapshots' identity graph and
    how many have the same person id; ``persons_moved``: persons of one side whose records are
    split over, or shared with, other persons on the other side (the partition differs)."""

    records: int = 0
    records_same_person: int = 0
    persons: tuple[int, int] = (0, 0)
    persons_same: int = 0
    persons_moved: int = 0
    segments: dict[str, dict] = field(default_factory=dict)  # segment -> left, right, both
    scores: dict[str, dict] = field(default_factory=dict)  # table -> rows, equal (1e-9), max_abs_diff, mean_abs_diff
    offers: dict = field(default_factory=dict)  # persons in both, same offer
    recommendations: dict = field(default_factory=dict)  # persons in both, same list (skus in rank order)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def segment_members_differing(self) -> int:
        return sum(s["left"] + s["right"] - 2 * s["both"] for s in self.segments.values())

    def summary(self) -> list[str]:
        lines = [f"persons: {self.persons[0]:,} / {self.persons[1]:,}, {self.persons_same:,} with the same id; "
                 f"records with the same person: {self.records_same_person:,} of {self.records:,}"
                 f" ({self.persons_moved:,} persons grouped differently)"]
        lines.append(f"segment memberships differing: {self.segment_members_differing:,} "
                     f"(of {sum(s['left'] for s in self.segments.values()):,})")
        for table, s in self.scores.items():
            lines.append(f"{table}: {s['equal']:,} of {s['rows']:,} equal to 1e-9, mean |diff| {s['mean_abs_diff']:.2g}, "
                         f"max {s['max_abs_diff']:.2g}")
        if self.offers:
            lines.append(f"next_best_offer: {self.offers['same']:,} of {self.offers['persons']:,} the same")
        if self.recommendations:
            lines.append(f"recommendations: {self.recommendations['same']:,} of {self.recommendations['persons']:,} "
                         "lists the same")
        return lines


def compare_snapshots(left: Path, right: Path) -> Comparison:
    """Compare two published snapshot files (DuckDB), read-only."""
    con = open_snapshot(Path(left))
    try:
        # the second file attached read-only to the first's sealed connection is refused (no
        # file access once locked), so each side is read on its own and joined in memory here
        a = _read(con)
    finally:
        con.close()
    con = open_snapshot(Path(right))
    try:
        b = _read(con)
    finally:
        con.close()
    return _compare(a, b)


def _read(con) -> dict:
    def rows(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    tables = {t for (t,) in rows("SELECT table_name FROM information_schema.tables")}
    out = {"graph": dict(rows("SELECT record_key, person_id FROM identity_graph")) if "identity_graph" in tables else {},
           "persons": {p for (p,) in rows("SELECT person_id FROM customers")} if "customers" in tables else set(),
           "segments": {}, "scores": {}, "offers": {}, "recommendations": {}}
    if "segment_membership" in tables:
        for segment, person in rows("SELECT segment, person_id FROM segment_membership"):
            out["segments"].setdefault(segment, set()).add(person)
    for table, keys, score in SCORES:
        if table in tables:
            out["scores"][table] = {tuple(r[:-1]): r[-1] for r in rows(f"SELECT {', '.join(keys)}, {score} FROM {table}")}
    if "next_best_offer" in tables:
        out["offers"] = dict(rows("SELECT person_id, offer FROM next_best_offer"))
    if "recommendations" in tables:
        out["recommendations"] = {p: tuple(skus) for p, skus in rows(
            "SELECT person_id, list(sku ORDER BY rank) FROM recommendations GROUP BY person_id")}
    return out


def _compare(a: dict, b: dict) -> Comparison:
    c = Comparison()
    both = a["graph"].keys() & b["graph"].keys()
    c.records = len(both)
    c.records_same_person = sum(a["graph"][k] == b["graph"][k] for k in both)
    c.persons = (len(a["persons"]), len(b["persons"]))
    c.persons_same = len(a["persons"] & b["persons"])
    # the partition: a left person is grouped the same when all its records map to one right
    # person who holds no other records (ids aside)
    right_of: dict[str, set] = {}
    left_of: dict[str, set] = {}
    for k in both:
        right_of.setdefault(a["graph"][k], set()).add(b["graph"][k])
        left_of.setdefault(b["graph"][k], set()).add(a["graph"][k])
    c.persons_moved = sum(1 for rights in right_of.values()
                          if len(rights) > 1 or len(left_of[next(iter(rights))]) > 1)
    for segment in sorted(a["segments"].keys() | b["segments"].keys()):
        left, right = a["segments"].get(segment, set()), b["segments"].get(segment, set())
        c.segments[segment] = {"left": len(left), "right": len(right), "both": len(left & right)}
    for table in a["scores"].keys() & b["scores"].keys():
        left, right = a["scores"][table], b["scores"][table]
        keys = left.keys() & right.keys()
        diffs = [abs(float(left[k]) - float(right[k])) for k in keys if left[k] is not None and right[k] is not None]
        c.scores[table] = {"left": len(left), "right": len(right), "rows": len(keys),
                           "equal": sum(d <= 1e-9 for d in diffs),
                           "max_abs_diff": max(diffs, default=0.0),
                           "mean_abs_diff": sum(diffs) / len(diffs) if diffs else 0.0}
    persons = a["offers"].keys() & b["offers"].keys()
    c.offers = {"left": len(a["offers"]), "right": len(b["offers"]), "persons": len(persons),
                "same": sum(a["offers"][p] == b["offers"][p] for p in persons)}
    persons = a["recommendations"].keys() & b["recommendations"].keys()
    c.recommendations = {"left": len(a["recommendations"]), "right": len(b["recommendations"]),
                         "persons": len(persons),
                         "same": sum(a["recommendations"][p] == b["recommendations"][p] for p in persons)}
    return c
