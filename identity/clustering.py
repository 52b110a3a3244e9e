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
- ``conflict:first_name``: for Splink edges and rules that ``require`` it, no first name of
  A is compatible with one of B (same, nickname, Jaro-Winkler >= 0.88, or the two names
  swapped): one weak link cannot chain two people;
- ``conflict:date_of_birth``: for Splink edges, A and B both have dates of birth and none
  is within one character of the other;
- ``ambiguous:<rule>``: an attach edge whose candidates are in several clusters.

Because checks are made on whole clusters, not on the edge's two records, a chain
A–x–B of individually plausible edges cannot join A and B when A and B conflict.

Receipts carrying a single identifier ("satellites") are then attached in SQL to the one
cluster whose profile records hold that value (or grouped by the value when none or
several do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import duckdb
import pyarrow as pa

from identity.settings import IdentitySettings

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


def names_compatible(fa: set, la: set | None, fb: set, lb: set | None) -> bool:
    if fa & fb:
        return True
    if la and lb and (fa & lb) and (la & fb):
        return True  # first and last name swapped
    return any(jaro_winkler(x, y) >= NAME_JW for x in fa for y in fb)


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


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root


def cluster(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, splink_pairs: pa.Table | None,
            schema: str = "identity") -> ClusterStats:
    """Cluster profile records; writes temp table ``id_clusters(rid, cluster_id, held)`` and
    ``<schema>.edges`` (every edge with its decision and reason)."""
    stats = ClusterStats()
    rec = f"{schema}.records"
    cols = con.sql(f"""
        SELECT rid, source, entity, loyalty_id, user_id, subscriber_id, anonymous_id, email_canon, phone,
               first_name, first_name_canon, last_name, CAST(date_of_birth AS VARCHAR) AS dob
        FROM {rec} WHERE NOT is_satellite ORDER BY rid""").to_arrow_table().to_pydict()
    n_max = (max(cols["rid"]) + 1) if cols["rid"] else 1
    stats.profile_records = len(cols["rid"])

    # ---- per-cluster state, keyed by root rid
    size = [0] * n_max
    uniq: dict[int, dict[str, str]] = {}
    multi: dict[str, dict[int, set]] = {}
    firsts: dict[int, set] = {}
    lasts: dict[int, set] = {}
    dobs: dict[int, set] = {}
    unique_ids = [i for i in ("loyalty_id", "user_id", "subscriber_id", "anonymous_id") if settings.rule(i).unique]
    if settings.rule("email").unique or settings.rule("phone").unique:
        unique_ids += [i for i in ("email", "phone") if settings.rule(i).unique]
    limited = {i: settings.rule(i).max_per_profile for i in ("email", "phone", "subscriber_id", "anonymous_id",
                                                              "loyalty_id", "user_id")
               if settings.rule(i).max_per_profile and not settings.rule(i).unique}
    col_of = {"email": "email_canon"}
    for name in limited:
        multi[name] = {}
    for i, rid in enumerate(cols["rid"]):
        size[rid] = 0 if cols["entity"][i] == "transactions" else 1
        for name in unique_ids:
            v = cols[col_of.get(name, name)][i]
            if v is not None:
                uniq.setdefault(rid, {})[f"{name}@{cols['source'][i]}"] = v
        for name in limited:
            v = cols[col_of.get(name, name)][i]
            if v is not None:
                multi[name][rid] = {v}
        f, fc, last = cols["first_name"][i], cols["first_name_canon"][i], cols["last_name"][i]
        if f is not None:
            firsts[rid] = {f, fc}
        if last is not None:
            lasts[rid] = {last}
        if cols["dob"][i] is not None:
            dobs[rid] = {cols["dob"][i]}
    del cols

    # ---- edges in processing order
    con.execute("CREATE OR REPLACE TEMP TABLE id_splink_pairs (rid_l BIGINT, rid_r BIGINT, match_probability DOUBLE)")
    if splink_pairs is not None and splink_pairs.num_rows:
        con.register("_splink_pairs", splink_pairs)
        con.execute("""INSERT INTO id_splink_pairs SELECT least(unique_id_l, unique_id_r), greatest(unique_id_l, unique_id_r),
                       max(match_probability) FROM _splink_pairs GROUP BY ALL""")
        con.unregister("_splink_pairs")
    requires = {name: bool(settings.rule(name).requires) for name in
                ("loyalty_id", "user_id", "subscriber_id", "email", "phone", "anonymous_id", "link_tracking_id",
                 "order_ref")}
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_edge_order AS
        SELECT row_number() OVER (ORDER BY stage, priority, rule, neg_p, rid_l, rid_r) - 1 AS seq, * FROM (
            SELECT rid_l, rid_r, 'deterministic:' || rule AS method, rule, priority, 1.0 AS match_probability,
                   CASE WHEN phase = 'attach' THEN 3 ELSE 1 END AS stage, 0.0 AS neg_p, phase
            FROM id_det_edges
            UNION ALL
            SELECT s.rid_l, s.rid_r, 'splink', 'splink', 1000, s.match_probability, 2, -s.match_probability, 'link'
            FROM id_splink_pairs s
            WHERE NOT EXISTS (SELECT 1 FROM id_det_edges d WHERE d.phase = 'link'
                              AND d.rid_l = s.rid_l AND d.rid_r = s.rid_r))""")
    e = con.sql("SELECT rid_l, rid_r, rule, phase FROM id_edge_order ORDER BY seq").to_arrow_table().to_pydict()
    L, R, rules, phases = e["rid_l"], e["rid_r"], e["rule"], e["phase"]
    del e
    m = len(L)
    stats.edges = m
    decision = [REDUNDANT] * m
    reason: list[str | None] = [None] * m
    uf = _UnionFind(n_max)
    find = uf.find
    parent = uf.parent
    held: set[int] = set()
    cap = settings.max_cluster_size

    def check(ra: int, rb: int, rule: str) -> str | None:
        ua, ub = uniq.get(ra), uniq.get(rb)
        if ua and ub:
            for k, v in ua.items():
                w = ub.get(k)
                if w is not None and w != v:
                    return "merge_protection:" + k.split("@", 1)[0]
        for name, mx in limited.items():
            sa, sb = multi[name].get(ra), multi[name].get(rb)
            if sa and sb and len(sa | sb) > mx:
                return "limit:" + name
        if size[ra] + size[rb] > cap:
            return "cluster_size_cap"
        if rule == "splink" or requires.get(rule):
            fa, fb = firsts.get(ra), firsts.get(rb)
            if fa and fb and not names_compatible(fa, lasts.get(ra), fb, lasts.get(rb)):
                return "conflict:first_name"
        if rule == "splink":
            da, db = dobs.get(ra), dobs.get(rb)
            if da and db and not dobs_compatible(da, db):
                return "conflict:date_of_birth"
        return None

    def union(ra: int, rb: int) -> None:
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        ub = uniq.pop(rb, None)
        if ub:
            uniq.setdefault(ra, {}).update(ub)
        for name in limited:
            d = multi[name]
            sb = d.pop(rb, None)
            if sb:
                sa = d.get(ra)
                if sa is None:
                    d[ra] = sb
                elif len(sa) >= len(sb):
                    sa |= sb
                else:
                    sb |= sa
                    d[ra] = sb
        for d in (firsts, lasts, dobs):
            sb = d.pop(rb, None)
            if sb:
                sa = d.get(ra)
                if sa is None:
                    d[ra] = sb
                else:
                    sa |= sb
        if rb in held:
            held.discard(rb)
            held.add(ra)

    attach_from = -1
    attach_edges: list[int] = []

    def settle_attach(idx: list[int]) -> None:
        if not idx:
            return
        targets = {find(R[i]) for i in idx}
        own = find(L[idx[0]])
        targets.discard(own)
        if not targets:
            return
        if len(targets) > 1:
            for i in idx:
                if find(R[i]) != own:
                    decision[i], reason[i] = REFUSED, "ambiguous:" + rules[i]
            return
        target = targets.pop()
        why = check(own, target, rules[idx[0]])
        for i in idx:
            if find(R[i]) == own:
                continue
            if why is None:
                decision[i] = ACCEPTED
            else:
                decision[i], reason[i] = REFUSED, why
        if why is None:
            union(own, target)

    for i in range(m):
        if phases[i] == "attach":
            if L[i] != attach_from:
                settle_attach(attach_edges)
                attach_from, attach_edges = L[i], []
            attach_edges.append(i)
            continue
        ra, rb = find(L[i]), find(R[i])
        if ra == rb:
            continue
        why = check(ra, rb, rules[i])
        if why is None:
            decision[i] = ACCEPTED
            union(ra, rb)
        else:
            decision[i], reason[i] = REFUSED, why
            if why == "cluster_size_cap":
                held.add(ra)
                held.add(rb)
    settle_attach(attach_edges)

    # ---- results back to DuckDB
    rids = [r for r in range(n_max)]
    roots = [find(r) for r in rids]
    cluster_min: dict[int, int] = {}
    for r, root in zip(rids, roots):
        if root not in cluster_min:
            cluster_min[root] = r  # rids ascend, so the first seen is the smallest
    con.register("_uf", pa.table({
        "rid": pa.array(rids, pa.int64()),
        "cluster_id": pa.array([cluster_min[root] for root in roots], pa.int64()),
        "held": pa.array([root in held for root in roots], pa.bool_()),
    }))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE id_clusters AS
                    SELECT u.* FROM _uf u JOIN {rec} r USING (rid) WHERE NOT r.is_satellite""")
    con.unregister("_uf")
    con.register("_dec", pa.table({"seq": pa.array(range(m), pa.int64()), "decision": decision, "reason": reason}))
    con.execute(f"""
        CREATE OR REPLACE TABLE {schema}.edges AS
        SELECT o.seq, o.rid_l, o.rid_r, o.method, o.match_probability, d.decision,
               coalesce(d.reason, CASE d.decision WHEN 'accepted' THEN 'passed merge checks'
                                                  WHEN 'redundant' THEN 'already in the same cluster' END) AS reason
        FROM id_edge_order o JOIN _dec d USING (seq)""")
    con.unregister("_dec")
    stats.accepted = decision.count(ACCEPTED)
    stats.refused = decision.count(REFUSED)
    for r in reason:
        if r:
            stats.refused_by_reason[r.split(":")[0] if r.startswith("limit") else r] = \
                stats.refused_by_reason.get(r.split(":")[0] if r.startswith("limit") else r, 0) + 1
    stats.held_clusters = len(held)
    attach_satellites(con, settings, schema)
    return stats


def attach_satellites(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, schema: str = "identity") -> None:
    """Receipts with one identifier follow the single cluster whose profile records hold it.

    Extends ``id_clusters`` with every satellite and appends their edges to ``<schema>.edges``."""
    rec = f"{schema}.records"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_sat AS
        WITH s AS (
            SELECT rid, source,
                   CASE WHEN loyalty_id IS NOT NULL THEN 'loyalty_id' WHEN email_canon IS NOT NULL THEN 'email'
                        ELSE 'phone' END AS rule,
                   CASE WHEN loyalty_id IS NOT NULL THEN source || '|' || loyalty_id
                        ELSE coalesce(email_canon, phone) END AS v
            FROM {rec} WHERE is_satellite),
        p AS (  -- the value as profile records hold it
            SELECT 'loyalty_id' AS rule, r.source || '|' || r.loyalty_id AS v, c.cluster_id, min(r.rid) AS anchor
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.loyalty_id IS NOT NULL GROUP BY ALL
            UNION ALL SELECT 'email', r.email_canon, c.cluster_id, min(r.rid)
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.email_canon IS NOT NULL GROUP BY ALL
            UNION ALL SELECT 'phone', r.phone, c.cluster_id, min(r.rid)
              FROM {rec} r JOIN id_clusters c USING (rid) WHERE r.phone IS NOT NULL GROUP BY ALL),
        pc AS (SELECT rule, v, count(*) AS n, min(cluster_id) AS cluster_id, min(anchor) AS anchor FROM p GROUP BY ALL)
        SELECT s.rid, s.rule, pc.n AS candidates,
               CASE WHEN pc.n = 1 AND {_linkable(settings)} THEN pc.cluster_id
                    ELSE min(s.rid) OVER (PARTITION BY s.rule, s.v) END AS cluster_id,
               CASE WHEN pc.n = 1 AND {_linkable(settings)} THEN pc.anchor
                    ELSE min(s.rid) OVER (PARTITION BY s.rule, s.v) END AS anchor
        FROM s LEFT JOIN pc ON pc.rule = s.rule AND pc.v = s.v""")
    con.execute("INSERT INTO id_clusters SELECT rid, cluster_id, FALSE FROM id_sat")
    con.execute(f"""
        INSERT INTO {schema}.edges
        SELECT (SELECT coalesce(max(seq), -1) FROM {schema}.edges) + row_number() OVER (ORDER BY rid),
               least(rid, anchor), greatest(rid, anchor), 'deterministic:' || rule, 1.0,
               CASE WHEN candidates > 1 THEN 'refused' ELSE 'accepted' END,
               CASE WHEN candidates > 1 THEN 'ambiguous:' || rule || ' held by ' || candidates || ' clusters'
                    WHEN candidates = 1 THEN 'receipt follows the profile holding its ' || rule
                    ELSE 'receipt grouped with receipts of the same ' || rule END
        FROM id_sat WHERE rid <> anchor OR candidates > 1""")
    # held flag follows the cluster
    con.execute("""UPDATE id_clusters SET held = TRUE
                   WHERE cluster_id IN (SELECT cluster_id FROM id_clusters WHERE held)""")
    con.execute("DROP TABLE IF EXISTS id_sat")


def _linkable(settings: IdentitySettings) -> str:
    off = [f"'{r}'" for r in ("loyalty_id", "email", "phone") if not settings.rule(r).link]
    return f"s.rule NOT IN ({', '.join(off)})" if off else "TRUE"
