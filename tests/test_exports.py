"""A retailer's own exports landed with cdp.yaml alone: expressions, receipts folded from
invoice lines, derived line numbers, optional fields, older history (issue 26)."""

import pytest

from core.config import ConfigError
from core.expressions import ExpressionError, compile_sql, parse
from core.warehouse import connect
from ingestion.loader import LOADED, REJECTED, ingest
from tests.conftest import make_config, write

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
