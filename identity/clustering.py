"""Constrained clustering: edges are applied strongest first, and a merge is refused when it
would put two people together that the data says are different.

Order: deterministic ``link`` edges by rule priority, then Splink edges by match
probability (highest first), then deterministic ``attach`` edges (records lacking a
field a rule requires; they join only if every candidate ended up in one cluster).

A merge of clusters A and B is refused, with the reason recorded on the edge, when:

- ``merge_protection:<id>``: A and B hold different values of a ``unique`` identifier
  (loyalty id within one source, login user id);
- ``limit:<id>``: together they would hold more distinct values than ``max_per_profile``;
- ``cluster_size_cap``: together they would hold more than ``max_cluster_size`` profile
  records; both are flagged ``held_for_review`` (never silently merged);
- ``conflict:first_name``: for rules that ``require`` it (email and phone by default: a
  shared or mistyped address is not proof), no first name of A is compatible with one of B
  (same, nickname, Jaro-Winkler >= 0.88, or the two names swapped); ``conflict:date_of_birth``
  for those rules when no date of birth of A is within one edit of one of B (namesakes
  sharing a mistyped email);
- ``conflict:first_name`` / ``conflict:date_of_birth`` for Splink edges are *weighed*, not
  vetoes: the edge's own two records' disagreement is already in its score, so a conflict
  between the clusters only refuses an edge below ``conflict_match_probability`` (a
  replaced first name with everything else equal scores ~1.0 and merges; a weak link
  cannot chain two people whose names or dates of birth disagree); but an edge whose own two
  records give different first names is refused unless their dates of birth agree: a
  household shares surname, address and landline, which score ~1.0 without the first name;
- ``ambiguous:<rule>``: an attach edge whose candidates are in several clusters;
- ``manual_split``: the merge would put together two records a user forced apart
  (``cdp identity split``). A user's force-merge edge (``cdp identity merge``, rule
  ``manual_merge``) comes first and passes every other check;
- ``limit:alias``: a Segment ``alias`` edge may join two login user ids (the source's own
  system asserts it), but not beyond ``rules.alias.max_per_profile`` user ids in one person.

Because checks are made on whole clusters, not on the edge's two records, a chain
A–x–B of individually plausible edges cannot join A and B when A and B conflict.

Receipts carrying a single identifier ("satellites") are then attached in SQL to the one
cluster whose profile records hold that value (or grouped by the value when none or
several do); then receipts known only by the card that paid, to the one cluster whose
records, receipts included, used that card (else they stay unresolved, in ``records`` but in
no person). A card never links two profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from core.settings.identity import IdentitySettings
from identity.db import has_table
from identity.rules import MANUAL_MERGE

ACCEPTED, REFUSED, REDUNDANT = "accepted", "refused", "redundant"
NAME_JW = 0.88


@lru_cache(maxsize=200_000)
def jaro_winkler(a: str, b: str) -> float:
    if a == b:
        return 1.0
    la, lb = len(a), len(b)
    if not la or not lb:
        return 0.0
    window = max(max(la, lb) // 2 - 1, 0)
    ma, mb = [False] * la, [False] * lb
    matches = 0
    for i, ca in enumerate(a):
        for j in range(max(0, i - window), min(lb, i + window + 1)):
            if not mb[j] and b[j] == ca:
                ma[i] = mb[j] = True
                matches += 1
                break
    if not matches:
        return 0.0
    t, k = 0, 0
    for i in range(la):
        if ma[i]:
            while not mb[k]:
                k += 1
            if a[i] != b[k]:
                t += 1
            k += 1
    jaro = (matches / la + matches / lb + (matches - t / 2) / matches) / 3
    prefix = 0
    for ca, cb in zip(a[:4], b[:4]):
        if ca != cb:
            break
        prefix += 1
    return jaro + prefix * 0.1 * (1 - jaro)


def _one_edit(a: str, b: str) -> bool:
    if a == b:
        return True
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) == 1:
        return True
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


@lru_cache(maxsize=200_000)
def _first_names_alike(x: str, y: str) -> bool:
    """Jaro-Winkler >= 0.88; one is a short form of the other (jon/jonathan, nat/natalie); or a
    typo: one edit, or two in names of five letters or more (olvea/oliver, gwradl/gerald)."""
    if jaro_winkler(x, y) >= NAME_JW:
        return True
    short, long_ = sorted((x, y), key=len)
    if len(short) >= 3 and long_.startswith(short):
        return True
    return _edits(x, y, 2 if min(len(x), len(y)) >= 5 else 1)


def _edits(a: str, b: str, k: int) -> bool:
    """Optimal-string-alignment distance of a and b is at most k."""
    if abs(len(a) - len(b)) > k:
        return False
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > k:
            return False
        prev2, prev = prev, cur
    return prev[-1] <= k


def names_compatible(fa: set, la: set | None, fb: set, lb: set | None) -> bool:
    if fa & fb:
        return True
    if la and lb and (fa & lb) and (la & fb):
        return True  # first and last name swapped
    if (not la and lb and fa & lb) or (not lb and la and fb & la):
        return True  # a surname given alone, in the first-name field
    return any(_first_names_alike(x, y) for x in fa for y in fb)


def dobs_compatible(da: set, db: set) -> bool:
    return bool(da & db) or any(_one_edit(x, y) for x in da for y in db)


@dataclass
class ClusterStats:
    profile_records: int = 0
    edges: int = 0
    accepted: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    held_clusters: int = 0
    edges_checked_one_by_one: int = 0  # edges in components where a merge check could fail


def _components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label of every node 0..n-1 (scipy, vectorised)."""
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cluster(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, splink_pairs: pa.Table | None,
            schema: str = "identity", edge_by_edge: bool = False) -> ClusterStats:
    """Cluster profile records; writes temp table ``id_clusters(rid, cluster_id, held)`` and
    ``<schema>.edges`` (every edge with its decision and reason).

    Vectorised where it can be: the connected components of all edges are computed at once,
    and a component where no merge check could fail (one value per unique identifier, limits
    and size cap respected, first names and dates of birth compatible two by two, no ambiguous attach)
    becomes one cluster outright; its edges are accepted along the spanning forest taken in
    processing order (the rest are redundant), as the edge-by-edge loop would decide.
    Only the components where some check *could* fail go through that loop
    (``edge_by_edge=True`` sends every component through it: the reference, for tests)."""
    stats = ClusterStats()
    rec = f"{schema}.records"
    n_max, stats.profile_records = con.execute(
        f"SELECT coalesce(max(rid), 0) + 1, count(*) FILTER (WHERE NOT is_satellite) FROM {rec}").fetchall()[0]
    left, right, attach = _edges_in_order(con, schema, splink_pairs)
    m = stats.edges = len(left)
    splits = manual_splits(con, schema)

    # ---- components: c1 over link and Splink edges, c2 over every edge (attach too)
    c1 = _components(n_max, left[~attach], right[~attach])
    c2 = _components(n_max, left, right)
    dirty_node = np.ones(n_max, bool)
    if not edge_by_edge:
        dirty = _components_needing_checks(con, settings, rec, c1, c2)
        if splits:  # a component holding both records of a force-split pair
            a, b = np.array(splits, dtype=np.int64).T
            dirty = np.union1d(dirty, c2[a][c2[a] == c2[b]])
        dirty_node = np.isin(c2, dirty)
    dirty_edge = dirty_node[left]
    stats.edges_checked_one_by_one = int(dirty_edge.sum())

    decision = np.full(m, REDUNDANT, dtype=object)
    reason = np.full(m, None, dtype=object)
    _accept_conflict_free(decision, n_max, left, right, attach, ~dirty_edge, c1)

    # ---- components where a check could fail: edge by edge, strongest first
    key = c2.astype(np.int64)  # cluster key per rid; dirty rids get n_max + their union-find root
    held_roots: set[int] = set()
    if dirty_edge.any():
        dirty_idx = np.flatnonzero(dirty_edge)
        dec, why, roots, held_roots = _constrained_union(con, settings, rec, n_max, dirty_idx, left, right, attach,
                                                         splits)
        decision[dirty_idx] = dec
        reason[dirty_idx] = why
        key[dirty_node] = n_max + roots[dirty_node]
    held = np.zeros(n_max, bool)
    if held_roots:
        held[dirty_node] = np.isin(key[dirty_node] - n_max, np.fromiter(held_roots, np.int64))

    _write_clusters(con, rec, n_max, key, held)
    _write_edges(con, schema, decision, reason)
    stats.accepted = int((decision == ACCEPTED).sum())
    stats.refused = int((decision == REFUSED).sum())
    stats.refused_by_reason = _count_reasons(reason)
    stats.held_clusters = len(held_roots)
    attach_satellites(con, settings, schema)
    return stats


def manual_splits(con: duckdb.DuckDBPyConnection, schema: str) -> list[tuple[int, int]]:
    """The record pairs a manual override keeps apart (``<schema>.manual_splits``, if the run made one)."""
    if not has_table(con, schema, "manual_splits"):
        return []
    return [(int(a), int(b)) for a, b in con.execute(f"SELECT rid_a, rid_b FROM {schema}.manual_splits ORDER BY ALL").fetchall()]


def _edges_in_order(con: duckdb.DuckDBPyConnection, schema: str,
                    splink_pairs: pa.Table | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Temp table ``id_edge_order`` (every edge, in processing order) and its (rid_l, rid_r,
    is attach) as arrays."""
    con.execute("CREATE OR REPLACE TEMP TABLE id_splink_pairs (rid_l BIGINT, rid_r BIGINT, match_probability DOUBLE)")
    if splink_pairs is not None and splink_pairs.num_rows:
        con.register("_splink_pairs", splink_pairs)
        con.execute("""INSERT INTO id_splink_pairs SELECT least(unique_id_l, unique_id_r), greatest(unique_id_l, unique_id_r),
                       max(match_probability) FROM _splink_pairs GROUP BY ALL""")
        con.unregister("_splink_pairs")
    # written in processing order, so an edge's seq is its rowid (this needs DuckDB's default
    # preserve_insertion_order, which resolve() makes sure of): numbering them with a window
    # sorted the edges a second time
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_edge_order AS
        SELECT * FROM (
            SELECT rid_l, rid_r, 'deterministic:' || rule AS method, rule, priority, 1.0 AS match_probability,
                   CASE WHEN phase = 'attach' THEN 3 ELSE 1 END AS stage, 0.0 AS neg_p, phase
            FROM {schema}.det_edges
            UNION ALL
            SELECT s.rid_l, s.rid_r, 'splink', 'splink', 1000, s.match_probability, 2, -s.match_probability, 'link'
            FROM id_splink_pairs s
            -- (kept even where a deterministic edge joins the same pair: if that edge is refused for
            -- want of corroboration, the model's own evidence may still merge them)
            )
        ORDER BY stage, priority, rule, neg_p, rid_l, rid_r""")
    e = con.sql("SELECT rid_l, rid_r, phase = 'attach' AS attach FROM id_edge_order ORDER BY rowid").to_arrow_table()
    return (e.column("rid_l").to_numpy().astype(np.int64), e.column("rid_r").to_numpy().astype(np.int64),
            e.column("attach").to_numpy(zero_copy_only=False).astype(bool))


def _accept_conflict_free(decision: np.ndarray, n_max: int, left: np.ndarray, right: np.ndarray,
                          attach: np.ndarray, clean: np.ndarray, c1: np.ndarray) -> None:
    """In components no check can fail, the spanning forest in processing order is accepted
    (Kruskal), and an attach edge whose two ends are in different link components."""
    idx = np.flatnonzero(clean & ~attach)
    if len(idx):
        # one pair may carry a deterministic and a Splink edge: keep its first (coo sums duplicates)
        _, first = np.unique(left[idx] * np.int64(n_max) + right[idx], return_index=True)
        idx = idx[np.sort(first)]
        weights = (idx + 1).astype(np.float64)  # unique, increasing with seq
        tree = minimum_spanning_tree(coo_matrix((weights, (left[idx], right[idx])), shape=(n_max, n_max)).tocsr())
        decision[tree.tocoo().data.astype(np.int64) - 1] = ACCEPTED
    _accept_clean_attaches(decision, np.flatnonzero(clean & attach), left, c1[left], c1[right])


def _accept_clean_attaches(decision: np.ndarray, idx: np.ndarray, rec: np.ndarray, cl: np.ndarray,
                           cr: np.ndarray) -> None:
    """Attach edges of conflict-free components, as the loop settles them: consecutive edges
    from one record are a group; it joins its (single) target cluster unless already in it, so
    a record attached by email is not attached again by phone (union-find over link components)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    i, n = 0, len(idx)
    while i < n:
        j = i
        while j < n and rec[idx[j]] == rec[idx[i]]:
            j += 1
        own = find(int(cl[idx[i]]))
        targets = set()
        for k in idx[i:j]:
            t = find(int(cr[k]))
            if t != own:
                decision[k] = ACCEPTED
                targets.add(t)
        for t in targets:  # (one in a conflict-free component)
            parent[t] = own
        i = j


def _write_clusters(con: duckdb.DuckDBPyConnection, rec: str, n_max: int, key: np.ndarray, held: np.ndarray) -> None:
    """Temp table ``id_clusters``: cluster id = the cluster's smallest rid."""
    con.register("_uf", pa.table({"rid": np.arange(n_max, dtype=np.int64), "k": key, "held": held}))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE id_clusters AS
                    SELECT u.rid, min(u.rid) OVER (PARTITION BY u.k) AS cluster_id, u.held
                    FROM _uf u JOIN {rec} r USING (rid) WHERE NOT r.is_satellite""")
    con.unregister("_uf")


def _write_edges(con: duckdb.DuckDBPyConnection, schema: str, decision: np.ndarray, reason: np.ndarray) -> None:
    """``<schema>.edges``: every edge in processing order with its decision and reason."""
    con.register("_dec", pa.table({"seq": np.arange(len(decision), dtype=np.int64),
                                   "decision": pa.array(decision.tolist(), pa.string()),
                                   "reason": pa.array(reason.tolist(), pa.string())}))
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.edges AS
        SELECT d.seq, o.rid_l, o.rid_r, o.method, o.match_probability, d.decision,
               coalesce(d.reason, CASE d.decision WHEN 'accepted' THEN 'passed merge checks'
                                                  WHEN 'redundant' THEN 'already in the same cluster' END) AS reason
        FROM id_edge_order o JOIN _dec d ON d.seq = o.rowid""")
    con.unregister("_dec")


def _count_reasons(reason: np.ndarray) -> dict[str, int]:
    """Refusals by reason; ``limit:<id>`` counted as ``limit``."""
    counts: dict[str, int] = {}
    for r in reason:
        if r:
            k = r.split(":")[0] if r.startswith("limit") else r
            counts[k] = counts.get(k, 0) + 1
    return counts


def _unique_ids(settings: IdentitySettings) -> list[str]:
    return [i for i in ("loyalty_id", "user_id", "subscriber_id", "anonymous_id", "email", "phone")
            if settings.rule(i).unique]


def _limited(settings: IdentitySettings) -> dict[str, int]:
    return {i: settings.rule(i).max_per_profile for i in ("email", "phone", "subscriber_id", "anonymous_id",
                                                          "loyalty_id", "user_id")
            if settings.rule(i).max_per_profile and not settings.rule(i).unique}


_COLUMN = {"email": "email_canon"}
# rules whose edges must also pass the first-name check when their settings `require` a field
_RULES_THAT_MAY_REQUIRE = ("loyalty_id", "user_id", "subscriber_id", "email", "phone", "anonymous_id",
                           "link_tracking_id", "order_ref")


def _components_needing_checks(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, rec: str,
                               c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """c2 labels of components where some merge check could fail (a superset is safe: those
    components just take the exact edge-by-edge path).

    Names and dates of birth: a component with several is still conflict-free when every two
    of its records are compatible (the checks only grow more permissive as clusters grow).
    Cheap aggregates first (counts, min <> max): the distinct counts and name lists are then
    computed only for the few components the cheap ones cannot clear."""
    _component_records(con, rec, c1, c2)
    dirty, varied = _over_cap_or_limit(con, settings)
    dirty |= _unique_id_clashes(con, settings)
    dirty |= _ambiguous_attaches(con)
    dirty |= _incompatible_names_or_dobs(con, [c for c in varied if c not in dirty])
    con.execute("DROP TABLE IF EXISTS id_comp_records")
    return np.array(sorted(dirty), dtype=np.int64)


def _component_records(con: duckdb.DuckDBPyConnection, rec: str, c1: np.ndarray, c2: np.ndarray) -> None:
    """Temp table ``id_comp_records``: profile records of components of two or more, with their labels."""
    grouped = np.flatnonzero(np.bincount(c2)[c2] > 1)
    con.register("_id_comp", pa.table({"rid": grouped.astype(np.int64), "c1": c1[grouped], "c2": c2[grouped]}))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_comp_records AS
        SELECT r.rid, r.source, r.entity, r.loyalty_id, r.user_id, r.subscriber_id, r.anonymous_id, r.email_canon,
               r.phone, r.first_name, r.first_name_canon, r.last_name, r.date_of_birth, c.c1, c.c2
        FROM {rec} r JOIN _id_comp c USING (rid) WHERE NOT r.is_satellite""")
    con.unregister("_id_comp")


def _over_cap_or_limit(con: duckdb.DuckDBPyConnection, settings: IdentitySettings) -> tuple[set[int], list[int]]:
    """Components over the size cap or over a per-profile limit; and those with several first
    names or dates of birth (checked two by two later)."""
    limits = [(_COLUMN.get(n, n), mx) for n, mx in _limited(settings).items()]
    # more values than a limit needs more records than it: count first, count distinct only there
    over_limit = " OR ".join(f"count({col}) > {mx}" for col, mx in limits) or "FALSE"
    cheap = con.sql(f"""
        SELECT c2, count(*) FILTER (WHERE entity <> 'transactions') > {settings.max_cluster_size} AS over_cap,
               {over_limit} AS over_limit,
               min(first_name_canon) <> max(first_name_canon) OR min(date_of_birth) <> max(date_of_birth) AS varied
        FROM id_comp_records GROUP BY c2""").to_arrow_table()
    dirty = set(cheap.filter(cheap.column("over_cap")).column("c2").to_pylist())
    maybe = cheap.filter(cheap.column("over_limit")).column("c2").to_pylist()
    if maybe:
        dirty.update(r[0] for r in con.execute(f"""
            SELECT c2 FROM id_comp_records WHERE c2 IN (SELECT unnest(?::BIGINT[])) GROUP BY c2
            HAVING {" OR ".join(f"count(DISTINCT {col}) > {mx}" for col, mx in limits)}""", [maybe]).fetchall())
    return dirty, cheap.filter(cheap.column("varied")).column("c2").to_pylist()


def _unique_id_clashes(con: duckdb.DuckDBPyConnection, settings: IdentitySettings) -> set[int]:
    """Components holding two values of a unique identifier within one source."""
    uniq = " OR ".join(f"min({_COLUMN.get(n, n)}) <> max({_COLUMN.get(n, n)})" for n in _unique_ids(settings))
    if not uniq:
        return set()
    return {r[0] for r in con.execute(
        f"SELECT DISTINCT c2 FROM id_comp_records GROUP BY c2, source HAVING {uniq}").fetchall()}


def _ambiguous_attaches(con: duckdb.DuckDBPyConnection) -> set[int]:
    """Components with an attach edge whose candidates lie in several link components."""
    return {r[0] for r in con.execute("""
        SELECT c.c2 FROM id_edge_order e JOIN id_comp_records c ON c.rid = e.rid_l JOIN id_comp_records t ON t.rid = e.rid_r
        WHERE e.phase = 'attach' GROUP BY e.rid_l, c.c2 HAVING min(t.c1) <> max(t.c1)""").fetchall()}


def _incompatible_names_or_dobs(con: duckdb.DuckDBPyConnection, varied: list[int]) -> set[int]:
    """Of the components ``varied``, those where two records' first names or dates of birth
    are incompatible."""
    if not varied:
        return set()
    rows = con.execute("""
        SELECT c2, list(DISTINCT [first_name, first_name_canon, last_name]) FILTER (WHERE first_name IS NOT NULL),
               list(DISTINCT CAST(date_of_birth AS VARCHAR)) FILTER (WHERE date_of_birth IS NOT NULL)
        FROM id_comp_records WHERE c2 IN (SELECT unnest(?::BIGINT[])) GROUP BY c2""", [varied]).fetchall()
    dirty = set()
    for c2_label, names, dobs in rows:
        names, dobs = names or [], dobs or []
        ok = all(names_compatible({a[0], a[1]}, {a[2]} if a[2] else None, {b[0], b[1]}, {b[2]} if b[2] else None)
                 for i, a in enumerate(names) for b in names[i + 1:])
        ok = ok and all(dobs_compatible({a}, {b}) for i, a in enumerate(dobs) for b in dobs[i + 1:])
        if not ok:
            dirty.add(c2_label)
    return dirty


_MERGEABLE = (True, None)


class _ClusterState:
    """Union-find over record ids, plus what the merge rules look at, kept per cluster root:
    profile-record count, unique identifier values (``name@source`` -> value), the values of
    each limited identifier, first names (as given and canonical), last names, dates of birth.

    ``can_merge`` asks every rule, in the order refusals are reported; ``merge`` joins two
    roots and their state. Sets are owned by one root each, so merging may grow them in place."""

    __slots__ = ("parent", "size", "uniq", "multi", "firsts", "lasts", "dobs", "splits", "value_sets", "held",
                 "limited", "requires", "cap", "conflict_p", "alias_cap", "rec_first", "rec_last", "rec_dob")

    def __init__(self, settings: IdentitySettings, n_max: int, cols: dict[str, list]):
        self.parent = list(range(n_max))
        self.size = [0] * n_max
        self.uniq: dict[int, dict[str, str]] = {}
        self.limited = _limited(settings)
        self.multi: dict[str, dict[int, set]] = {name: {} for name in self.limited}
        self.firsts: dict[int, set] = {}
        self.lasts: dict[int, set] = {}
        self.dobs: dict[int, set] = {}
        # each record's own first names and date of birth (the sets above grow as clusters merge)
        self.rec_first: dict[int, frozenset] = {}
        self.rec_last: dict[int, frozenset] = {}
        self.rec_dob: dict[int, str] = {}
        # manual splits: the k-th force-split pair tags its two records 2k and 2k + 1; a cluster
        # holding tag t never merges with one holding t ^ 1
        self.splits: dict[int, set] = {}
        self.held: set[int] = set()
        # every root -> set of values map, merged alike
        self.value_sets = [*self.multi.values(), self.firsts, self.lasts, self.dobs, self.splits]
        self.requires = {name: bool(settings.rule(name).requires) for name in _RULES_THAT_MAY_REQUIRE}
        self.cap = settings.max_cluster_size
        self.conflict_p = settings.conflict_match_probability
        self.alias_cap = settings.rule("alias").max_per_profile or 1_000_000
        # column by column: indexing every column per row cost twice as much
        rids = cols["rid"]
        for rid, entity in zip(rids, cols["entity"]):
            self.size[rid] = 0 if entity == "transactions" else 1  # receipts do not count towards the cap
        self._load_unique_ids(_unique_ids(settings), rids, cols)
        self._load_limited(rids, cols)
        self._load_names_and_dobs(rids, cols)

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, settings: IdentitySettings, rec: str, n_max: int,
             rids: np.ndarray, splits: list[tuple[int, int]] = ()) -> _ClusterState:
        """The state of every profile record in ``rids``, each its own cluster (``splits``: the
        record pairs a manual override keeps apart)."""
        con.register("_id_dirty", pa.table({"rid": rids}))
        cols = con.sql(f"""
            SELECT rid, source, entity, loyalty_id, user_id, subscriber_id, anonymous_id, email_canon, phone,
                   first_name, first_name_canon, last_name, CAST(date_of_birth AS VARCHAR) AS dob
            FROM {rec} WHERE NOT is_satellite AND rid IN (SELECT rid FROM _id_dirty) ORDER BY rid""").to_arrow_table().to_pydict()
        con.unregister("_id_dirty")
        state = cls(settings, n_max, cols)
        for k, (a, b) in enumerate(splits):
            state.splits.setdefault(int(a), set()).add(2 * k)
            state.splits.setdefault(int(b), set()).add(2 * k + 1)
        return state

    def _load_unique_ids(self, names: list[str], rids: list[int], cols: dict[str, list]) -> None:
        uniq = self.uniq
        for name in names:
            # unique within a source: two sources' loyalty ids are different numbering schemes
            for rid, source, v in zip(rids, cols["source"], cols[_COLUMN.get(name, name)]):
                if v is not None:
                    uniq.setdefault(rid, {})[f"{name}@{source}"] = frozenset((v,))

    def _load_limited(self, rids: list[int], cols: dict[str, list]) -> None:
        for name, values in self.multi.items():
            for rid, v in zip(rids, cols[_COLUMN.get(name, name)]):
                if v is not None:
                    values[rid] = {v}

    def _load_names_and_dobs(self, rids: list[int], cols: dict[str, list]) -> None:
        firsts, lasts, dobs = self.firsts, self.lasts, self.dobs
        rec_first, rec_last, rec_dob = self.rec_first, self.rec_last, self.rec_dob
        for rid, f, fc, last, dob in zip(rids, cols["first_name"], cols["first_name_canon"], cols["last_name"],
                                         cols["dob"]):
            if f is not None:
                firsts[rid] = {f, fc}
                rec_first[rid] = frozenset((f, fc))
            if last is not None:
                lasts[rid] = {last}
                rec_last[rid] = frozenset((last,))
            if dob is not None:
                dobs[rid] = {dob}
                rec_dob[rid] = dob

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:  # path compression
            p[x], x = root, p[x]
        return root

    # ---- the merge rules, a and b being roots; each returns the refusal or None / True if it refuses

    def _merge_protection(self, a: int, b: int, alias: bool = False) -> str | None:
        """Two different values of one unique identifier (from one source) never merge, except
        login user ids over an alias edge (the source's own system says they are one person), up
        to ``alias_cap`` user ids in one person."""
        ua, ub = self.uniq.get(a), self.uniq.get(b)
        if ua and ub:
            for k, v in ua.items():
                w = ub.get(k)
                if w is not None and w != v:
                    if alias and k.startswith("user_id@"):
                        if len(v | w) > self.alias_cap:
                            return "limit:alias"
                        continue
                    return "merge_protection:" + k.split("@", 1)[0]
        return None

    def _split_apart(self, a: int, b: int) -> bool:
        """A manual force-split pair would end up in one cluster."""
        sa, sb = self.splits.get(a), self.splits.get(b)
        return bool(sa and sb) and any(t ^ 1 in sb for t in sa)

    def _over_limit(self, a: int, b: int) -> str | None:
        """Together more distinct values of an identifier than ``max_per_profile``."""
        for name, mx in self.limited.items():
            values = self.multi[name]
            sa, sb = values.get(a), values.get(b)
            if sa and sb and len(sa | sb) > mx:
                return "limit:" + name
        return None

    def _over_size_cap(self, a: int, b: int) -> bool:
        return self.size[a] + self.size[b] > self.cap

    def _first_names_conflict(self, a: int, b: int) -> bool:
        fa, fb = self.firsts.get(a), self.firsts.get(b)
        return bool(fa and fb) and not names_compatible(fa, self.lasts.get(a), fb, self.lasts.get(b))

    def _dobs_conflict(self, a: int, b: int) -> bool:
        da, db = self.dobs.get(a), self.dobs.get(b)
        return bool(da and db) and not dobs_compatible(da, db)

    def _only_the_edges_own(self, a: int, b: int, x: int | None, y: int | None, dob: bool) -> bool:
        """The clusters' conflict is the edge's own: every first name (or date of birth) of
        cluster ``a`` is compatible with that of the edge's record ``x``, and every one of ``b``
        with ``y``'s. Then the only disagreement is the one the edge's score already weighed
        (a replaced first name against a cluster of that record's other copies); a conflict
        brought in by other members (a chain A-x-y-B) is not."""
        if x is None or y is None:
            return False
        if dob:
            dx, dy = self.rec_dob.get(x), self.rec_dob.get(y)
            return (dx is not None and dy is not None and all(dobs_compatible({d}, {dx}) for d in self.dobs[a])
                    and all(dobs_compatible({d}, {dy}) for d in self.dobs[b]))
        fx, fy = self.rec_first.get(x), self.rec_first.get(y)
        return (fx is not None and fy is not None and all(names_compatible({n}, None, fx, None) for n in self.firsts[a])
                and all(names_compatible({n}, None, fy, None) for n in self.firsts[b]))

    def _another_first_name_no_birth_date(self, x: int | None, y: int | None) -> bool:
        """The edge's own two records give incompatible first names and no agreeing date of
        birth. Sharing surname, address and landline is what two members of one household do,
        and it scores ~1.0 whatever the first names; a replaced first name of one person still
        merges when the dates of birth agree (within one edit)."""
        if x is None or y is None:
            return False
        fx, fy = self.rec_first.get(x), self.rec_first.get(y)
        if not fx or not fy or names_compatible(fx, self.rec_last.get(x), fy, self.rec_last.get(y)):
            return False
        dx, dy = self.rec_dob.get(x), self.rec_dob.get(y)
        return dx is None or dy is None or not dobs_compatible({dx}, {dy})

    def can_merge(self, a: int, b: int, rule: str, p: float = 1.0, x: int | None = None,
                  y: int | None = None) -> tuple[bool, str | None]:
        """(True, None), or (False, why) for the first rule that refuses merging roots a and b
        over an edge of ``rule`` between records x and y with match probability ``p``. Names are
        a veto for rules that require them; for Splink edges names and dates of birth are
        weighed: a conflict the edge's own records do not explain needs ``p`` of at least
        ``conflict_match_probability``."""
        if self._split_apart(a, b):
            return False, "manual_split"
        if rule == MANUAL_MERGE:
            return _MERGEABLE  # the user's word: no other check applies
        why = self._merge_protection(a, b, rule == "alias") or self._over_limit(a, b)
        if why is not None:
            return False, why
        if self._over_size_cap(a, b):
            return False, "cluster_size_cap"
        if rule == "splink":
            if self._another_first_name_no_birth_date(x, y):
                return False, "conflict:first_name"
            # two single records: their disagreement is exactly what the score already weighed
            if p < self.conflict_p and (self.size[a] > 1 or self.size[b] > 1):
                if self._first_names_conflict(a, b) and not self._only_the_edges_own(a, b, x, y, False):
                    return False, "conflict:first_name"
                if self._dobs_conflict(a, b) and not self._only_the_edges_own(a, b, x, y, True):
                    return False, "conflict:date_of_birth"
            return _MERGEABLE
        if self.requires.get(rule):  # an equal email or phone is not proof: it needs the person to agree
            if self._first_names_conflict(a, b):
                return False, "conflict:first_name"
            if self._dobs_conflict(a, b):
                return False, "conflict:date_of_birth"
        return _MERGEABLE

    def merge(self, a: int, b: int) -> None:
        """Join roots a and b: the larger becomes the root and takes the other's state."""
        size = self.size
        if size[a] < size[b]:
            a, b = b, a
        self.parent[b] = a
        size[a] += size[b]
        ub = self.uniq.pop(b, None)
        if ub:
            ua = self.uniq.setdefault(a, {})
            for k, w in ub.items():
                v = ua.get(k)
                ua[k] = w if v is None or v == w else v | w  # (two values only after an alias)
        for values in self.value_sets:  # inline, not a helper call per set: runs on every merge
            sb = values.pop(b, None)
            if sb:
                sa = values.get(a)
                if sa is None:
                    values[a] = sb
                elif len(sa) >= len(sb):  # grow the larger set
                    sa |= sb
                else:
                    sb |= sa
                    values[a] = sb
        if b in self.held:
            self.held.discard(b)
            self.held.add(a)

    def hold(self, a: int, b: int) -> None:
        """Flag both clusters for review (a merge refused by the size cap)."""
        self.held.add(a)
        self.held.add(b)

    def roots(self, n_max: int, rids) -> np.ndarray:
        """Union-find root per rid 0..n_max-1 (a rid not in ``rids`` is its own root)."""
        roots = np.arange(n_max, dtype=np.int64)
        for r in rids:
            roots[r] = self.find(r)
        return roots

    def held_roots(self) -> set[int]:
        return {self.find(h) for h in self.held}


def _constrained_union(con, settings: IdentitySettings, rec: str, n_max: int, idx: np.ndarray,
                       left: np.ndarray, right: np.ndarray, is_attach: np.ndarray,
                       splits: list[tuple[int, int]] = ()):
    """The exact edge-by-edge clustering over the edges ``idx`` (in processing order).

    Returns (decision per edge, reason per edge, union-find root per rid, roots held for review)."""
    state = _ClusterState.load(con, settings, rec, n_max, np.unique(np.concatenate([left[idx], right[idx]])), splits)
    rules, probs = _rules_of(con, idx)
    edges = _EdgeDecisions(state, left[idx].tolist(), right[idx].tolist(), rules, probs)
    edges.run(is_attach[idx].tolist())
    return edges.decision, edges.reason, state.roots(n_max, set(edges.left) | set(edges.right)), state.held_roots()


def _rules_of(con: duckdb.DuckDBPyConnection, idx: np.ndarray) -> tuple[list[str], list[float]]:
    """The rule and match probability of each edge in ``idx`` (seq = rowid of id_edge_order)."""
    con.register("_id_idx", pa.table({"seq": idx}))
    rows = con.execute(
        "SELECT o.rule, o.match_probability FROM id_edge_order o JOIN _id_idx i ON i.seq = o.rowid ORDER BY i.seq").fetchall()
    con.unregister("_id_idx")
    return [r[0] for r in rows], [float(r[1]) for r in rows]


class _EdgeDecisions:
    """The decision and reason of each edge, taken one edge (or one attach group) at a time."""

    def __init__(self, state: _ClusterState, left: list[int], right: list[int], rules: list[str],
                 probs: list[float] | None = None):
        self.state, self.left, self.right, self.rules = state, left, right, rules
        self.probs = probs if probs is not None else [1.0] * len(left)
        self.decision = [REDUNDANT] * len(left)
        self.reason: list[str | None] = [None] * len(left)

    def run(self, is_attach: list[bool]) -> None:
        """Every edge in processing order. A link or Splink edge merges its two clusters unless
        a rule refuses; consecutive attach edges from one record are settled together."""
        state, left, right, rules, probs, decision, reason = (self.state, self.left, self.right, self.rules,
                                                              self.probs, self.decision, self.reason)
        find, can_merge, merge = state.find, state.can_merge, state.merge  # bound once: the hot loop
        group: list[int] = []
        for i, attach in enumerate(is_attach):
            if attach:
                if group and left[group[0]] != left[i]:
                    self.attach(group)
                    group = []
                group.append(i)
                continue
            a, b = find(left[i]), find(right[i])
            if a == b:
                continue  # redundant
            ok, why = can_merge(a, b, rules[i], probs[i], left[i], right[i])
            if ok:
                decision[i] = ACCEPTED
                merge(a, b)
            else:
                decision[i], reason[i] = REFUSED, why
                if why == "cluster_size_cap":
                    state.hold(a, b)
        self.attach(group)

    def attach(self, group: list[int]) -> None:
        """Attach edges from one record: it joins only if all its candidates are in one
        cluster (else every edge to another cluster is refused as ambiguous)."""
        if not group:
            return
        state, right = self.state, self.right
        own = state.find(self.left[group[0]])
        targets = {state.find(right[i]) for i in group}
        targets.discard(own)
        if not targets:
            return
        if len(targets) > 1:
            for i in group:
                if state.find(right[i]) != own:
                    self.decision[i], self.reason[i] = REFUSED, "ambiguous:" + self.rules[i]
            return
        target = targets.pop()
        ok, why = state.can_merge(own, target, self.rules[group[0]])
        for i in group:
            if state.find(right[i]) != own:
                self.decision[i], self.reason[i] = (ACCEPTED, None) if ok else (REFUSED, why)
        if ok:
            state.merge(own, target)


def attach_satellites(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, schema: str = "identity") -> None:
    """Receipts with one identifier follow the single cluster whose profile records hold it;
    then receipts known only by the card that paid follow the single cluster whose records
    (receipts included, now) used that card.

    Extends ``id_clusters`` with the satellites placed and appends their edges to ``<schema>.edges``."""
    rec = f"{schema}.records"
    by_identifier = f"""
        WITH s AS (
            SELECT rid,
                   CASE WHEN loyalty_id IS NOT NULL THEN 'loyalty_id' WHEN email_canon IS NOT NULL THEN 'email'
                        ELSE 'phone' END AS rule,
                   CASE WHEN loyalty_id IS NOT NULL THEN source || '|' || loyalty_id
                        ELSE coalesce(email_canon, phone) END AS v
            FROM {rec} WHERE is_satellite AND coalesce(loyalty_id, email_canon, phone) IS NOT NULL),
        p AS (  -- the value as profile records hold it
            SELECT 'loyalty_id' AS rule, r.source || '|' || r.loyalty_id AS v, c.cluster_id, min(r.rid) AS anchor
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.loyalty_id IS NOT NULL GROUP BY ALL
            UNION ALL SELECT 'email', r.email_canon, c.cluster_id, min(r.rid)
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.email_canon IS NOT NULL GROUP BY ALL
            UNION ALL SELECT 'phone', r.phone, c.cluster_id, min(r.rid)
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.phone IS NOT NULL GROUP BY ALL)"""
    by_card = f"""
        WITH s AS (
            SELECT rid, 'card_token' AS rule, card_token AS v
            FROM {rec} WHERE is_satellite AND coalesce(loyalty_id, email_canon, phone) IS NULL AND card_token IS NOT NULL),
        p AS (  -- the card as the records placed so far (profiles and their receipts) hold it
            SELECT 'card_token' AS rule, r.card_token AS v, c.cluster_id, min(r.rid) AS anchor
            FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.card_token IS NOT NULL GROUP BY ALL)"""
    # Receipts nobody holds the value of: grouped by it when it is an identifier (a shopper who
    # gives the same email each time), left unresolved when it is only a card (like receipts that
    # carry nothing: an anonymous card's receipts would make a person with no way to reach them,
    # and one that is only part of some real customer's purchases).
    for values, holder, group_unheld in ((by_identifier, "the profile holding its", True),
                                         (by_card, "the person whose receipts used its", False)):
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE id_sat AS
            {values},
            pc AS (SELECT rule, v, count(*) AS n, min(cluster_id) AS cluster_id, min(anchor) AS anchor FROM p GROUP BY ALL),
            j AS (SELECT s.rid, s.rule, pc.n AS candidates, coalesce(pc.n = 1 AND {_linkable(settings)}, FALSE) AS follows,
                         pc.cluster_id, pc.anchor, min(s.rid) OVER (PARTITION BY s.rule, s.v) AS first_of_value
                  FROM s LEFT JOIN pc ON pc.rule = s.rule AND pc.v = s.v)
            SELECT rid, rule, candidates, follows,
                   CASE WHEN follows THEN cluster_id ELSE first_of_value END AS cluster_id,
                   CASE WHEN follows THEN anchor ELSE first_of_value END AS anchor
            FROM j""")
        placed = "TRUE" if group_unheld else "follows"
        con.execute(f"INSERT INTO id_clusters SELECT rid, cluster_id, FALSE FROM id_sat WHERE {placed}")
        con.execute(f"""
            INSERT INTO {schema}.edges
            SELECT (SELECT coalesce(max(seq), -1) FROM {schema}.edges) + row_number() OVER (ORDER BY rid),
                   least(rid, anchor), greatest(rid, anchor), 'deterministic:' || rule, 1.0,
                   CASE WHEN candidates > 1 THEN 'refused' ELSE 'accepted' END,
                   CASE WHEN candidates > 1 THEN 'ambiguous:' || rule || ' held by ' || candidates || ' clusters'
                        WHEN candidates = 1 THEN 'receipt follows {holder} ' || rule
                        ELSE 'receipt grouped with receipts of the same ' || rule END
            FROM id_sat WHERE (rid <> anchor AND {placed}) OR candidates > 1""")
    # held flag follows the cluster
    con.execute("""UPDATE id_clusters SET held = TRUE
                   WHERE cluster_id IN (SELECT cluster_id FROM id_clusters WHERE held)""")
    con.execute("DROP TABLE IF EXISTS id_sat")


def _linkable(settings: IdentitySettings) -> str:
    off = [f"'{r}'" for r in ("loyalty_id", "email", "phone", "card_token") if not settings.rule(r).link]
    return f"s.rule NOT IN ({', '.join(off)})" if off else "TRUE"
