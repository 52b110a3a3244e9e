"""Identity on hand-made raw rows (Splink off: deterministic rules + clustering + stable ids)."""

import json

import duckdb
import pytest

from core.settings.identity import IdentitySettings
from identity.pipeline import resolve

TS = "2025-01-01 10:00:00+00"


def insert(con, table, source="pos", **cols):
    cols = {**cols, "_source": source, "_file": "test", "_row": 1, "_load_id": "L", "_loaded_at": TS}
    names = ", ".join(f'"{k}"' for k in cols)
    con.execute(f"INSERT INTO raw.{table} ({names}) VALUES ({', '.join('?' for _ in cols)})", list(cols.values()))


def member(con, loyalty_id, first, last, email=None, phone=None, source="pos", dob=None):
    insert(con, "pos_loyalty_members", source, loyalty_id=loyalty_id, first_name=first, last_name=last, email=email,
           phone=phone, date_of_birth=dob, enrolled_at=TS)


def subscriber(con, sid, email, first=None, last=None):
    insert(con, "email_subscribers", "email", subscriber_id=sid, email=email, first_name=first, last_name=last,
           status="subscribed", created_at=TS)


def ticket(con, tid, name=None, email=None, phone=None):
    insert(con, "support_tickets", "support", ticket_id=tid, requester_name=name, requester_email=email,
           requester_phone=phone, created_at=TS)


def receipt(con, tid, loyalty_id=None, email=None, phone=None, card=None):
    insert(con, "pos_transactions", "pos", transaction_id=tid, store_id="S1", occurred_at=TS, loyalty_id=loyalty_id,
           email=email, phone=phone, total=1.0, card_token=card)


def web(con, mid, anon, user=None, email=None, first=None, phone=None):
    traits = json.dumps({k: v for k, v in {"email": email, "first_name": first, "phone": phone}.items() if v})
    insert(con, "web_events", "web", messageId=mid, type="identify", anonymousId=anon, userId=user, traits=traits,
           timestamp=TS)


def pid(con, key):
    return con.sql("SELECT person_id FROM identity.graph WHERE record_key = ?", params=[key]).fetchall()[0][0]


def same(con, *keys):
    return len({pid(con, k) for k in keys}) == 1


def test_merge_protection_loyalty_ids_of_one_source(env):
    cfg, con = env
    member(con, "L1", "Anna", "Jones", email="anna.jones@gmail.com", phone="07700900001")
    member(con, "L2", "Anna", "Jones", email="anna.jones@gmail.com", phone="07700900001")
    member(con, "M9", "Anna", "Jones", email="anna.jones@gmail.com", source="pos_outlet")  # other system
    res = resolve(cfg, con)
    assert not same(con, "pos|loyalty_members|L1", "pos|loyalty_members|L2")
    assert same(con, "pos|loyalty_members|L1", "pos_outlet|loyalty_members|M9")
    assert res.unique_id_conflicts == 0
    reasons = {r[0] for r in con.sql("SELECT reason FROM identity.edges WHERE decision = 'refused'").fetchall()}
    assert "merge_protection:loyalty_id" in reasons


def test_login_user_ids_never_merge(env):
    cfg, con = env
    web(con, "m1", "a1", "U1", email="sam@x.co.uk")
    web(con, "m2", "a2", "U2", email="sam@x.co.uk")
    resolve(cfg, con)
    assert not same(con, "web|user_id|U1", "web|user_id|U2")
    assert same(con, "web|anonymous_id|a1", "web|user_id|U1")


def test_household_phone_needs_a_compatible_first_name(env):
    cfg, con = env
    member(con, "L1", "John", "Smith", phone="01632 960001")
    subscriber(con, "s1", "x@y.com", "Mary", "Smith")
    ticket(con, "T1", "Mary Smith", phone="+44 1632 960001")
    ticket(con, "T2", "Jon Smith", phone="01632960001")  # a typo of John
    receipt(con, "R1", phone="01632 960001")  # nameless: which Smith? neither
    resolve(cfg, con)
    assert not same(con, "pos|loyalty_members|L1", "support|tickets|T1")
    assert same(con, "pos|loyalty_members|L1", "support|tickets|T2")
    assert not same(con, "pos|transactions|R1", "pos|loyalty_members|L1")
    assert not same(con, "pos|transactions|R1", "support|tickets|T1")
    reasons = dict(con.sql("SELECT reason, count(*) FROM identity.edges GROUP BY reason").fetchall())
    assert any(r.startswith("conflict:first_name") for r in reasons)
    assert any(r.startswith("ambiguous:phone") for r in reasons)


def test_junk_values_link_nothing(env):
    cfg, con = env
    subscriber(con, "s1", "test@test.com", "Ann", "A")
    subscriber(con, "s2", "TEST@test.com ", "Bob", "B")
    ticket(con, "T1", "Cy D", email="test@test.com", phone="0000000000")
    ticket(con, "T2", "Di E", phone="00000 000000")
    resolve(cfg, con)
    assert con.sql("SELECT count(DISTINCT person_id) FROM identity.graph").fetchall()[0][0] == 4
    assert con.sql("SELECT count(email) + count(phone) FROM identity.records").fetchall()[0][0] == 0


def test_cluster_size_cap_holds_giant_clusters_apart(env, tmp_path):
    cfg, con = env
    settings = IdentitySettings.model_validate({"splink": {"enabled": False}, "max_cluster_size": 3})
    for i in range(6):
        ticket(con, f"T{i}", f"Pat Lee{i}", email="shared@corp.example.co.uk")
    res = resolve(cfg, con, settings=settings)
    sizes = [r[0] for r in con.sql("SELECT count(*) FROM identity.graph GROUP BY person_id").fetchall()]
    assert max(sizes) <= 3 and res.held_clusters >= 1
    assert con.sql("SELECT count(*) FROM identity.edges WHERE reason = 'cluster_size_cap'").fetchall()[0][0] > 0
    assert con.sql("SELECT bool_or(held_for_review) FROM identity.graph").fetchall()[0][0]


def test_edge_log_records_every_decision_with_a_reason(env):
    cfg, con = env
    member(con, "L1", "Ann", "Lee", email="ann@lee.example.org.uk", phone="07700900002")
    receipt(con, "R1", loyalty_id="L1")
    receipt(con, "R2", email="ANN@lee.example.org.uk")
    web(con, "m1", "a1", "U1", email="ann@lee.example.org.uk")
    res = resolve(cfg, con)
    rows = con.sql("SELECT method, decision, reason FROM identity.edges").fetchall()
    assert rows and all(d in ("accepted", "refused", "redundant") and r for _, d, r in rows)
    assert {m for m, _, _ in rows} >= {"deterministic:loyalty_id", "deterministic:email", "deterministic:anonymous_id"}
    assert res.persons == 1
    methods = dict(con.sql("SELECT record_key, match_method FROM identity.graph").fetchall())
    assert methods["pos|transactions|R1"] == "deterministic:loyalty_id"


def test_stable_ids_merge_split_and_rebuild(env, tmp_path):
    cfg, con = env
    subscriber(con, "sA", "alex@a.example.org.uk", "Alex", "Hart")
    ticket(con, "tA", "Alex Hart", email="alex@a.example.org.uk")
    member(con, "LB", "Alex", "Hart", email="hart@b.example.org.uk")
    r1 = resolve(cfg, con, run_id="r1")
    a, b = pid(con, "email|subscribers|sA"), pid(con, "pos|loyalty_members|LB")
    assert a != b and r1.changes == {"new": 2}

    # merge: one web account seen with both emails
    web(con, "m1", "dev1", "U1", email="alex@a.example.org.uk")
    web(con, "m2", "dev2", "U1", email="hart@b.example.org.uk")
    r2 = resolve(cfg, con, run_id="r2")
    assert pid(con, "pos|loyalty_members|LB") == a == pid(con, "email|subscribers|sA")  # survivor: more records
    changes = con.sql("SELECT person_id, change, other_person_id FROM identity.changes WHERE run_id = 'r2'").fetchall()
    assert (b, "merged_into", a) in changes
    assert r2.changes.get("merged_into") == 1

    # split: the bridge goes away; the larger part keeps the id, the other gets a new one
    con.execute("DELETE FROM raw.web_events WHERE anonymousId = 'dev2'")
    resolve(cfg, con, run_id="r3")
    b3 = pid(con, "pos|loyalty_members|LB")
    assert pid(con, "email|subscribers|sA") == a and b3 not in (a, b)
    changes = con.sql("SELECT person_id, change, other_person_id FROM identity.changes WHERE run_id = 'r3'").fetchall()
    assert (b3, "split_from", a) in changes
    hist = con.sql("SELECT run_id, person_id FROM identity.id_history WHERE record_key = 'pos|loyalty_members|LB' "
                   "ORDER BY run_seq").fetchall()
    assert [h[1] for h in hist] == [b, a, b3]

    # a full rebuild from the same data gives the same ids as a first run on that data
    first = dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())
    con.execute("DROP SCHEMA identity CASCADE")
    resolve(cfg, con, run_id="rebuild1")
    again = dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())
    con.execute("DROP SCHEMA identity CASCADE")
    resolve(cfg, con, run_id="rebuild2")
    assert again == dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())
    assert set(again) == set(first)


def test_golden_record_survivorship_with_sources(env):
    cfg, con = env
    member(con, "L1", "ROBERT", "Brown", email="rb@x.example.org.uk", phone="07700900003", dob="1980-02-03")
    ticket(con, "T1", "Bob Brown", email="rb@x.example.org.uk", phone="07700 900004")
    subscriber(con, "s1", "rb@x.example.org.uk", "Robert", "Brown")
    resolve(cfg, con)
    g = con.sql("SELECT first_name, first_name_source, email, phone, date_of_birth, date_of_birth_source "
                "FROM identity.golden").fetchall()
    assert len(g) == 1
    first, first_src, email, phone, dob, dob_src = g[0]
    assert first == "Robert" and first_src in ("pos", "email")  # most frequent (nickname-aware)
    assert email == "rb@x.example.org.uk" and phone.startswith("+44") and str(dob) == "1980-02-03" and dob_src == "pos"


def test_golden_record_shows_the_spelling_most_records_use_whatever_the_row_order(env):
    cfg, con = env
    for i, (first, email) in enumerate([("bob", "B.Ray+shop@gmail.com"), ("Robert", "b.ray@gmail.com"),
                                        ("ROBERT", "bray@gmail.com"), ("Robert", "b.ray@gmail.com")]):
        subscriber(con, f"s{i}", email, first, "Ray")  # all seen at the same moment: ties everywhere
    resolve(cfg, con)
    first = con.sql("SELECT first_name, email FROM identity.golden").fetchall()
    con.execute("CREATE TABLE raw.shuffled AS SELECT * FROM raw.email_subscribers ORDER BY subscriber_id DESC")
    con.execute("DELETE FROM raw.email_subscribers")
    con.execute("INSERT INTO raw.email_subscribers SELECT * FROM raw.shuffled")
    resolve(cfg, con)
    assert first == [("Robert", "b.ray@gmail.com")] == con.sql("SELECT first_name, email FROM identity.golden").fetchall()


def test_a_run_that_fails_part_way_leaves_the_previous_graph_whole(env, monkeypatch):
    from identity import golden

    cfg, con = env
    member(con, "L1", "Ann", "Lee", email="ann@lee.example.org.uk")
    resolve(cfg, con, run_id="good")
    before = {t: con.sql(f"SELECT * FROM identity.{t} ORDER BY ALL").fetchall() for t in ("records", "graph", "golden")}
    subscriber(con, "s1", "ann@lee.example.org.uk", "Ann", "Lee")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(golden, "build_golden", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve(cfg, con, run_id="bad")
    # the records and edges already written for the failed run were never swapped in
    assert before == {t: con.sql(f"SELECT * FROM identity.{t} ORDER BY ALL").fetchall() for t in before}
    assert con.sql("SELECT DISTINCT run_id FROM identity.runs UNION SELECT DISTINCT run_id FROM identity.id_history "
                   "UNION SELECT DISTINCT run_id FROM identity.changes").fetchall() == [("good",)]
    monkeypatch.undo()
    resolve(cfg, con, run_id="next")
    assert con.sql("SELECT count(*) FROM identity.records").fetchall()[0][0] == 2


def test_receipts_known_only_by_their_card_follow_the_one_person_who_used_it(env):
    cfg, con = env
    member(con, "L1", "Ann", "Lee", email="ann@lee.example.org.uk")
    member(con, "L2", "Bo", "Kay", email="bo@kay.example.org.uk")
    receipt(con, "T1", loyalty_id="L1", card="ct_ann")       # Ann's card, seen with her loyalty id
    receipt(con, "T2", card="ct_ann")                        # later, card only
    receipt(con, "T3", email="bo@kay.example.org.uk", card="ct_shared")
    receipt(con, "T4", loyalty_id="L1", card="ct_shared")    # a card both have paid with
    receipt(con, "T5", card="ct_shared")
    receipt(con, "T6", card="ct_new")                        # a card no known receipt used
    receipt(con, "T7", card="ct_new")
    res = resolve(cfg, con)
    assert same(con, "pos|loyalty_members|L1", "pos|transactions|T1", "pos|transactions|T2")
    assert same(con, "pos|loyalty_members|L2", "pos|transactions|T3")
    # a card two people paid with, or one no known receipt used: the receipt stays unresolved
    placed = {r[0] for r in con.sql("SELECT record_key FROM identity.graph").fetchall()}
    assert {"pos|transactions|T5", "pos|transactions|T6", "pos|transactions|T7"}.isdisjoint(placed)
    assert not same(con, "pos|loyalty_members|L1", "pos|loyalty_members|L2")  # a card never links two profiles
    reasons = dict(con.sql("SELECT reason, count(*) FROM identity.edges WHERE method = 'deterministic:card_token' "
                           "GROUP BY ALL").fetchall())
    assert reasons == {"receipt follows the person whose receipts used its card_token": 1,
                       "ambiguous:card_token held by 2 clusters": 1}
    assert res.unique_id_conflicts == 0


def test_works_with_a_subset_of_sources(env):
    cfg, con = env
    con.execute("DROP TABLE raw.web_events")
    con.execute("DROP TABLE raw.email_events")
    member(con, "L1", "Ann", "Lee", email="ann@lee.example.org.uk")
    ticket(con, "T1", "Ann Lee", email="ann@lee.example.org.uk")
    res = resolve(cfg, con)
    assert res.persons == 1
    sub = IdentitySettings.model_validate({"splink": {"enabled": False}, "sources": ["support"]})
    res = resolve(cfg, con, settings=sub, schema="identity_support_only")
    assert res.records == 1


def test_recall_on_linkable_pairs_counts_only_pairs_with_shared_data(env, tmp_path):
    """Truth: one person with a loyalty card and a subscription sharing an email (linkable by
    identifiers), a ticket under the same full name but another email (linkable by name only)
    and a receipt whose only phone appears nowhere else (linkable by nothing)."""
    from identity.evaluate import evaluate

    cfg, con = env
    member(con, "L1", "Nia", "Okafor", email="nia.okafor@gmail.com")
    subscriber(con, "S1", "nia.okafor@gmail.com")
    ticket(con, "T1", name="Nia Okafor", email="nia.work@firm.co.uk")
    receipt(con, "R1", phone="07700 900555")
    resolve(cfg, con)
    truth = tmp_path / "truth.csv"
    truth.write_text("source,entity,record_id,person_id,identifiable\n" + "".join(
        f"{s},{e},{r},P1,true\n" for s, e, r in (("pos", "loyalty_members", "L1"), ("email", "subscribers", "S1"),
                                                 ("support", "tickets", "T1"), ("pos", "transactions", "R1"))))
    ev = evaluate(con, truth)
    assert ev["true_pairs"] == 6 and ev["true_positive_pairs"] == 1  # only the card and the subscription
    assert ev["linkable_true_pairs_by_identifiers"] == 1 and ev["pairwise_recall_linkable_by_identifiers"] == 1.0
    assert ev["linkable_true_pairs"] == 3 and ev["pairwise_recall_linkable"] == pytest.approx(1 / 3)


def test_new_id_already_taken_is_salted():
    """Run 1: {a, b, c} gets P(a). Run 2 splits off {a}: {b, c} keeps P(a) (larger part), so {a}
    cannot take its content id P(a) again and gets the salted one."""
    from identity.stable_ids import assign_ids, content_id

    con = duckdb.connect()
    con.execute("CREATE SCHEMA identity")
    con.execute("CREATE TABLE identity.records AS SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) t(rid, record_key)")
    con.execute("CREATE TEMP TABLE id_clusters AS SELECT * FROM (VALUES (1, 1), (2, 1), (3, 1)) t(rid, cluster_id)")
    assert assign_ids(con, "r1", 1) == {"new": 1}
    assert con.sql("SELECT DISTINCT person_id FROM id_person").fetchall() == [(content_id("a"),)]
    con.execute("CREATE OR REPLACE TEMP TABLE id_clusters AS SELECT * FROM (VALUES (1, 1), (2, 2), (3, 2)) t(rid, cluster_id)")
    assert assign_ids(con, "r2", 2) == {"split_from": 1}
    ids = dict(con.sql("SELECT cluster_id, person_id FROM id_person").fetchall())
    assert ids == {2: content_id("a"), 1: content_id("a", 1)}
