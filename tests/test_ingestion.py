"""Landing -> raw: quarantine, whole-file rejection, idempotence, atomicity."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.warehouse import connect, transaction
from ingestion.loader import CHANGED, DUPLICATE, LOADED, REJECTED, UNCHANGED, ingest
from tests.helpers import make_config, web_line, write

WEB = [{"name": "web", "kind": "web", "entities": {"events": {"path": "web/*.jsonl"}}}]
LINE_ITEMS = [{"name": "pos", "kind": "pos", "entities": {"line_items": {"path": "pos/line_items*.csv"}}}]


def counts(con, table: str) -> tuple[int, int]:
    rows = con.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0]
    q = con.execute("SELECT count(*) FROM raw.quarantine WHERE table_name = ?", [table]).fetchall()[0][0]
    return rows, q


@pytest.fixture
def web_project(tmp_path):
    # These files are mostly bad rows by design: lift the whole-file bound.
    config = make_config(tmp_path, WEB, ingestion={"max_bad_row_rate": 1.0})
    con = connect(config.warehouse_path)
    yield config, con
    con.close()


# ------------------------------------------------------------------ quarantine
def test_each_malformed_row_kind_is_quarantined_with_its_reason(web_project):
    config, con = web_project
    lines = [
        web_line(1),
        web_line(2, timestamp="2025-02-30T25:61:00Z"),  # impossible date
        web_line(3, messageId=None),  # required key missing
        web_line(4, anonymousId=None),  # neither anonymousId nor userId
        web_line(5)[:40],  # broken JSON (truncated)
        web_line(6, type="bogus"),  # value outside the contract's enum
        web_line(7, timestamp="1970-01-01T00:00:00Z"),  # impossible: before 2000
        web_line(8, timestamp="yesterday"),  # wrong type
        "",  # a blank line is not a row
        web_line(9, anonymousId=None, userId="u9"),  # a logged-in event is fine
        web_line(10),
    ]
    write(config.landing_dir / "web" / "e1.jsonl", "\n".join(lines) + "\n")
    report = ingest(config, con)
    [res] = report.files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 3, 7)
    loaded = con.execute('SELECT "messageId", _row, _file, _source FROM raw.web_events ORDER BY _row').fetchall()
    assert loaded == [("m1", 1, "web/e1.jsonl", "web"), ("m9", 10, "web/e1.jsonl", "web"), ("m10", 11, "web/e1.jsonl", "web")]
    q = con.execute("SELECT _row, reason, field, raw_record FROM raw.quarantine ORDER BY _row").fetchall()
    assert [(r[0], r[1], r[2]) for r in q] == [
        (2, "invalid_timestamp", "timestamp"),
        (3, "missing_required", "messageId"),
        (4, "missing_required", "anonymousId|userId"),
        (5, "malformed_json", ""),
        (6, "invalid_value", "type"),
        (7, "impossible_timestamp", "timestamp"),
        (8, "invalid_timestamp", "timestamp"),
    ]
    # Quarantined rows are kept verbatim.
    assert q[3][3] == lines[4]
    assert q[0][3] == lines[1]


def test_csv_bad_rows_quarantined_and_good_rows_load(tmp_path):
    config = make_config(tmp_path, LINE_ITEMS, ingestion={"max_bad_row_rate": 1.0})
    write(
        config.landing_dir / "pos" / "line_items_1.csv",
        "transaction_id,line_no,sku,quantity,unit_price,discount\n"
        "T1,1,S1,2,9.5,0\n"
        "T1,2,S2,three,1.0,0\n"  # wrong type
        ",1,S3,1,1.0,0\n"  # required key missing
        "T2,1,S1,1,9.5\n"  # too few fields
        "T3,1,S1,1,9.5,0,extra\n"  # too many fields
        "T4,1,S9,1,2.5,0\n",
    )
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 2, 4)
    assert con.execute("SELECT transaction_id, _row, quantity FROM raw.pos_line_items ORDER BY _row").fetchall() == [
        ("T1", 1, 2),
        ("T4", 6, 1),
    ]
    q = con.execute("SELECT _row, reason, field FROM raw.quarantine ORDER BY _row").fetchall()
    assert [(r, reason) for r, reason, _ in q] == [
        (2, "invalid_type"),
        (3, "missing_required"),
        (4, "malformed_csv_line"),
        (5, "malformed_csv_line"),
    ]
    assert q[0][2] == "quantity" and q[1][2] == "transaction_id"
    raw = con.execute("SELECT raw_record FROM raw.quarantine WHERE _row = 5").fetchall()[0][0]
    assert raw == "T3,1,S1,1,9.5,0,extra"


def test_exact_and_fast_paths_load_identical_rows(tmp_path):
    """A clean file takes DuckDB's JSON reader; a file with one bad line is re-read line by
    line. The good rows must come out the same either way."""
    good = [web_line(i, traits={"email": f"x{i}@example.com"} if i % 3 == 0 else None) for i in range(1, 40)]
    cfg_a = make_config(tmp_path / "a", WEB)
    write(cfg_a.landing_dir / "web" / "e.jsonl", "\n".join(good) + "\n")
    cfg_b = make_config(tmp_path / "b", WEB, ingestion={"max_bad_row_rate": 0.5})
    write(cfg_b.landing_dir / "web" / "e.jsonl", "\n".join(good[:20] + ["{not json"] + good[20:]) + "\n")
    cols = '"messageId", type, event, "anonymousId", traits::VARCHAR, properties::VARCHAR, context::VARCHAR, timestamp'
    out = []
    for cfg in (cfg_a, cfg_b):
        con = connect(cfg.warehouse_path)
        ingest(cfg, con)
        out.append(con.execute(f'SELECT {cols} FROM raw.web_events ORDER BY "messageId"').fetchall())
        con.close()
    assert len(out[0]) == 39
    assert out[0] == out[1]
    # Both paths record each row's line number.
    for cfg, bad_line_at in ((cfg_a, None), (cfg_b, 21)):
        con = connect(cfg.warehouse_path)
        rows = con.execute('SELECT "messageId", _row FROM raw.web_events').fetchall()
        con.close()
        for message_id, row in rows:
            i = int(message_id[1:])
            assert row == (i if bad_line_at is None or i <= 20 else i + 1), (cfg.root, message_id, row)


# ------------------------------------------------------------------ whole-file rejection
@pytest.mark.parametrize(
    "content, message",
    [
        ("transaction_id,line_no,sku,unit_price\nT1,1,S1,2.0\n", r"required column\(s\) missing: quantity"),
        ("", r"the file is empty"),
        ("transaction_id,line_no,sku,quantity,unit_price\n", r"the file has no rows"),
        (
            "transaction_id,line_no,sku,quantity,unit_price\nT1,x,S1,1,1\nT2,y,S1,1,1\nT3,1,S1,1,1\n",
            r"2 of 3 rows break the contract \(66.7%, over the 5.0% bound in ingestion.max_bad_row_rate\): "
            r"invalid_type in field 'line_no' \(2 rows, first at row 1\)",
        ),
        ("transaction_id,sku,sku,quantity,unit_price,line_no\nT1,1,S,1,1,1\n", r"names a column twice"),
    ],
)
def test_file_breaking_the_contract_is_rejected_whole(tmp_path, content, message):
    config = make_config(tmp_path, LINE_ITEMS)
    write(config.landing_dir / "pos" / "line_items_bad.csv", content)
    write(config.landing_dir / "pos" / "line_items_good.csv", "transaction_id,line_no,sku,quantity,unit_price\nT9,1,S1,1,1\n")
    con = connect(config.warehouse_path)
    report = ingest(config, con)
    bad = next(f for f in report.files if f.file.endswith("bad.csv"))
    assert bad.status == REJECTED
    assert bad.rows_loaded == 0
    import re

    assert re.search(message, bad.message), bad.message
    assert not report.ok
    # Nothing of the rejected file was applied; the good file loaded.
    assert con.execute("SELECT DISTINCT _file FROM raw.pos_line_items").fetchall() == [("pos/line_items_good.csv",)]
    assert con.execute("SELECT count(*) FROM raw.quarantine").fetchall()[0][0] == 0
    assert con.execute(
        "SELECT status, message FROM raw.loads WHERE file = 'pos/line_items_bad.csv'"
    ).fetchall()[0][0] == REJECTED


def test_binary_garbage_is_rejected_not_crashing(tmp_path):
    config = make_config(tmp_path, WEB)
    (config.landing_dir / "web").mkdir(parents=True)
    (config.landing_dir / "web" / "junk.jsonl").write_bytes(os.urandom(4096))
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert res.status == REJECTED
    assert con.execute("SELECT count(*) FROM raw.web_events").fetchall()[0][0] == 0


def test_rejected_file_loads_once_fixed(tmp_path):
    config = make_config(tmp_path, LINE_ITEMS)
    path = write(config.landing_dir / "pos" / "line_items_1.csv", "transaction_id,sku\nT1,S1\n")
    con = connect(config.warehouse_path)
    assert ingest(config, con).files[0].status == REJECTED
    path.write_text("transaction_id,line_no,sku,quantity,unit_price\nT1,1,S1,1,1\n")
    assert ingest(config, con).files[0].status == LOADED
    assert counts(con, "pos_line_items") == (1, 0)


# ------------------------------------------------------------------ incremental, idempotent
def test_reingest_adds_nothing_and_changes_are_detected(web_project):
    config, con = web_project
    f1 = write(config.landing_dir / "web" / "e1.jsonl", "\n".join(web_line(i) for i in range(10)) + "\n")
    write(config.landing_dir / "web" / "e2.jsonl", "\n".join(web_line(i) for i in range(10, 15)) + "\n")
    assert [f.status for f in ingest(config, con).files] == [LOADED, LOADED]
    assert counts(con, "web_events") == (15, 0)

    # Same files again: nothing read, nothing added.
    assert [f.status for f in ingest(config, con).files] == [UNCHANGED, UNCHANGED]
    # Touched (new mtime) but identical content: still nothing added.
    os.utime(f1, (time.time() + 5, time.time() + 5))
    assert ingest(config, con).files[0].status == UNCHANGED
    # The same content landed again under another name: a duplicate, skipped.
    shutil.copy(f1, config.landing_dir / "web" / "e1_copy.jsonl")
    statuses = {f.file: f.status for f in ingest(config, con).files}
    assert statuses["web/e1_copy.jsonl"] == DUPLICATE
    # New content under a name already loaded: reported, not double-loaded.
    f1.write_text("\n".join(web_line(i) for i in range(100, 103)) + "\n")
    report = ingest(config, con)
    changed = next(f for f in report.files if f.file == "web/e1.jsonl")
    assert changed.status == CHANGED and "different content" in changed.message
    assert not report.ok
    assert counts(con, "web_events") == (15, 0)
    assert con.execute("SELECT count(DISTINCT _load_id) FROM raw.web_events").fetchall()[0][0] == 2


def test_files_landed_together_load_side_by_side_once_each(tmp_path):
    """Several files load at once (one per DuckDB thread): every row keeps its own file's line
    number, and identical copies landed in the same batch load once, whichever runs first."""
    config = make_config(tmp_path, WEB)
    for n in range(6):
        lines = [web_line(n * 1000 + i) for i in range(1, 200 + n)]
        write(config.landing_dir / "web" / f"e{n}.jsonl", "\n".join(lines) + "\n")
    for copy in ("e0_copy_a.jsonl", "e0_copy_b.jsonl"):
        shutil.copy(config.landing_dir / "web" / "e0.jsonl", config.landing_dir / "web" / copy)
    con = connect(config.warehouse_path)
    con.execute("SET threads = 3")
    report = ingest(config, con)
    statuses = sorted(f.status for f in report.files)
    assert statuses.count(LOADED) == 6 and statuses.count(DUPLICATE) == 2, statuses
    assert report.files[0].file == "web/e0.jsonl"  # reported in landing order
    rows = con.execute('SELECT "messageId", _row, _file FROM raw.web_events').fetchall()
    assert len(rows) == sum(199 + n for n in range(6))
    for message_id, row, file in rows:
        n, i = divmod(int(message_id[1:]), 1000)
        assert file.endswith(f"e{n}.jsonl") or file.endswith("_copy_a.jsonl") or file.endswith("_copy_b.jsonl")
        assert row == i, (message_id, row, file)
    # The loader gives the connection its thread count back.
    assert con.execute("SELECT current_setting('threads')").fetchall()[0][0] == 3
    con.close()


def test_column_mapping_formats_and_two_instances_of_one_kind(tmp_path):
    config = make_config(
        tmp_path,
        ingestion={"max_bad_row_rate": 0.5},
        sources=[
            {"name": "pos_north", "kind": "pos", "entities": {"loyalty_members": {"path": "north/*.csv"}}},
            {
                "name": "pos_outlet",
                "kind": "pos",
                "entities": {
                    "loyalty_members": {
                        "path": "outlet/*.csv",
                        "delimiter": ";",
                        "columns": {"MemberNo": "loyalty_id", "Surname": "last_name", "DOB": "date_of_birth", "JoinedOn": "enrolled_at"},
                        "formats": {"date_of_birth": "%d/%m/%Y", "enrolled_at": "%d/%m/%Y %H:%M"},
                    }
                },
            },
        ],
    )
    write(
        config.landing_dir / "north" / "m.csv",
        "loyalty_id,first_name,last_name,date_of_birth,enrolled_at\nN1,Ann,Lee,1990-04-03,2024-01-02T10:00:00Z\n",
    )
    write(
        config.landing_dir / "outlet" / "m.csv",
        "MemberNo;Surname;DOB;JoinedOn\nO1;Lee;03/04/1990;02/01/2024 10:00\nO2;Kay;31/02/1990;02/01/2024 10:00\n",
    )
    con = connect(config.warehouse_path)
    ingest(config, con)
    rows = con.execute(
        "SELECT _source, loyalty_id, last_name, date_of_birth::VARCHAR, enrolled_at::VARCHAR "
        "FROM raw.pos_loyalty_members ORDER BY loyalty_id"
    ).fetchall()
    assert rows == [
        ("pos_north", "N1", "Lee", "1990-04-03", "2024-01-02 10:00:00+00"),
        ("pos_outlet", "O1", "Lee", "1990-04-03", "2024-01-02 10:00:00+00"),
        ("pos_outlet", "O2", "Kay", None, "2024-01-02 10:00:00+00"),
    ]
    # 31/02 is no date: an optional date of birth is nulled, the member kept, and the field recorded
    # in the quarantine under the contract's field name.
    assert con.execute("SELECT reason, field FROM raw.quarantine").fetchall() == [
        ("field_nulled:invalid_value", "date_of_birth")]


def test_extra_columns_are_ignored_and_reported(tmp_path):
    config = make_config(tmp_path, LINE_ITEMS)
    write(
        config.landing_dir / "pos" / "line_items_1.csv",
        "transaction_id,line_no,sku,quantity,unit_price,gift_wrap\nT1,1,S1,1,1,yes\n",
    )
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert res.status == LOADED and res.rows_loaded == 1
    assert "ignored column(s) not in the contract: gift_wrap" in res.message


def test_any_subset_of_sources(tmp_path):
    """Only POS configured and landed: every raw table exists, the others are empty."""
    config = make_config(tmp_path, LINE_ITEMS)
    write(config.landing_dir / "pos" / "line_items_1.csv", "transaction_id,line_no,sku,quantity,unit_price\nT1,1,S1,1,1\n")
    con = connect(config.warehouse_path)
    assert ingest(config, con).ok
    assert counts(con, "pos_line_items") == (1, 0)
    assert counts(con, "web_events") == (0, 0)


# ------------------------------------------------------------------ crash safety
CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from core.config import config_from_dict
    from core.warehouse import connect
    import ingestion.loader as loader

    root, mode = Path(sys.argv[1]), sys.argv[2]
    config = config_from_dict({"sources": [{"name": "web", "kind": "web",
                               "entities": {"events": {"path": "web/*.jsonl"}}}]}, root)
    if mode == "kill_before_commit":
        # Die the hard way after the rows are inserted, before the transaction commits.
        real_record = loader._record
        calls = {"n": 0}
        def record_then_die(con, res, *a):
            real_record(con, res, *a)
            calls["n"] += 1
            if calls["n"] == 2:   # the second file, mid-transaction
                os.kill(os.getpid(), signal.SIGKILL)
        loader._record = record_then_die
    con = connect(config.warehouse_path)
    loader.ingest(config, con)
    con.close()
    """
)


def _land_web_files(config, n_files: int, rows: int) -> int:
    total = 0
    for f in range(n_files):
        lines = [web_line(f * rows + i) for i in range(rows)]
        write(config.landing_dir / "web" / f"e{f:02d}.jsonl", "\n".join(lines) + "\n")
        total += rows
    return total


def _run_loader(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(root), mode],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_crash_mid_load_leaves_nothing_partial_and_rerun_completes(tmp_path):
    config = make_config(tmp_path, WEB)
    total = _land_web_files(config, n_files=3, rows=2000)
    proc = _run_loader(tmp_path, "kill_before_commit")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    con = connect(config.warehouse_path)
    # Files load side by side: the first may or may not have committed when the second died,
    # but whatever committed is whole files, each with its manifest row, and the killed
    # transaction left no rows and no manifest row.
    loaded = con.execute("SELECT count(*) FROM raw.loads WHERE status = 'loaded'").fetchall()[0][0]
    assert loaded in (0, 1)
    assert counts(con, "web_events") == (2000 * loaded, 0)
    assert con.execute("SELECT count(*) FROM raw.loads").fetchall()[0][0] == loaded
    con.close()
    proc = _run_loader(tmp_path, "normal")
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    con = connect(config.warehouse_path)
    assert counts(con, "web_events") == (total, 0)
    assert con.execute('SELECT count(DISTINCT "messageId") FROM raw.web_events').fetchall()[0][0] == total


def test_kill_at_random_moments_then_rerun_gives_exact_counts(tmp_path):
    config = make_config(tmp_path, WEB)
    total = _land_web_files(config, n_files=6, rows=20000)
    for delay in (0.8, 1.6, 2.4):
        proc = _run_loader(tmp_path, "normal")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    proc = _run_loader(tmp_path, "normal")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    con = connect(config.warehouse_path)
    assert counts(con, "web_events") == (total, 0)
    assert con.execute('SELECT count(DISTINCT "messageId") FROM raw.web_events').fetchall()[0][0] == total
    assert con.execute("SELECT count(*) FROM raw.loads WHERE status = 'loaded'").fetchall()[0][0] == 6


def test_error_messages_do_not_leak_values(tmp_path):
    """A rejection message names file, row and field - never the personal value itself."""
    config = make_config(
        tmp_path, [{"name": "pos", "kind": "pos", "entities": {"loyalty_members": {"path": "m/*.csv"}}}]
    )
    secret = "jane.doe.secret@example.com"
    write(
        config.landing_dir / "m" / "m.csv",
        "loyalty_id,email,date_of_birth,enrolled_at\n" + f"L1,{secret},1990-01-01,not-a-date\n" * 3,
    )
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert res.status == REJECTED and "enrolled_at" in res.message and "row 1" in res.message
    assert secret not in res.message


def test_a_field_added_to_a_contract_reaches_a_warehouse_made_before_it(tmp_path):
    """pos_transactions.card_token came after the first warehouses: their raw table gains the
    column on the next load, the rows already there keep their values, and new files load."""
    from ingestion.loader import ensure_raw_schema

    cfg = make_config(tmp_path, [{"name": "pos", "kind": "pos",
                                  "entities": {"transactions": {"path": "pos/transactions*.csv"}}}])
    con = connect(cfg.warehouse_path)
    ensure_raw_schema(con)
    con.execute("ALTER TABLE raw.pos_transactions DROP COLUMN card_token")
    con.execute("INSERT INTO raw.pos_transactions (transaction_id, store_id, occurred_at, total) "
                "VALUES ('OLD1', 'ST001', '2025-01-01 10:00:00+00', 5.0)")
    write(cfg.landing_dir / "pos" / "transactions_2025-02.csv",
          "transaction_id,store_id,occurred_at,loyalty_id,email,phone,channel,order_ref,subtotal,discount,total,"
          "payment_method,card_token\nT1,ST001,2025-02-01T10:00:00Z,,,,store,,5.00,0.00,5.00,card,ct_00ab\n")
    ingest(cfg, con)
    rows = con.sql("SELECT transaction_id, total, card_token FROM raw.pos_transactions ORDER BY 1").fetchall()
    assert rows == [("OLD1", 5.0, None), ("T1", 5.0, "ct_00ab")]
    con.close()


def test_a_transaction_keeps_all_of_its_writes_or_none(tmp_path):
    """The one BEGIN/COMMIT/ROLLBACK the loader, identity, erasure, segments, the gate and the sync
    state share: an error part-way leaves nothing of the block, and the connection usable."""
    import duckdb

    con = connect(tmp_path / "w.duckdb")
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1, 'kept')")
    with pytest.raises(duckdb.ConstraintException):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2, 'lost')")
            con.execute("UPDATE t SET v = 'changed' WHERE k = 1")
            con.execute("INSERT INTO t VALUES (1, 'duplicate')")
    with pytest.raises(KeyError):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (3, 'lost too')")
            raise KeyError("not a database error")
    with transaction(con):  # no transaction was left open
        con.execute("INSERT INTO t VALUES (4, 'kept')")
    assert con.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(1, "kept"), (4, "kept")]
    con.close()


# ------------------------------------------------------------------ counts that add up
LINE_ITEMS_HEADER = "transaction_id,line_no,sku,quantity,unit_price,discount"


def line_item(i: int, sep: str = ",") -> str:
    return sep.join([f"T{i}", "1", f"S{i % 9}", "2", "9.5", "0"])


def accounted(con, file: str) -> tuple[int, int, int, int, int]:
    """(lines, rows loaded, rows quarantined, rows erased, lines skipped) of a file's load."""
    return con.execute(
        "SELECT lines, rows_loaded, rows_quarantined, rows_erased, lines_skipped FROM raw.loads WHERE file = ?",
        [file],
    ).fetchall()[0]


def assert_adds_up(con) -> None:
    bad = con.execute(
        "SELECT file FROM raw.loads WHERE status = 'loaded' "
        "AND lines <> rows_loaded + rows_quarantined + rows_erased + lines_skipped"
    ).fetchall()
    assert not bad, bad


def test_a_jsonl_line_over_32mb_is_not_dropped(web_project):
    """DuckDB's JSON reader skips a line over its object size limit: the line-by-line path
    must read it (here it is valid, so it loads) and the counts must say 21 of 21."""
    config, con = web_project
    big = web_line(21, properties={"product_id": "S1", "blob": "x" * (33 * 1024 * 1024)})
    lines = [web_line(i) for i in range(1, 21)] + [big]
    write(config.landing_dir / "web" / "e.jsonl", "\n".join(lines) + "\n")
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded + res.rows_quarantined) == (LOADED, 21), res
    assert accounted(con, "web/e.jsonl")[:3] == (21, res.rows_loaded, res.rows_quarantined)
    assert con.execute("SELECT count(*) FROM raw.web_events WHERE _row = 21").fetchall()[0][0] == 1


def test_an_unterminated_quote_costs_one_line_not_the_rest_of_the_file(tmp_path):
    config = make_config(tmp_path, LINE_ITEMS)
    rows = [line_item(i) for i in range(1, 1001)]
    rows[979] = 'T980,1,"S1,2,9.5,0'  # data row 980: its quote never closes
    write(config.landing_dir / "pos" / "line_items_1.csv", LINE_ITEMS_HEADER + "\n" + "\n".join(rows) + "\n")
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 999, 1), res
    assert con.execute("SELECT _row, reason, raw_record FROM raw.quarantine").fetchall() == [
        (980, "malformed_csv_line", 'T980,1,"S1,2,9.5,0')
    ]
    assert con.execute("SELECT min(_row), max(_row) FROM raw.pos_line_items WHERE _row > 980").fetchall() == [(981, 1000)]
    assert accounted(con, "pos/line_items_1.csv") == (1001, 999, 1, 0, 1)


def test_a_bare_carriage_return_in_a_jsonl_line_is_one_verbatim_row(web_project):
    config, con = web_project
    odd = web_line(2)[:-1] + ', "note": "a\rb"}'  # a raw CR inside a string: not valid JSON
    lines = [web_line(1), odd, web_line(3)]
    write(config.landing_dir / "web" / "e.jsonl", "\n".join(lines) + "\n")
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 2, 1), res
    assert con.execute("SELECT _row, reason, raw_record FROM raw.quarantine").fetchall() == [(2, "malformed_json", odd)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_invalid_utf8_byte_costs_its_line_not_the_file(tmp_path, fmt):
    if fmt == "csv":
        config = make_config(tmp_path, LINE_ITEMS)
        name, head = "pos/line_items_1.csv", [LINE_ITEMS_HEADER.encode()]
        body = [line_item(i).encode() for i in range(1, 41)]
        body[1] = b"T2,1,S\xff2,2,9.5,0"
        table = "pos_line_items"
    else:
        config = make_config(tmp_path, WEB)
        name, head = "web/e.jsonl", []
        body = [web_line(i).encode() for i in range(1, 41)]
        body[1] = body[1].replace(b'"a2"', b'"a\xff2"')
        table = "web_events"
    (config.landing_dir / name).parent.mkdir(parents=True)
    (config.landing_dir / name).write_bytes(b"\n".join(head + body) + b"\n")
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 39, 1), res
    [(row, reason, raw)] = con.execute("SELECT _row, reason, raw_record FROM raw.quarantine").fetchall()
    # The line is kept with the byte it could not decode spelled out.
    assert (row, reason) == (2, "invalid_encoding") and "\\xff" in raw
    assert con.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0] == 39
    assert_adds_up(con)


@pytest.mark.parametrize(
    "variant",
    ["crlf", "bom", "bom_crlf", "embedded_newlines", "semicolon", "tab", "no_final_newline", "blank_lines"],
)
def test_files_real_systems_write_load_with_every_line_accounted_for(tmp_path, variant):
    sep = {"semicolon": ";", "tab": "\t"}.get(variant, ",")
    files = {"path": "pos/line_items*.csv", **({"delimiter": sep} if sep != "," else {})}
    config = make_config(tmp_path, [{"name": "pos", "kind": "pos", "entities": {"line_items": files}}])
    rows = [line_item(i, sep) for i in range(1, 6)]
    skipped = 1  # the header
    if variant == "embedded_newlines":  # a quoted field over three lines, in row 2
        rows[1] = 'T2,1,"S2\nsecond line\nthird",2,9.5,0'
        skipped += 2
    text = sep.join(LINE_ITEMS_HEADER.split(",")) + "\n" + "\n".join(rows) + "\n"
    if variant == "blank_lines":
        text = text.replace("T3", "\nT3") + "\n"
        skipped += 2
    if variant == "no_final_newline":
        text = text[:-1]
    data = text.encode()
    if "crlf" in variant:
        data = data.replace(b"\n", b"\r\n")
    if "bom" in variant:
        data = b"\xef\xbb\xbf" + data
    (config.landing_dir / "pos").mkdir(parents=True)
    (config.landing_dir / "pos" / "line_items_1.csv").write_bytes(data)
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert (res.status, res.rows_loaded, res.rows_quarantined) == (LOADED, 5, 0), res
    got = con.execute("SELECT transaction_id, _row, sku, quantity FROM raw.pos_line_items ORDER BY _row").fetchall()
    sku2 = "S2\nsecond line\nthird" if variant == "embedded_newlines" else "S2"
    if variant == "bom_crlf" or variant == "crlf":
        sku2 = sku2.replace("\n", "\r\n")
    assert got == [("T1", 1, "S1", 2), ("T2", 2, sku2, 2), ("T3", 3, "S3", 2), ("T4", 4, "S4", 2), ("T5", 5, "S5", 2)]
    n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
    assert accounted(con, "pos/line_items_1.csv") == (n_lines, 5, 0, 0, skipped)


def test_csv_fast_and_line_by_line_paths_load_identical_rows(tmp_path):
    """A clean CSV is read by DuckDB's reader; one with a bad line is read line by line.
    The good rows come out the same either way (empty fields included)."""
    header = "loyalty_id,first_name,last_name,email,phone,address_line1,city,postcode,date_of_birth,enrolled_at"
    good = [f'L{i},Ann,{"" if i % 2 else "Lee"},,+44 7700 900{i:03d},"1 High St, Flat {i}",York,,1990-01-0{1 + i % 9},'
            f"2024-01-02T10:00:00Z" for i in range(1, 30)]
    out = []
    for sub, body in (("a", good), ("b", good[:10] + ['L99,"broken'] + good[10:])):
        cfg = make_config(tmp_path / sub, [{"name": "pos", "kind": "pos",
                                            "entities": {"loyalty_members": {"path": "m/*.csv"}}}])
        write(cfg.landing_dir / "m" / "m.csv", header + "\n" + "\n".join(body) + "\n")
        con = connect(cfg.warehouse_path)
        [res] = ingest(cfg, con).files
        assert res.status == LOADED and res.rows_loaded == 29, res
        out.append(con.execute(
            "SELECT * EXCLUDE (_row, _load_id, _loaded_at) FROM raw.pos_loyalty_members ORDER BY loyalty_id").fetchall())
        assert_adds_up(con)
        con.close()
    assert out[0] == out[1]


def test_a_count_that_does_not_add_up_rejects_the_file_by_name(tmp_path, monkeypatch):
    """A reader that lost a line (a loader fault) must not pass as a load."""
    import ingestion.loader as loader

    config = make_config(tmp_path, LINE_ITEMS)
    write(config.landing_dir / "pos" / "line_items_1.csv",
          LINE_ITEMS_HEADER + "\n" + "\n".join(line_item(i) for i in range(1, 50)) + "\nT50,x\n")
    real = loader._csv_records

    def lose_one(*args, **kwargs):
        records = real(*args, **kwargs)
        next(records)
        return records

    monkeypatch.setattr(loader, "_csv_records", lose_one)
    con = connect(config.warehouse_path)
    [res] = ingest(config, con).files
    assert res.status == REJECTED and "pos/line_items_1.csv" in res.message and "do not add up" in res.message
    assert counts(con, "pos_line_items") == (0, 0)


# ------------------------------------------------------------------ landing folder hygiene
def test_landed_files_that_match_no_glob_are_reported(tmp_path):
    from rich.console import Console

    from cdp.reporting import print_raw_overview, status_dict
    from ingestion.loader import unmatched_files

    config = make_config(tmp_path, WEB + LINE_ITEMS)
    write(config.landing_dir / "web" / "e1.jsonl", web_line(1) + "\n")
    write(config.landing_dir / "pos" / "line_items_1.csv", LINE_ITEMS_HEADER + "\n" + line_item(1) + "\n")
    strays = ["pos/line-items_2.csv", "pos/LINE_ITEMS_3.csv", "pos/line_items_4.csv.gz", "web/2025/e2.jsonl", "notes.txt"]
    for name in strays:
        write(config.landing_dir / name, "x\n")
    write(config.landing_dir / "web" / ".e3.jsonl.partial", "x\n")  # hidden: an upload under way
    assert unmatched_files(config) == sorted(strays)
    con = connect(config.warehouse_path)
    ingest(config, con)
    con.close()
    assert status_dict(config, tmp_path / "cdp.yaml")["unmatched_landing_files"] == sorted(strays)
    console = Console(record=True, width=200)
    print_raw_overview(console, config)
    shown = console.export_text()
    assert "match no source's path" in shown and all(name in shown for name in strays), shown


# ------------------------------------------------------------------ no personal data in load messages
def test_a_headerless_csv_puts_no_personal_data_in_any_load_message(tmp_path, caplog):
    import logging

    config = make_config(tmp_path, [{"name": "pos", "kind": "pos",
                                     "entities": {"loyalty_members": {"path": "m/*.csv"}}}])
    person = ["LM0048213", "Jane", "Doe", "jane.doe@example.com", "+44 7700 900123", "12 Acacia Avenue",
              "Leeds", "LS1 4AB", "1984-07-19", "2024-01-02T10:00:00Z"]
    other = ["LM0048214", "John", "Roe", "john.roe@example.com", "+44 7700 900456", "3 Elm Road",
             "York", "YO1 7HH", "1979-02-03", "2024-01-03T10:00:00Z"]
    write(config.landing_dir / "m" / "members.csv", ",".join(person) + "\n" + ",".join(other) + "\n")
    said: list[str] = []
    con = connect(config.warehouse_path)
    with caplog.at_level(logging.DEBUG):
        report = ingest(config, con, progress=said.append)
    [res] = report.files
    assert res.status == REJECTED
    assert "the first line does not look like a header: column 1 is an identifier-like value" in res.message
    assert "loyalty_id" in res.message  # the missing column is named
    stored = " ".join(str(v) for row in con.execute("SELECT * FROM raw.loads").fetchall() for v in row)
    everything = "\n".join([stored, res.message, *said, caplog.text, json.dumps(report.to_dict())])
    for value in person[:9] + other[:9]:
        assert value not in everything, value
