"""Manual force-merge / force-split overrides, and Segment alias calls joining two login ids
(hand-made raw rows, Splink off: rules + clustering + stable ids)."""

import json

import yaml
from click.testing import CliRunner

from cdp.cli import main
from identity import overrides
from identity.pipeline import resolve

TS = "2025-01-01 10:00:00+00"


def insert(con, table, source, **cols):
    cols = {**cols, "_source": source, "_file": "test", "_row": 1, "_load_id": "L", "_loaded_at": TS}
    names = ", ".join(f'"{k}"' for k in cols)
    con.execute(f"INSERT INTO raw.{table} ({names}) VALUES ({', '.join('?' for _ in cols)})", list(cols.values()))


def member(con, loyalty_id, first, last, email=None):
    insert(con, "pos_loyalty_members", "pos", loyalty_id=loyalty_id, first_name=first, last_name=last, email=email,
           enrolled_at=TS)


def subscriber(con, sid, email, first, last):
    insert(con, "email_subscribers", "email", subscriber_id=sid, email=email, first_name=first, last_name=last,
           status="subscribed", created_at=TS)


def identify(con, mid, anon, user, email):
    insert(con, "web_events", "web", messageId=mid, type="identify", anonymousId=anon, userId=user,
           traits=json.dumps({"email": email}), timestamp=TS)


def alias(con, mid, previous, user):
    insert(con, "web_events", "web", messageId=mid, type="alias", previousId=previous, userId=user, timestamp=TS)


def pid(con, key):
    return con.sql("SELECT person_id FROM identity.graph WHERE record_key = ?", params=[key]).fetchall()[0][0]


def refusals(con):
    return {r[0] for r in con.sql("SELECT reason FROM identity.edges WHERE decision = 'refused'").fetchall()}


# --------------------------------------------------------------------------- alias (#26)
def test_an_alias_between_two_login_ids_merges_them(env):
    cfg, con = env
    identify(con, "m1", "a1", "U1", "sam@x.co.uk")
    identify(con, "m2", "a2", "U2", "sam.h@y.co.uk")
    identify(con, "m3", "a3", "U3", "other@z.co.uk")
    alias(con, "m4", "U1", "U2")  # the shop's own system: U1 is now U2
    res = resolve(cfg, con)
    assert pid(con, "web|user_id|U1") == pid(con, "web|user_id|U2") == pid(con, "web|anonymous_id|a1")
    assert pid(con, "web|user_id|U3") != pid(con, "web|user_id|U2")
    assert res.unique_id_conflicts == 0  # an asserted join is not a conflict


def test_an_alias_storm_merges_nobody_and_an_alias_chain_stops_at_the_cap(env):
    cfg, con = env  # rules.alias.max_per_profile: 5 by default
    for i in range(6):  # one id aliased to six others: a shared login or a buggy SDK
        identify(con, f"s{i}", f"sa{i}", f"S{i}", f"s{i}@x.co.uk")
        alias(con, f"sx{i}", f"S{i}", "KIOSK")
    identify(con, "k", "ka", "KIOSK", "kiosk@x.co.uk")
    for i in range(7):  # a chain, each id aliased to at most two others
        identify(con, f"c{i}", f"ca{i}", f"C{i}", f"c{i}@x.co.uk")
        if i:
            alias(con, f"cx{i}", f"C{i - 1}", f"C{i}")
    resolve(cfg, con)
    assert len({pid(con, f"web|user_id|S{i}") for i in range(6)} | {pid(con, "web|user_id|KIOSK")}) == 7
    chain = [pid(con, f"web|user_id|C{i}") for i in range(7)]
    assert max(chain.count(p) for p in chain) == 5  # the first five links, then limit:alias
    assert "limit:alias" in refusals(con)


# --------------------------------------------------------------------------- manual overrides
def test_force_merge_and_split_are_applied_and_survive_reruns_with_stable_ids(env):
    cfg, con = env
    path = overrides.path_of(cfg, cfg.identity)
    member(con, "L1", "Anna", "Jones", email="anna@a.co.uk")
    member(con, "L2", "Anne", "Jones", email="anne@b.co.uk")  # merge protection keeps L1 and L2 apart
    member(con, "L3", "Tom", "Twin", email="twins@c.co.uk")
    subscriber(con, "s3", "twins@c.co.uk", "Tom", "Twin")  # the rules join them; the user knows better
    subscriber(con, "s4", "twins@c.co.uk", "Tom", "Twin")  # and this one would chain them: the split holds
    first = resolve(cfg, con, run_id="r1")
    assert pid(con, "pos|loyalty_members|L1") != pid(con, "pos|loyalty_members|L2")
    assert pid(con, "pos|loyalty_members|L3") == pid(con, "email|subscribers|s3") == pid(con, "email|subscribers|s4")
    keep = pid(con, "pos|loyalty_members|L3")

    overrides.add(path, "merge", "pos|loyalty_members|L1", "pos|loyalty_members|L2", "same customer")
    overrides.add(path, "split", "email|subscribers|s3", "pos|loyalty_members|L3")
    overrides.add(path, "merge", "pos|loyalty_members|L9", "pos|loyalty_members|L1")  # not loaded (yet)
    res = resolve(cfg, con, run_id="r2")
    assert pid(con, "pos|loyalty_members|L1") == pid(con, "pos|loyalty_members|L2")
    assert pid(con, "pos|loyalty_members|L3") != pid(con, "email|subscribers|s3")
    assert "manual_split" in refusals(con)
    assert res.unique_id_conflicts == 0
    assert any("row(s) 4 of the overrides file" in w for w in res.warnings)
    assert "L9" not in json.dumps(res.warnings)
    # stable ids: the larger part of the split keeps the id
    big = "email|subscribers|s3" if pid(con, "email|subscribers|s4") == pid(con, "email|subscribers|s3") \
        else "pos|loyalty_members|L3"
    assert pid(con, big) == keep
    ids = dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())
    resolve(cfg, con, run_id="r3")  # a rerun: same clusters, same ids
    assert dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall()) == ids
    assert first.persons == 3 == res.persons

    assert overrides.remove(path, "pos|loyalty_members|L3", "email|subscribers|s3")
    resolve(cfg, con, run_id="r4")  # forgetting the split: the rules join them again
    assert pid(con, "pos|loyalty_members|L3") == pid(con, "email|subscribers|s3")


def test_cli_writes_lists_and_rejects_bad_override_files(tmp_path):
    root = tmp_path / "shop"
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(root)]).exit_code == 0
    cfg = str(root / "cdp.yaml")
    r = runner.invoke(main, ["identity", "merge", "pos|loyalty_members|1", "web|user_id|u7", "--note", "call",
                             "--config", cfg])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["identity", "split", "pos|loyalty_members|1", "web|user_id|u7", "--config", cfg])
    assert r.exit_code == 0, r.output
    listed = json.loads(runner.invoke(main, ["identity", "overrides", "--json", "--config", cfg]).output)
    assert [(o["action"], o["record_a"]) for o in listed] == [("split", "pos|loyalty_members|1")]  # last word wins
    r = runner.invoke(main, ["identity", "merge", "not-a-key", "web|user_id|u7", "--config", cfg])
    assert r.exit_code == 2 and "record_a" in r.output
    assert runner.invoke(main, ["identity", "unpair", "web|user_id|u7", "pos|loyalty_members|1",
                                "--config", cfg]).exit_code == 0
    assert json.loads(runner.invoke(main, ["identity", "overrides", "--json", "--config", cfg]).output) == []

    # a hand-edited file with a bad line: the error names the file, row and field, not the value
    name = yaml.safe_load((root / "cdp.yaml").read_text()).get("identity", {}).get("overrides_file",
                                                                                  "identity_overrides.csv")
    (root / name).write_text("action,record_a,record_b\nmerge,a|b|c,d|e|f\nfuse,secret@x.com|e|1,d|e|f\n")
    r = runner.invoke(main, ["identity", "overrides", "--config", cfg])
    assert r.exit_code == 2 and "row 3, field action" in r.output and "secret" not in r.output


# --------------------------------------------------------------------------- weighed conflicts
def _state(names, dobs):
    from core.settings.identity import IdentitySettings
    from identity.clustering import _ClusterState

    n = len(names)
    cols = {"rid": list(range(n)), "source": ["pos"] * n, "entity": ["loyalty_members"] * n,
            "loyalty_id": [None] * n, "user_id": [None] * n, "subscriber_id": [None] * n, "anonymous_id": [None] * n,
            "email_canon": [None] * n, "phone": [None] * n, "first_name": names, "first_name_canon": names,
            "last_name": ["muehlberg"] * n, "dob": dobs}
    return _ClusterState(IdentitySettings(), n, cols)


def test_a_conflict_that_is_only_the_edges_own_disagreement_is_weighed_not_refused():
    # three copies of imogen, one record where the first name was replaced (same date of birth:
    # without it, two first names are a household, tests/test_identity_households.py): the
    # Splink edge's score has weighed that; the clusters hold nothing else that disagrees
    s = _state(["imogen", "imogen", "imogen", "jesse", "tom"], ["1930-05-18"] * 4 + [None])
    s.merge(0, 1)
    s.merge(s.find(0), 2)
    assert s.can_merge(s.find(0), 3, "splink", 0.995, 2, 3) == (True, None)
    # a chain: that jesse joined to a tom; merging the two with imogen's cluster over the jesse
    # record would bring in a first name the edge never weighed
    s.merge(3, 4)
    assert s.can_merge(s.find(0), s.find(3), "splink", 0.995, 2, 3) == (False, "conflict:first_name")
    assert s.can_merge(s.find(0), s.find(3), "splink", 0.99995, 2, 3) == (True, None)  # strong enough anyway
    # the same with dates of birth: an undated imogen joined to an imogen born in 1971
    d = _state(["imogen", "imogen", "imogen"], ["1930-05-18", None, "1971-01-02"])
    d.merge(1, 2)
    assert d.can_merge(0, d.find(1), "splink", 0.995, 0, 1) == (False, "conflict:date_of_birth")
    assert d.can_merge(0, d.find(1), "splink", 0.99995, 0, 1) == (True, None)
