"""A retailer's own exports landed with cdp.yaml alone: expressions, receipts folded from
invoice lines, derived line numbers, optional fields, older history (issue 26)."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_config
from core.expressions import ExpressionError, compile_sql, parse
from core.snapshots import current_path, open_snapshot
from core.warehouse import connect, open_warehouse
from ingestion.loader import LOADED, REJECTED, ingest
from tests.helpers import make_config, write

# UCI Online Retail's shape: one row per invoice line, a float customer id, guests without one,
# a cancellation as its own invoice ('C' + number) with negative quantities, a postage code.
UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
UCI_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom",
    "536365,POST,POSTAGE,1,12/1/2010 8:26,18.0,17850.0,United Kingdom",
    "536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,13047.0,United Kingdom",
    "536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,12/1/2010 8:34,1.69,,United Kingdom",
    "C536379,71053,WHITE METAL LANTERN,-2,12/1/2010 9:41,3.39,17850.0,United Kingdom",
]
PATH = "pos/online_retail*.csv"


def uci_source(**overrides) -> dict:
    entities = {
        "transactions": {
            "path": PATH, "rows": "lines",
            "columns": {"InvoiceNo": "transaction_id", "InvoiceDate": "occurred_at"},
            "formats": {"occurred_at": "%m/%d/%Y %H:%M"},
            "expressions": {"loyalty_id": "cast_integer(CustomerID)", "total": "Quantity * UnitPrice"},
        },
        "line_items": {
            "path": PATH, "number_lines": True,
            "columns": {"InvoiceNo": "transaction_id", "StockCode": "sku", "Quantity": "quantity",
                        "UnitPrice": "unit_price"},
        },
        "loyalty_members": {
            "path": PATH, "rows": "lines",
            "expressions": {"loyalty_id": "cast_integer(CustomerID)", "city": "trim(Country)"},
        },
        **overrides,
    }
    return {"name": "shop", "kind": "pos", "entities": entities}


def land_uci(tmp_path, rows=UCI_ROWS, ingestion=None, **overrides):
    config = make_config(tmp_path, [uci_source(**overrides)], ingestion=ingestion or {})
    write(config.landing_dir / "pos/online_retail_2010.csv", "\n".join([UCI_HEADER, *rows]) + "\n")
    con = connect(config.warehouse_path)
    return config, con, ingest(config, con)


def test_an_invoice_lines_export_lands_receipts_lines_and_members_with_the_config_alone(tmp_path):
    config, con, report = land_uci(tmp_path)
    assert [f.status for f in report.files] == [LOADED] * 3, [f.message for f in report.files]
    for f in report.files:  # every line accounted for, folded ones included
        assert f.lines == f.rows_loaded + f.rows_quarantined + f.rows_erased + f.lines_skipped, f
    receipts = con.execute("SELECT transaction_id, loyalty_id, round(total, 2), store_id, occurred_at::VARCHAR "
                           "FROM raw.pos_transactions ORDER BY 1").fetchall()
    assert receipts == [
        ("536365", "17850", round(6 * 2.55 + 6 * 3.39 + 18.0, 2), None, "2010-12-01 08:26:00+00"),
        ("536366", "13047", 11.1, None, "2010-12-01 08:28:00+00"),
        ("536367", None, 54.08, None, "2010-12-01 08:34:00+00"),
        ("C536379", "17850", -6.78, None, "2010-12-01 09:41:00+00"),
    ]
    lines = con.execute("SELECT transaction_id, line_no, sku, quantity FROM raw.pos_line_items ORDER BY 1, 2").fetchall()
    assert lines[:3] == [("536365", 1, "85123A", 6), ("536365", 2, "71053", 6), ("536365", 3, "POST", 1)]
    assert ("C536379", 1, "71053", -2) in lines and len(lines) == 6
    members = con.execute("SELECT loyalty_id, city, enrolled_at FROM raw.pos_loyalty_members ORDER BY 1").fetchall()
    assert members == [("13047", "United Kingdom", None), ("17850", "United Kingdom", None)]
    assert con.execute("SELECT count(*) FROM raw.quarantine").fetchall()[0][0] == 0


def test_a_value_an_expression_cannot_compute_is_quarantined_by_row_and_field_not_value(tmp_path):
    rows = [*UCI_ROWS, "536368,22960,JAM MAKING SET,6,12/1/2010 8:34,4.25,12583.5,France"]
    config, con, report = land_uci(tmp_path, rows=rows, ingestion={"max_bad_row_rate": 0.5})
    quarantined = con.execute("SELECT table_name, _row, reason, field FROM raw.quarantine ORDER BY 1").fetchall()
    assert ("pos_transactions", 7, "invalid_expression", "loyalty_id") in quarantined
    assert all("12583" not in f.message for f in report.files)


def test_an_expression_reading_a_column_the_file_lacks_rejects_the_file_naming_it(tmp_path):
    config, con, report = land_uci(tmp_path, line_items={
        "path": PATH, "number_lines": True, "expressions": {"quantity": "cast_integer(Qty)"},
        "columns": {"InvoiceNo": "transaction_id", "StockCode": "sku", "UnitPrice": "unit_price"}})
    bad = [f for f in report.files if f.table == "pos_line_items"][0]
    assert bad.status == REJECTED and "'Qty'" in bad.message


@pytest.mark.parametrize("text", [
    "Quantity; DROP TABLE raw.loads",
    "Quantity * UnitPrice) FROM raw.loads --",
    "read_csv('/etc/passwd')",
    "lower(Country",
    "1 +",
    "parse_date(InvoiceDate, Format)",
])
def test_anything_outside_the_expression_language_is_a_config_error(tmp_path, text):
    with pytest.raises(ExpressionError):
        parse(text)
    with pytest.raises(ConfigError, match="expressions.total"):
        make_config(tmp_path, [uci_source(transactions={"path": PATH, "expressions": {"total": text}})])


def test_quotes_in_literals_and_column_names_cannot_escape_into_sql(tmp_path):
    sql = compile_sql(parse("concat(\"Invoice\"\"No\", 'x''); DROP TABLE raw.loads; --')"),
                      lambda c: '"' + c.replace('"', '""') + '"')
    con = connect(tmp_path / "w.duckdb")
    con.execute("CREATE TABLE t (\"Invoice\"\"No\" VARCHAR)")
    con.execute("INSERT INTO t VALUES ('A')")
    assert con.execute(f"SELECT {sql} FROM t").fetchall() == [("Ax'); DROP TABLE raw.loads; --",)]


def test_earliest_plausible_date_is_a_setting(tmp_path):
    rows = [r.replace("/2010", "/1997") for r in UCI_ROWS]
    _, con, report = land_uci(tmp_path / "default", rows=rows)
    rejected = [f for f in report.files if f.status == REJECTED]
    assert rejected and "ingestion.earliest_date" in rejected[0].message
    config = make_config(tmp_path / "old", [uci_source()], ingestion={"earliest_date": "1990-01-01"})
    write(config.landing_dir / "pos/online_retail_1997.csv", "\n".join([UCI_HEADER, *rows]) + "\n")
    con = connect(config.warehouse_path)
    report = ingest(config, con)
    assert [f.status for f in report.files] == [LOADED] * 3
    assert con.execute("SELECT min(occurred_at)::DATE::VARCHAR FROM raw.pos_transactions").fetchall() == [("1997-12-01",)]


# --------------------------------------------------------------------------- whole runs
# Real `cdp run`s on small projects: slow-ish (dbt, identity, the gate), so one project each.
CDP = str(Path(sys.executable).parent / "cdp")


def _cdp(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG", "DAGSTER_HOME")}
    return subprocess.run([CDP, *args], env=env, capture_output=True, text=True, timeout=900)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):  # cdp.yaml refuses YAML aliases
        return True


def _project(root: Path, **settings) -> Path:
    assert _cdp("init", str(root)).returncode == 0
    cfg = root / "cdp.yaml"
    data = yaml.safe_load(cfg.read_text())
    data.update(settings)
    cfg.write_text(yaml.dump(data, Dumper=_NoAliases, sort_keys=False))
    return cfg


def _invoice_lines_1997() -> list[str]:
    """Three months of a small shop's invoice lines in late 1997: every customer a loyalty
    member who buys, one cancellation, postage on some invoices, guests without an id."""
    rows, n = [], 540000
    for day in range(0, 80, 3):
        when = (dt.datetime(1997, 10, 1, 9) + dt.timedelta(days=day)).strftime("%m/%d/%Y %H:%M").lstrip("0")
        for customer, sku, qty, price in (("17850.0", "71053", 6, 3.39), ("13047.0", "22633", 6, 1.85),
                                          ("12583.0", "84879", 12, 1.69), ("", "22960", 1, 4.25)):
            n += 1
            rows.append(f"{n},{sku},ITEM,{qty},{when},{price},{customer},United Kingdom")
            rows.append(f"{n},{'85123A' if day % 2 else '21754'},ITEM,2,{when},2.55,{customer},United Kingdom")
            if day % 9 == 0:
                rows.append(f"{n},POST,POSTAGE,1,{when},18.0,{customer},United Kingdom")
    # 17850 sends back every lantern bought at the last visit and one more
    rows.append("C549999,71053,WHITE METAL LANTERN,-7,12/20/1997 10:00,3.39,17850.0,United Kingdom")
    return rows


CATALOG = """sku,name,category,price,non_product
71053,White metal lantern,lighting,3.39,
22633,Hand warmer,accessories,1.85,false
84879,Bird ornament,decor,1.69,false
22960,Jam making set,kitchen,4.25,false
85123A,T-light holder,lighting,2.55,false
21754,Home sign,decor,5.95,false
POST,Postage,postage,18.0,true
"""


def test_a_1997_pos_only_export_lands_backtests_and_publishes_on_its_first_run(tmp_path):
    root = tmp_path / "shop97"
    cfg = _project(root, as_of="1997-12-31", ingestion={"earliest_date": "1990-01-01"}, sources=[
        uci_source(), {"name": "catalog", "kind": "catalog", "entities": {"products": {"path": "catalog/*.csv"}}}])
    write(root / "landing/pos/online_retail_1997.csv", "\n".join([UCI_HEADER, *_invoice_lines_1997()]) + "\n")
    write(root / "landing/catalog/products.csv", CATALOG)
    done = _cdp("run", "--config", str(cfg))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    # the models without enough history are named, with what they need and what there is
    assert "skipped" in out and "churn needs orders from more than 2 × churn.horizon_days = 180 days" in out
    assert "cart intent needs carts" in out

    config = load_config(cfg)
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        traits = dict(con.execute("""
            SELECT g.source_record_id, struct_pack(t.order_count, t.revenue, t.preferred_category, t.as_of)
            FROM marts.customer_traits t JOIN identity.graph g USING (person_id)
            WHERE g.entity = 'loyalty_members'""").fetchall())
        lanterns = con.execute("""
            SELECT sum(l.quantity) FROM intermediate.int_order_lines l JOIN identity.graph g USING (person_id)
            WHERE g.entity = 'loyalty_members' AND g.source_record_id = '17850' AND l.sku = '71053'""").fetchall()[0][0]
        postage_lines = con.execute("SELECT count(*) FROM intermediate.int_order_lines WHERE sku = 'POST'").fetchall()[0][0]
        recommended_postage = con.execute(
            "SELECT count(*) FROM marts.recommendations WHERE sku = 'POST'").fetchall()[0][0]
    visits = len(range(0, 80, 3))
    lantern = traits["17850"]
    # the cancellation is no order, but pays its money back
    assert lantern["order_count"] == visits
    bought = sum(6 * 3.39 + 2 * 2.55 + (18.0 if d % 9 == 0 else 0) for d in range(0, 80, 3))
    assert lantern["revenue"] == pytest.approx(bought - 7 * 3.39, abs=0.01)
    assert lantern["as_of"].date() == dt.date(1997, 12, 31)
    # returned lanterns are not "bought"; postage is no goods and no category
    assert lanterns == 6 * visits - 7
    assert postage_lines == 0 and recommended_postage == 0
    assert all(t["preferred_category"] not in (None, "postage") for t in traits.values())

    published = current_path(config.published_dir)
    ro = open_snapshot(published)
    try:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 3
        assert ro.execute("SELECT count(*) FROM churn_scores").fetchall()[0][0] == 0  # published empty
    finally:
        ro.close()


def test_a_file_rejected_whole_stops_the_run_before_identity_with_its_message(tmp_path):
    root = tmp_path / "shop97"
    cfg = _project(root, as_of="1997-12-31", sources=[uci_source()])  # earliest_date left at 2000
    write(root / "landing/pos/online_retail_1997.csv", "\n".join([UCI_HEADER, *_invoice_lines_1997()]) + "\n")
    done = _cdp("run", "--config", str(cfg))
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out and "ZeroDivisionError" not in out
    assert "online_retail_1997.csv" in out and "ingestion.earliest_date" in out and "before identity" in out
    with open_warehouse(load_config(cfg).warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'identity'"
                           ).fetchall()[0][0] == 0


def _web_month(start: dt.datetime) -> list[str]:
    """30 days of a small web shop: visitors who log in, browse, add to cart and sometimes order."""
    events, n = [], 0

    def event(**fields) -> None:
        nonlocal n
        n += 1
        events.append(json.dumps({"messageId": f"m{n}", **fields}))

    for day in range(30):
        for u in range(6):
            ts = (start + dt.timedelta(days=day, hours=u)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            anon, user = f"anon-{u}", f"user-{u}"
            if day == 0:
                event(type="identify", anonymousId=anon, userId=user, timestamp=ts,
                      traits={"email": f"person{u}@shop.example", "first_name": f"Ann{u}"})
            sku = f"SKU{(day + u) % 5}"
            event(type="page", anonymousId=anon, userId=user, timestamp=ts,
                  context={"page": {"url": f"https://shop.example/p/{sku}", "path": f"/p/{sku}"}})
            event(type="track", event="product_viewed", anonymousId=anon, userId=user, timestamp=ts,
                  properties={"product_id": sku, "price": 10.0})
            if (day + u) % 3 == 0:
                event(type="track", event="product_added", anonymousId=anon, userId=user, timestamp=ts,
                      properties={"product_id": sku, "price": 10.0, "quantity": 1, "cart_id": f"c{day}-{u}"})
            if (day + u) % 6 == 0:
                event(type="track", event="order_completed", anonymousId=anon, userId=user, timestamp=ts,
                      properties={"order_id": f"o{day}-{u}", "revenue": 10.0, "cart_id": f"c{day}-{u}",
                                  "products": [{"product_id": sku, "price": 10.0, "quantity": 1}]})
    return events


def test_a_web_only_project_with_30_days_publishes_on_its_first_run(tmp_path):
    root = tmp_path / "webshop"
    cfg = _project(root, as_of="2026-03-31", sources=[
        {"name": "web", "kind": "web", "entities": {"events": {"path": "web/*.jsonl"}}}])
    write(root / "landing/web/events.jsonl", "\n".join(_web_month(dt.datetime(2026, 3, 2, 8))) + "\n")
    done = _cdp("run", "--config", str(cfg))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    assert "skipped" in out and "churn needs orders" in out and "there are 29 day(s) of orders" in out
    config = load_config(cfg)
    ro = open_snapshot(current_path(config.published_dir))
    try:
        assert ro.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 6
        assert ro.execute("SELECT count(*) FROM churn_scores").fetchall()[0][0] == 0
    finally:
        ro.close()
