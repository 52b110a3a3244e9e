"""Declarative segments: validation, safe compilation and evaluation on a small real DuckDB.

The warehouse here is a hand-made DuckDB file holding the few tables segments read
(marts.customer_traits, the intermediate event tables, a scoring table); every evaluation is
compared with a hand-written SQL query over the same tables.
"""

import datetime as dt
import json
import time

import pytest
import yaml
from click.testing import CliRunner

from core.warehouse import fetch_all, fetch_value, open_warehouse
from segments.compiler import compile_segment, quote
from segments.evaluator import write_segments
from segments.model import SegmentFileError, load_segments, parse_segments

AS_OF = dt.datetime(2026, 6, 30, 23, 59, 59)
DAY = dt.timedelta(days=1)
INJECTION = "x'); DROP TABLE marts.customers; --"
UNICODE = "Zoë's ñandú — 日本 🎉"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("segments") / "wh.duckdb"
    with open_warehouse(path) as con:
        for schema in ("marts", "intermediate", "scoring"):
            con.execute(f"CREATE SCHEMA {schema}")
        con.execute("CREATE TABLE marts.customers (person_id VARCHAR, first_name VARCHAR)")
        con.execute("""CREATE TABLE marts.customer_traits (
            person_id VARCHAR, order_count INTEGER, revenue DOUBLE, recency_days INTEGER,
            lifecycle_stage VARCHAR, rfm_segment VARCHAR, preferred_category VARCHAR,
            last_order_at TIMESTAMP, email_opens_30d INTEGER, as_of TIMESTAMP)""")
        traits = [
            # person, orders, revenue, recency, stage, rfm, preferred category, last order, opens
            ("p1", 5, 800.0, 3, "active", "champions", "footwear", AS_OF - 3 * DAY, 4),
            ("p2", 1, 40.0, 200, "lapsed", "lost", "home", AS_OF - 200 * DAY, 0),
            ("p3", 0, 0.0, None, "never_purchased", None, None, None, 2),
            ("p4", 3, 300.0, 40, "active", "loyal", INJECTION, AS_OF - 40 * DAY, 1),
            ("p5", 2, 120.5, 100, "lapsing", "at_risk", UNICODE, AS_OF - 100 * DAY, 0),
        ]
        con.executemany("INSERT INTO marts.customer_traits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(*t, AS_OF) for t in traits])
        con.executemany("INSERT INTO marts.customers VALUES (?, ?)", [(t[0], "n") for t in traits])
        con.execute("CREATE TABLE intermediate.int_orders (order_key VARCHAR, person_id VARCHAR, ordered_at TIMESTAMP, order_total DOUBLE)")
        con.executemany("INSERT INTO intermediate.int_orders VALUES (?, ?, ?, ?)", [
            ("o1", "p1", AS_OF - 3 * DAY, 100.0), ("o2", "p1", AS_OF - 10 * DAY, 250.0),
            ("o3", "p1", AS_OF - 29 * DAY, 50.0), ("o4", "p4", AS_OF - 40 * DAY, 300.0),
            ("o5", "p2", AS_OF - 200 * DAY, 40.0), ("o6", "p5", AS_OF - 100 * DAY, 120.5),
            ("o7", None, AS_OF - 1 * DAY, 10.0),  # an order nobody is attached to
            ("o8", "p4", AS_OF + 1 * DAY, 99.0),  # after as_of: never counted
        ])
        con.execute("CREATE TABLE intermediate.int_order_lines (order_key VARCHAR, person_id VARCHAR, ordered_at TIMESTAMP, category VARCHAR, line_total DOUBLE)")
        con.executemany("INSERT INTO intermediate.int_order_lines VALUES (?, ?, ?, ?, ?)", [
            ("o1", "p1", AS_OF - 3 * DAY, "footwear", 60.0), ("o1", "p1", AS_OF - 3 * DAY, "footwear", 40.0),
            ("o2", "p1", AS_OF - 10 * DAY, "home", 250.0), ("o4", "p4", AS_OF - 40 * DAY, "footwear", 300.0),
            ("o6", "p5", AS_OF - 100 * DAY, UNICODE, 120.5),
        ])
        con.execute("CREATE TABLE intermediate.int_web_product_events (person_id VARCHAR, session_id VARCHAR, event_name VARCHAR, sku VARCHAR, category VARCHAR, occurred_at TIMESTAMP)")
        con.executemany("INSERT INTO intermediate.int_web_product_events VALUES (?, ?, ?, ?, ?, ?)", [
            *[("p2", "s1", "product_viewed", "S1", "electronics", AS_OF - d * DAY) for d in (1, 2, 6)],
            *[("p3", "s2", "product_viewed", "S1", "electronics", AS_OF - d * DAY) for d in (1, 2, 8)],  # 3rd is too old
            ("p3", "s2", "product_added", "S1", "electronics", AS_OF - 2 * DAY),
            ("p5", "s3", "product_viewed", "S9", INJECTION, AS_OF - 1 * DAY),
        ])
        con.execute("CREATE TABLE intermediate.int_email_activity (person_id VARCHAR, event_type VARCHAR, occurred_at TIMESTAMP)")
        con.executemany("INSERT INTO intermediate.int_email_activity VALUES (?, ?, ?)", [
            ("p2", "open", AS_OF - 5 * DAY), ("p2", "click", AS_OF - 40 * DAY), ("p3", "click", AS_OF - 1 * DAY),
            ("p5", "open", AS_OF - 31 * DAY),
        ])
        con.execute("CREATE TABLE scoring.churn_predictions (person_id VARCHAR, churn_probability DOUBLE, risk_tier VARCHAR)")
        con.executemany("INSERT INTO scoring.churn_predictions VALUES (?, ?, ?)", [
            ("p1", 0.05, "low"), ("p2", 0.9, "high"), ("p4", 0.4, "medium"), ("p5", 0.7, "high")])
    return path


def one(where, name="s") -> dict:
    return {"segments": [{"name": name, "description": "d", "where": where}]}


def members(warehouse, where) -> set[str]:
    """Compile and run one segment's query read-only, as the evaluator does."""
    (segment,) = parse_segments(one(where)).segments
    compiled = compile_segment(segment, AS_OF)
    with open_warehouse(warehouse, read_only=True) as con:
        return {r[0] for r in fetch_all(con, compiled.sql, compiled.params)}


def expected(warehouse, sql: str, params=None) -> set[str]:
    with open_warehouse(warehouse, read_only=True) as con:
        return {r[0] for r in fetch_all(con, sql, params or [])}


T = "SELECT person_id FROM marts.customer_traits WHERE "


@pytest.mark.parametrize("where, hand_written", [
    ({"trait": "revenue", "op": "=", "value": 800}, T + "revenue = 800"),
    ({"trait": "revenue", "op": "!=", "value": 800}, T + "revenue <> 800"),
    ({"trait": "revenue", "op": "<", "value": 120.5}, T + "revenue < 120.5"),
    ({"trait": "revenue", "op": "<=", "value": 120.5}, T + "revenue <= 120.5"),
    ({"trait": "order_count", "op": ">", "value": 2}, T + "order_count > 2"),
    ({"trait": "order_count", "op": ">=", "value": 2}, T + "order_count >= 2"),
    ({"trait": "lifecycle_stage", "op": "in", "value": ["active", "lapsed"]}, T + "lifecycle_stage IN ('active', 'lapsed')"),
    ({"trait": "lifecycle_stage", "op": "not in", "value": ["active", "lapsed"]}, T + "lifecycle_stage NOT IN ('active', 'lapsed')"),
    ({"trait": "recency_days", "op": "between", "value": [3, 100]}, T + "recency_days BETWEEN 3 AND 100"),
    ({"trait": "rfm_segment", "op": "is null"}, T + "rfm_segment IS NULL"),
    ({"trait": "rfm_segment", "op": "is not null"}, T + "rfm_segment IS NOT NULL"),
    # A missing value never matches a comparison; `not` is then the exact complement.
    ({"trait": "recency_days", "op": "<", "value": 50}, T + "recency_days < 50"),
    ({"not": {"trait": "recency_days", "op": "<", "value": 50}}, T + "recency_days IS NULL OR recency_days >= 50"),
    ({"trait": "last_order_at", "op": ">=", "value": dt.date(2026, 5, 1)}, T + "last_order_at >= DATE '2026-05-01'"),
    ({"trait": "last_order_at", "op": "<", "value": "2026-05-01 12:00:00"}, T + "last_order_at < TIMESTAMP '2026-05-01 12:00:00'"),
    ({"trait": "churn_probability", "op": ">", "value": 0.5}, "SELECT person_id FROM scoring.churn_predictions WHERE churn_probability > 0.5"),
    ({"trait": "risk_tier", "op": "=", "value": "medium"}, "SELECT person_id FROM scoring.churn_predictions WHERE risk_tier = 'medium'"),
])
def test_each_operator_matches_hand_written_sql(warehouse, where, hand_written):
    got = members(warehouse, where)
    assert got == expected(warehouse, hand_written)
    assert got, "every case selects someone, so a wrong query cannot pass by returning nothing"


W = "(ordered_at > TIMESTAMP '2026-06-30 23:59:59' - INTERVAL {d} DAY AND ordered_at <= TIMESTAMP '2026-06-30 23:59:59')"


@pytest.mark.parametrize("where, hand_written", [
    ({"event": "ordered", "within_days": 30},
     f"SELECT DISTINCT person_id FROM intermediate.int_orders WHERE person_id IS NOT NULL AND {W.format(d=30)}"),
    ({"event": "ordered", "within_days": 30, "at_least": 3},
     f"SELECT person_id FROM intermediate.int_orders WHERE {W.format(d=30)} GROUP BY 1 HAVING count(*) >= 3"),
    ({"event": "ordered", "within_days": 45, "min_total": 300},
     f"SELECT person_id FROM intermediate.int_orders WHERE person_id IS NOT NULL AND {W.format(d=45)} GROUP BY 1 HAVING sum(order_total) >= 300"),
    ({"event": "ordered", "within_days": 30, "category": "footwear"},
     f"SELECT DISTINCT person_id FROM intermediate.int_order_lines WHERE category = 'footwear' AND {W.format(d=30)}"),
    ({"event": "ordered", "within_days": 30, "category": "footwear", "min_total": 100},
     f"SELECT person_id FROM intermediate.int_order_lines WHERE category = 'footwear' AND {W.format(d=30)} GROUP BY 1 HAVING sum(line_total) >= 100"),
    ({"event": "viewed_product", "category": "electronics", "within_days": 7, "at_least": 3},
     "SELECT person_id FROM intermediate.int_web_product_events WHERE event_name = 'product_viewed' AND category = 'electronics' "
     "AND occurred_at > TIMESTAMP '2026-06-23 23:59:59' GROUP BY 1 HAVING count(*) >= 3"),
    ({"event": "added_to_cart", "within_days": 7},
     "SELECT DISTINCT person_id FROM intermediate.int_web_product_events WHERE event_name = 'product_added' AND occurred_at > TIMESTAMP '2026-06-23 23:59:59'"),
    ({"event": "email_opened", "within_days": 30},
     "SELECT DISTINCT person_id FROM intermediate.int_email_activity WHERE event_type = 'open' AND occurred_at > TIMESTAMP '2026-05-31 23:59:59'"),
    ({"event": "email_clicked", "within_days": 60},
     "SELECT DISTINCT person_id FROM intermediate.int_email_activity WHERE event_type = 'click' AND occurred_at > TIMESTAMP '2026-05-01 23:59:59'"),
])
def test_each_window_kind_matches_hand_written_sql(warehouse, where, hand_written):
    got = members(warehouse, where)
    assert got == expected(warehouse, hand_written)
    assert got


def test_windows_are_relative_to_as_of_and_exclude_later_events(warehouse):
    (segment,) = parse_segments(one({"event": "ordered", "within_days": 5})).segments
    with open_warehouse(warehouse, read_only=True) as con:
        at = {}
        for as_of in (AS_OF, AS_OF - 5 * DAY, AS_OF + 1 * DAY, AS_OF + 2 * DAY):
            c = compile_segment(segment, as_of)
            at[as_of] = {r[0] for r in fetch_all(con, c.sql, c.params)}
    assert at[AS_OF] == {"p1"}  # o1, 3 days ago; o8 (p4) is after as_of
    assert at[AS_OF - 5 * DAY] == set()  # as of 5 days earlier o1 had not happened
    assert at[AS_OF + 1 * DAY] == {"p1", "p4"}  # o8 is now inside the window
    assert at[AS_OF + 2 * DAY] == {"p4"}  # (as_of - 5 days, as_of]: o1, exactly 5 days before, is out


def test_nested_and_or_not(warehouse):
    where = {"all": [
        {"any": [
            {"trait": "lifecycle_stage", "op": "in", "value": ["lapsing", "lapsed"]},
            {"all": [{"event": "ordered", "within_days": 30, "at_least": 2}, {"trait": "revenue", "op": ">", "value": 500}]},
        ]},
        {"not": {"trait": "risk_tier", "op": "=", "value": "high"}},
    ]}
    # p1 (2+ orders in 30 days, 800 spent, low risk); p2 and p5 are lapsed/lapsing but high risk.
    assert members(warehouse, where) == {"p1"}
    assert members(warehouse, where["all"][0]) == {"p1", "p2", "p5"}
    assert members(warehouse, {"any": [{"not": {"trait": "revenue", "op": ">", "value": 0}},
                                       {"event": "email_clicked", "within_days": 7}]}) == {"p3"}


def test_injection_in_values_is_a_plain_value_and_the_warehouse_is_unharmed(warehouse, tmp_path):
    attempts = {
        "trait_text": {"trait": "preferred_category", "op": "=", "value": INJECTION},
        "trait_list": {"trait": "preferred_category", "op": "in", "value": [INJECTION, "a' OR '1'='1"]},
        "quote_or_true": {"trait": "preferred_category", "op": "=", "value": "' OR 1=1 --"},
        "category": {"event": "viewed_product", "within_days": 30, "category": INJECTION},
        "unicode": {"trait": "preferred_category", "op": "=", "value": UNICODE},
        "unicode_category": {"event": "ordered", "within_days": 365, "category": UNICODE},
        "timestamp_text": {"trait": "last_order_at", "op": "<", "value": "2026-01-01"},
    }
    segment_file = parse_segments({"segments": [
        {"name": name, "description": f"{INJECTION} {UNICODE}", "where": where} for name, where in attempts.items()]})
    for segment in segment_file.segments:
        sql = compile_segment(segment, AS_OF).sql
        assert "DROP" not in sql and "1=1" not in sql and "ñandú" not in sql, sql
    copy = tmp_path / "wh.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    with open_warehouse(copy) as con:
        write_segments(con, segment_file)
        got = {}
        for segment, person in fetch_all(con, "SELECT segment, person_id FROM segments.declarative_membership"):
            got.setdefault(segment, set()).add(person)
        # Matched exactly as the text it is - the row that holds that text, nobody else.
        assert got["trait_text"] == {"p4"} and got["trait_list"] == {"p4"} and got["category"] == {"p5"}
        assert got["unicode"] == {"p5"} and got["unicode_category"] == {"p5"}
        assert "quote_or_true" not in got
        assert fetch_value(con, "SELECT count(*) FROM marts.customers") == 5
        assert fetch_value(con, "SELECT description FROM segments.definitions WHERE segment = 'unicode'") == f"{INJECTION} {UNICODE}"
        stored = json.loads(fetch_value(con, "SELECT definition FROM segments.definitions WHERE segment = 'trait_text'"))
        assert stored == attempts["trait_text"]


@pytest.mark.parametrize("where, path, message", [
    ({"trait": 'revenue"; DROP TABLE marts.customers; --', "op": "=", "value": 1}, "where.trait", "unknown trait"),
    ({"trait": "revenue\" > 0 OR \"x", "op": "=", "value": 1}, "where.trait", "unknown trait"),
    ({"trait": "revenue", "op": "= 1; DROP TABLE marts.customers; --", "value": 1}, "where.op", "unknown operator"),
    ({"trait": "revenue", "op": "like", "value": 1}, "where.op", "use one of: =, !="),
    ({"trait": "revenue", "op": ">", "value": "1 OR 1=1"}, "where.value", "revenue is a number"),
    ({"trait": "revenue", "op": ">", "value": True}, "where.value", "revenue is a number"),
    ({"trait": "lifecycle_stage", "op": "=", "value": "lapsd"}, "where.value", "did you mean 'lapsed'"),
    ({"trait": "lifecycle_stage", "op": ">", "value": "new"}, "where.value", "compare it with =, !=, in or not in"),
    ({"trait": "revenue", "op": "in", "value": 5}, "where.value", "needs a non-empty list"),
    ({"trait": "revenue", "op": "between", "value": [10, 1]}, "where.value", "swap them"),
    ({"trait": "revenue", "op": "is null", "value": 1}, "where.value", "takes no value"),
    ({"trait": "revenue", "op": ">"}, "where.value", "needs a `value`"),
    ({"trait": "last_order_at", "op": ">", "value": "last tuesday"}, "where.value", "write a date like"),
    ({"trait": "order_count", "op": ">", "value": 1e40}, "where.value", "whole number between"),
    ({"trait": "order_count", "op": ">", "value": 2.5}, "where.value", "is a whole number"),
    ({"trait": "revenue", "op": ">", "value": 1e40}, "where.value", "must be between"),
    ({"trait": "revenue", "op": ">", "value": float("nan")}, "where.value", "must be between"),
    ({"event": "ordered", "within_days": 7, "at_least": 10**40}, "where.at_least", "at most"),
    ({"event": "ordered", "within_days": 7, "min_total": 1e40}, "where.min_total", "between 0 and"),
    ({"event": "ordered", "within_days": 0}, "where.within_days", "between 1 and 3650"),
    ({"event": "ordered", "within_days": "30 days"}, "where.within_days", "whole number of days"),
    ({"event": "ordered", "within_days": 7, "at_least": 0}, "where.at_least", "wrap the condition in `not:`"),
    ({"event": "orderd", "within_days": 7}, "where.event", "did you mean 'ordered'"),
    ({"event": "ordered; DROP TABLE x", "within_days": 7}, "where.event", "unknown event"),
    ({"event": "email_opened", "within_days": 7, "min_total": 5}, "where", "min_total applies to orders only"),
    ({"event": "email_opened", "within_days": 7, "category": "x"}, "where", "has no product category"),
    ({"event": "ordered", "within_days": 7, "colour": "red"}, "where.colour", "unknown key"),
    ({"all": []}, "where.all", "non-empty list"),
    ({"all": [{"trait": "revenue", "op": ">", "value": 1}], "any": []}, "where", "must stand alone"),
    ({"trait": "revenue", "event": "ordered"}, "where", "not both"),
    ({"or": []}, "where", "expected one of the keys all, any, not, trait, event"),
    ({"all": [{"any": [{"trait": "revnue", "op": ">", "value": 1}]}]}, "where.all[0].any[0].trait", "did you mean 'revenue'"),
])
def test_invalid_conditions_name_the_segment_the_path_and_the_fix(where, path, message):
    with pytest.raises(SegmentFileError) as e:
        parse_segments(one(where, name="my_segment"))
    text = str(e.value)
    assert f"segment 'my_segment' (segments[0]) {path}" in text, text
    assert message in text, text


@pytest.mark.parametrize("name, message", [
    ("x'; DROP TABLE marts.customers; --", "is not a segment name"),
    ('a"b', "is not a segment name"),
    ("Big Spenders", "is not a segment name"),
    ("kund_ö", "is not a segment name"),
    ("rfm_champions", "belong to built-in segments"),
])
def test_segment_names_are_plain_identifiers(name, message):
    with pytest.raises(SegmentFileError, match=message):
        parse_segments(one({"trait": "revenue", "op": ">", "value": 1}, name=name))


def test_every_problem_in_a_file_is_reported_at_once_and_duplicates_are_refused():
    with pytest.raises(SegmentFileError) as e:
        parse_segments({"segments": [
            {"name": "a", "where": {"trait": "nope", "op": "=", "value": 1}},
            {"name": "a", "where": {"trait": "revenue", "op": ">", "value": 1}},
            {"name": "b", "where": {"event": "ordered", "within_days": -1}, "colour": "red"},
        ]}, "my/segments.yaml")
    text = str(e.value)
    assert text.startswith("my/segments.yaml: invalid segments (3 problem(s))")
    assert "segment 'a' (segments[0]) where.trait: unknown trait 'nope'" in text
    assert "segment 'a' (segments[1]): the name 'a' is used twice" in text
    assert "segment 'b' (segments[2]).colour: unknown key" in text


def test_operators_values_and_windows_reach_sql_only_as_parameters():
    (segment,) = parse_segments(one({"any": [
        {"trait": "preferred_category", "op": "not in", "value": ["a", "b"]},
        {"trait": "revenue", "op": "between", "value": [1, 2.5]},
        {"event": "ordered", "within_days": 30, "at_least": 2, "min_total": 9, "category": "shoes"},
    ]})).segments
    compiled = compile_segment(segment, AS_OF)
    assert compiled.params == ["a", "b", 1, 2.5, AS_OF - 30 * DAY, AS_OF, "shoes", 2, 9]
    for i in range(1, 10):
        assert f"${i}" in compiled.sql
    assert '"traits"."preferred_category" NOT IN ($1, $2)' in compiled.sql
    assert '"intermediate"."int_order_lines"' in compiled.sql
    for value in ("'a'", "'shoes'", "2.5", "2026"):
        assert value not in compiled.sql
    with pytest.raises(ValueError, match="refusing identifier"):
        quote('revenue"; --')


def test_write_segments_replaces_both_tables_and_keeps_them_when_evaluation_fails(warehouse, tmp_path):
    copy = tmp_path / "wh.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    good = parse_segments({"segments": [
        {"name": "recent", "description": "Ordered in 30 days", "where": {"event": "ordered", "within_days": 30}},
        {"name": "nobody", "where": {"trait": "revenue", "op": ">", "value": 10**9}},
    ]})
    with open_warehouse(copy) as con:
        results = write_segments(con, good)
        assert [(r.name, r.members) for r in results] == [("recent", 1), ("nobody", 0)]
        assert fetch_all(con, "SELECT segment, person_id, as_of FROM segments.declarative_membership") == [("recent", "p1", AS_OF)]
        assert fetch_all(con, "SELECT segment, description FROM segments.definitions ORDER BY 1") == [
            ("nobody", ""), ("recent", "Ordered in 30 days")]
        # A segment on a score whose table is missing: a clear error, the previous tables stay.
        con.execute("DROP TABLE scoring.churn_predictions")
        bad = parse_segments(one({"trait": "churn_probability", "op": ">", "value": 0.5}, name="risky"))
        with pytest.raises(SegmentFileError, match="segment .risky. uses churn_probability, which no table holds yet"):
            write_segments(con, bad)
        assert fetch_value(con, "SELECT count(*) FROM segments.definitions") == 2


def test_scaffolded_example_validates_and_cli_prints_sql_with_placeholders(tmp_path):
    from cdp.cli import main
    from cdp.scaffold import init_project

    cfg = init_project(tmp_path / "proj")
    example = load_segments(cfg.parent / "segments.yaml")
    assert 3 <= len(example.segments) <= 5
    runner = CliRunner()
    done = runner.invoke(main, ["segments", "validate", "--config", str(cfg)])
    assert done.exit_code == 0, done.output
    assert "4 segment(s), valid" in done.output
    assert "-- vip_recent_buyers:" in done.output and '"traits"."revenue" >= $1' in done.output
    assert "--   $1 = 500" in done.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(one({"trait": "revenue", "op": "~", "value": 1}, name="oops")))
    done = runner.invoke(main, ["segments", "validate", "--config", str(cfg), "--file", str(bad)])
    assert done.exit_code == 2
    assert "segment 'oops' (segments[0]) where.op: unknown operator '~'" in done.output


def test_a_score_is_read_from_the_first_table_that_has_it(warehouse, tmp_path):
    copy = tmp_path / "wh.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    segment_file = parse_segments(one({"trait": "risk_tier", "op": "=", "value": "high"}, name="high_risk"))
    with open_warehouse(copy) as con:
        write_segments(con, segment_file)
        assert {r[0] for r in fetch_all(con, "SELECT person_id FROM segments.declarative_membership")} == {"p2", "p5"}
        # The scoring stage's table without the column: last run's mart is used instead.
        con.execute("ALTER TABLE scoring.churn_predictions DROP COLUMN risk_tier")
        con.execute("CREATE TABLE marts.churn_scores AS SELECT 'p3' AS person_id, 'high' AS risk_tier")
        write_segments(con, segment_file)
        assert {r[0] for r in fetch_all(con, "SELECT person_id FROM segments.declarative_membership")} == {"p3"}


def test_windows_use_the_marts_as_of_or_the_configured_one_when_there_is_nobody(warehouse, tmp_path):
    from segments.evaluator import run_as_of

    copy = tmp_path / "wh.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    with open_warehouse(copy) as con:
        assert run_as_of(con) == AS_OF
        con.execute("DELETE FROM marts.customer_traits")
        with pytest.raises(RuntimeError, match="empty"):
            run_as_of(con)
        assert run_as_of(con, default=AS_OF - DAY) == AS_OF - DAY


ALIAS_BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
segments: [*h]
"""


def test_a_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path):
    # 43M nodes once expanded; refused while composing, before any expansion.
    path = tmp_path / "segments.yaml"
    path.write_text(ALIAS_BOMB)
    t0 = time.perf_counter()
    with pytest.raises(SegmentFileError, match=r"segments.yaml: its aliases \(\*name\) expand to [\d,]+ values"):
        load_segments(path)
    assert time.perf_counter() - t0 < 1.0


def test_an_oversized_segments_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text("segments: []\n" + "#" * 1_100_000 + "\n")
    with pytest.raises(SegmentFileError, match="more than the 1,000,000"):
        load_segments(path)
