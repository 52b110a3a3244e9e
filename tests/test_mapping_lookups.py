"""cdp.yaml source mapping: `lookups` (a column from another landed file of the same source,
matched on a key) and `skip_when` (rows left out of the load, counted), through the real
loader and DuckDB (issue 26: Olist's person key and canceled orders)."""

import pytest

from core.config import ConfigError
from core.expressions import ExpressionError, compile_condition, parse
from core.warehouse import connect
from ingestion.loader import LOADED, REJECTED, ingest
from tests.helpers import make_config, write

# Olist's shape: orders carry customer_id (one per order), the person key is in the customers file.
ORDERS = """order_id,customer_id,order_status,order_purchase_timestamp
o1,c1,delivered,2018-01-02 10:00:00
o2,c2,canceled,2018-01-03 10:00:00
o3,c3,delivered,2018-01-04 10:00:00
o4,c9,delivered,2018-01-05 10:00:00
o5,c4,unavailable,2018-01-06 10:00:00
o6,c5,delivered,2018-01-07 10:00:00
"""
CUSTOMERS = """customer_id,customer_unique_id,customer_city
c1,u1,sao paulo
c2,u2,rio
c3,u1,sao paulo
c4,u4,recife
c5,u5,recife
c5,u6,recife
"""


def olist_source(**orders) -> dict:
    return {"name": "olist", "kind": "pos", "entities": {
        "transactions": {
            "path": "olist/orders*.csv",
            "columns": {"order_id": "transaction_id", "order_purchase_timestamp": "occurred_at",
                        "customer_unique_id": "loyalty_id"},
            "lookups": {"customer_unique_id": {"entity": "loyalty_members", "key": "customer_id",
                                               "column": "customer_unique_id"}},
            "skip_when": "order_status = 'canceled' or order_status = 'unavailable'",
            **orders,
        },
        "loyalty_members": {"path": "olist/customers*.csv",
                            "columns": {"customer_unique_id": "loyalty_id", "customer_city": "city"}},
    }}


def land(tmp_path, orders=ORDERS, customers=CUSTOMERS, ingestion=None, **entity):
    config = make_config(tmp_path, [olist_source(**entity)], ingestion=ingestion or {"max_bad_row_rate": 0.9})
    write(config.landing_dir / "olist/orders_2018.csv", orders)
    if customers is not None:
        write(config.landing_dir / "olist/customers_2018.csv", customers)
    con = connect(config.warehouse_path)
    return config, con


def test_orders_take_the_person_key_from_the_customers_file_and_skip_canceled_rows_counted(tmp_path):
    config, con = land(tmp_path)
    # only the orders: the lookup reads the customers file as landed, not its raw table
    report = ingest(config, con, tables=["pos_transactions"])
    (res,) = report.files
    assert res.status == LOADED
    assert (res.rows_loaded, res.rows_quarantined, res.rows_skipped, res.lines_skipped, res.lines) == (2, 2, 2, 1, 7)
    assert res.lines == res.rows_loaded + res.rows_quarantined + res.rows_erased + res.rows_skipped + res.lines_skipped
    assert "2 row(s) skipped by skip_when" in res.message
    # o1 and o3 are one person (u1) under two customer_ids
    assert con.execute("SELECT transaction_id, loyalty_id FROM raw.pos_transactions ORDER BY 1").fetchall() == [
        ("o1", "u1"), ("o3", "u1")]
    # c9 has no customer row; c5 has two person keys: per-row reasons naming row and lookup, never the value
    assert con.execute("SELECT _file, _row, reason, field FROM raw.quarantine ORDER BY _row").fetchall() == [
        ("olist/orders_2018.csv", 4, "lookup_no_match", "customer_unique_id"),
        ("olist/orders_2018.csv", 6, "lookup_ambiguous", "customer_unique_id")]
    skipped = con.execute("SELECT rows_skipped, rows_loaded FROM raw.loads").fetchall()
    assert skipped == [(2, 2)]


def test_a_missing_match_can_be_a_documented_null_and_nothing_matched_rejects_naming_the_entity(tmp_path):
    lookup = {"customer_unique_id": {"entity": "loyalty_members", "key": "customer_id",
                                     "column": "customer_unique_id", "missing": "null"}}
    config, con = land(tmp_path, customers=CUSTOMERS.replace("c5,u6,recife\n", ""), lookups=lookup)
    (res,) = ingest(config, con, tables=["pos_transactions"]).files
    assert (res.status, res.rows_loaded, res.rows_quarantined, res.rows_skipped) == (LOADED, 4, 0, 2)
    assert con.execute("SELECT loyalty_id FROM raw.pos_transactions WHERE transaction_id = 'o4'").fetchall() == [(None,)]

    config, con = land(tmp_path / "none", customers=None)
    (res,) = ingest(config, con, tables=["pos_transactions"]).files
    assert res.status == REJECTED
    assert "no file of loyalty_members" in res.message and "c1" not in res.message


def test_a_row_the_reader_cannot_take_is_quarantined_not_skipped_and_both_loads_add_up(tmp_path):
    orders = ORDERS + 'o7,c1,"canceled\n'  # an unterminated quote: no fields, so skip_when cannot hold
    config, con = land(tmp_path, orders=orders)
    report = ingest(config, con)
    by_table = {f.table: f for f in report.files}
    t = by_table["pos_transactions"]
    assert (t.rows_skipped, t.rows_quarantined) == (2, 3)
    assert con.execute("SELECT reason FROM raw.quarantine WHERE _row = 7").fetchall() == [("malformed_csv_line",)]
    for f in report.files:
        assert f.lines == f.rows_loaded + f.rows_quarantined + f.rows_erased + f.rows_skipped + f.lines_skipped, f
    # only skipped rows: loaded with nothing in it, not rejected as a file without rows
    only_canceled = "order_id,customer_id,order_status,order_purchase_timestamp\no2,c2,canceled,2018-01-03 10:00:00\n"
    write(config.landing_dir / "olist/orders_2019.csv", only_canceled)
    (res,) = [f for f in ingest(config, con, tables=["pos_transactions"]).files if f.file.endswith("2019.csv")]
    assert (res.status, res.rows_loaded, res.rows_skipped) == (LOADED, 0, 1)


@pytest.mark.parametrize("entity, expected", [
    ({"lookups": {"x": {"entity": "catalog", "key": "customer_id", "column": "sku"}}}, "not an entity of this source"),
    ({"lookups": {"x": {"entity": "transactions", "key": "customer_id", "column": "y"}}}, "this entity itself"),
    ({"lookups": {"x": {"entity": "loyalty_members", "key": "customer_id"}}}, "column"),
    ({"skip_when": "order_status"}, "skip_when: it is no condition"),
    ({"skip_when": "order_status = "}, "skip_when: the expression ends too early"),
    ({"skip_when": "order_status = 'x' or"}, "skip_when"),
    ({"expressions": {"total": "cast_decimal(a = b)"}}, "expressions.total: a condition is no value"),
])
def test_bad_lookups_and_skip_when_are_config_errors_that_say_what_to_fix(tmp_path, entity, expected):
    with pytest.raises(ConfigError, match=expected):
        make_config(tmp_path, [olist_source(**entity)])


def test_conditions_compare_text_as_text_numbers_as_numbers_and_an_empty_cell_equals_nothing():
    import duckdb

    def holds(text: str, **row) -> bool:
        sql = compile_condition(parse(text), lambda c: f"CAST({row[c]!r} AS VARCHAR)" if row[c] is not None else "NULL")
        return duckdb.sql(f"SELECT {sql}").fetchall()[0][0]

    assert holds("s = 'canceled'", s="canceled") and not holds("s = 'canceled'", s="Canceled")
    assert holds("q < 0 and not (s != 'x')", q="-2", s="x")
    assert holds("q > 10", q="9.5e1") and not holds("q > 10", q="abc")  # text that is no number: not true
    assert not holds("s = ''", s="") and not holds("s != 'x'", s=None)
    assert holds("\"and\" = 'y' or s = 'z'", **{"and": "y", "s": "q"})
    with pytest.raises(ExpressionError, match="double quotes"):
        parse("and = 'y'")


def test_skip_when_leaves_json_lines_out_on_the_fast_path_and_line_by_line(tmp_path):
    source = {"name": "helpdesk", "kind": "support", "entities": {"tickets": {
        "path": "support/*.jsonl", "skip_when": "kind = 'spam'"}}}
    config = make_config(tmp_path, [source], ingestion={"max_bad_row_rate": 0.9})

    def ticket(i: int, kind: str) -> str:
        return f'{{"ticket_id": "t{i}", "created_at": "2024-01-0{i}T10:00:00Z", "kind": "{kind}"}}'

    write(config.landing_dir / "support/clean.jsonl", "\n".join(ticket(i, k) for i, k in
                                                                  [(1, "q"), (2, "spam"), (3, "q")]) + "\n")
    write(config.landing_dir / "support/broken.jsonl", ticket(4, "spam") + "\n{not json\n" + ticket(5, "q") + "\n")
    con = connect(config.warehouse_path)
    files = {f.file: f for f in ingest(config, con).files}
    clean, broken = files["support/clean.jsonl"], files["support/broken.jsonl"]
    assert (clean.status, clean.rows_loaded, clean.rows_skipped, clean.rows_quarantined) == (LOADED, 2, 1, 0)
    assert (broken.status, broken.rows_loaded, broken.rows_skipped, broken.rows_quarantined) == (LOADED, 1, 1, 1)
    assert sorted(r[0] for r in con.execute("SELECT ticket_id FROM raw.support_tickets").fetchall()) == ["t1", "t3", "t5"]
