"""Identity: normalisation, junk, nicknames, settings, model sanity checks and metric math."""

import duckdb
import pytest

from core import normalise as n
from core.config import ConfigError, config_from_dict
from core.settings.identity import IdentitySettings
from identity.clustering import jaro_winkler, names_compatible
from identity.evaluate import pair_metrics
from identity.splink_model import check_parameters


@pytest.fixture
def con():
    c = duckdb.connect()
    n.install_macros(c)
    yield c
    c.close()


def sql1(con, expr, *params):
    if params and expr.count("?") > 1:  # the same value in several places
        expr = expr.replace("?", "$1")
    return con.execute(f"SELECT {expr}", list(params)).fetchall()[0][0]


@pytest.mark.parametrize("raw,canon", [
    (" J.Smith+shop@GoogleMail.com ", "jsmith@gmail.com"),
    ("jsmith@gmail.com", "jsmith@gmail.com"),
    ("J.S.M.I.T.H@gmail.com", "jsmith@gmail.com"),
    ("john.smith+news@outlook.com", "john.smith@outlook.com"),  # dots matter outside Gmail
    ("JOHN.SMITH@OUTLOOK.COM", "john.smith@outlook.com"),
])
def test_email_canonical_python_and_sql_agree(con, raw, canon):
    assert n.email_canonical(raw) == canon
    assert sql1(con, "id_email_canon(id_norm_email(?))", raw) == canon


@pytest.mark.parametrize("raw", [
    "+447700900123", "07700 900123", "(07700) 900123", "447700900123", "07700-900-123", "07700900123",
    "+44 7700 900123", "+44 (0)7700 900123", "0044 7700 900123",
])
def test_uk_mobile_formats_to_e164(con, raw):
    assert n.phone_e164(raw) == "+447700900123"
    assert sql1(con, "id_phone_gb_fast(?)", raw) == "+447700900123"


def test_landline_and_foreign_numbers(con):
    assert n.phone_e164("020 7946 0018") == sql1(con, "id_phone_gb_fast(?)", "020 7946 0018") == "+442079460018"
    # not a UK shape: SQL leaves it to phonenumbers
    assert sql1(con, "id_phone_gb_fast(?)", "+1 415 555 2671") is None
    assert n.phone_e164("+1 415 555 2671") == "+14155552671"
    assert n.phone_e164("n/a") is None


def test_names_accents_and_nicknames(con):
    assert n.norm_name("  Zoë ") == "zoe" == sql1(con, "id_norm_name(?)", "  Zoë ")
    assert n.norm_name("O'Brien-Smith") == "obriensmith"
    assert n.canonical_first_name("Bob") == "robert" == n.canonical_first_name("ROBERT")
    assert n.canonical_first_name("Liz") == "elizabeth"
    assert n.canonical_first_name("Xanthe") == "xanthe"
    assert sql1(con, "(SELECT canon FROM id_nicknames WHERE name = 'bill')") == "william"


def test_postcode_and_address(con):
    assert n.norm_postcode("sw1a 1aa") == "SW1A1AA" == sql1(con, "id_postcode(?)", "sw1a 1aa")
    assert n.norm_address("12 Queens ROAD") == "12 queens rd" == sql1(con, "id_address(?)", "12 Queens ROAD")


def test_blocked_values_and_patterns(con):
    s = IdentitySettings()
    r = s.rule("email")
    expr = n.blocked_sql("id_norm_email(?)", r.blocked_values, r.blocked_patterns)
    for junk in ("test@test.com", "NOEMAIL@none.com", "a@a.com", "someone@example.com", "not-an-email"):
        assert sql1(con, expr, junk) is None, junk
    assert sql1(con, expr, "real.person@gmail.com") == "real.person@gmail.com"
    p = s.rule("phone")
    pexpr = n.blocked_sql("id_phone_gb_fast(?)", p.blocked_values, p.blocked_patterns)
    for junk in ("0000000000", "07000000000", "1234567890"):
        assert sql1(con, pexpr, junk) is None, junk
    assert sql1(con, pexpr, "07700 900123") == "+447700900123"
    f = s.rule("first_name")
    fexpr = n.blocked_sql("id_norm_name(?)", f.blocked_values, f.blocked_patterns)
    assert sql1(con, fexpr, "N/A") is None and sql1(con, fexpr, "x") is None and sql1(con, fexpr, "Anna") == "anna"


def test_settings_defaults_overrides_and_typos(tmp_path):
    cfg = config_from_dict({"identity": {}}, tmp_path)
    assert cfg.identity.match_threshold == IdentitySettings().match_threshold
    cfg = config_from_dict({"identity": {"rules": {"email": {"max_per_profile": 3}}}}, tmp_path)
    assert cfg.identity.rules["email"].max_per_profile == 3
    assert cfg.identity.rules["email"].blocked_values  # defaults kept for unnamed fields
    with pytest.raises(ConfigError, match="match_treshold"):
        config_from_dict({"identity": {"match_treshold": 0.9}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown identifier"):
        config_from_dict({"identity": {"rules": {"emial": {}}}}, tmp_path)
    with pytest.raises(ConfigError):
        config_from_dict({"identity": {"rules": {"phone": {"requires": ["shoe_size"]}}}}, tmp_path)


def test_name_compatibility():
    assert jaro_winkler("martha", "marhta") > 0.95
    assert names_compatible({"rob", "robert"}, None, {"robert"}, None)
    assert names_compatible({"rboert"}, None, {"robert"}, None)  # a typo
    assert not names_compatible({"john"}, {"smith"}, {"mary"}, {"smith"})  # household
    assert names_compatible({"smith"}, {"john"}, {"john"}, {"smith"})  # swapped


def _model(m_exact=0.9, u_exact=0.01, m_else=0.1, u_else=0.99, lam=1e-4):
    return {"probability_two_random_records_match": lam, "comparisons": [{
        "output_column_name": "email", "comparison_levels": [
            {"sql_condition": "x IS NULL", "is_null_level": True},
            {"sql_condition": "a=b", "label_for_charts": "exact", "m_probability": m_exact, "u_probability": u_exact},
            {"sql_condition": "ELSE", "label_for_charts": "else", "m_probability": m_else, "u_probability": u_else},
        ]}]}


def test_model_sanity_checks():
    assert check_parameters(_model()) == []
    bad = check_parameters(_model(m_exact=0.005, m_else=0.995))
    assert any("agreeing counts against a match" in p for p in bad)
    assert any("disagreeing counts for a match" in p for p in bad)
    assert any("not a probability" in p for p in check_parameters(_model(m_exact=float("nan"))))
    assert any("probability_two_random_records_match" in p for p in check_parameters(_model(lam=0.9)))


def test_metric_math_on_a_tiny_example():
    # truth: {a,b,c} {d,e}; predicted: {a,b} {c,d,e}
    con = duckdb.connect()
    rel = ("SELECT * FROM (VALUES ('a','P1','T1'),('b','P1','T1'),('c','P2','T1'),('d','P2','T2'),('e','P2','T2'))"
           " v(record_key, pred, truth)")
    m = pair_metrics(con, rel)
    # predicted pairs: ab, cd, ce, de = 4; true pairs: ab, ac, bc, de = 4; both: ab, de = 2
    assert m["pairwise_precision"] == pytest.approx(0.5) and m["pairwise_recall"] == pytest.approx(0.5)
    assert m["pairwise_f1"] == pytest.approx(0.5)
    # B-cubed precision: a,b: 2/2; c: 1/3; d,e: 2/3 -> (1+1+1/3+2/3+2/3)/5
    assert m["bcubed_precision"] == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5, abs=1e-6)
    # B-cubed recall: a,b: 2/3; c: 1/3; d,e: 2/2
    assert m["bcubed_recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5, abs=1e-6)
    assert m["over_merged_clusters"] == 1 and m["under_merged_persons"] == 1


def test_the_stage_memory_bound_is_set_spills_beside_the_warehouse_and_is_removed(tmp_path):
    """identity.memory_limit_gb bounds the warehouse connection for the stage and Splink's own
    database (3/4 of it); Splink spills into a directory beside the warehouse, removed at the end,
    and the connection gets its own limit back."""
    from types import SimpleNamespace

    import pyarrow as pa

    from identity.pipeline import _bounded_memory
    from identity.splink_model import SPLINK_COLUMNS, make_linker

    def limit(c):
        return c.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]

    ref = duckdb.connect()
    ref.execute("SET memory_limit = '512MiB'")
    half_gb = limit(ref)
    ref.execute("SET memory_limit = '384MiB'")
    splink_share = limit(ref)
    wh = tmp_path / "warehouse" / "tessera.duckdb"
    wh.parent.mkdir()
    con = duckdb.connect(str(wh))
    before = limit(con)
    settings = IdentitySettings(memory_limit_gb=0.5)
    rows = [{c: None for c in SPLINK_COLUMNS} | {"unique_id": i, "first_name": f"ann{i % 7}", "first_name_canon": f"ann{i % 7}",
                                                 "last_name": f"lee{i % 5}", "dob": f"19{50 + i % 40}-01-0{1 + i % 9}"}
            for i in range(60)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.int64() if c == "unique_id" else pa.string())
                                                         for c in SPLINK_COLUMNS]))
    with _bounded_memory(con, SimpleNamespace(warehouse_path=wh), settings) as memory:
        assert limit(con) == half_gb
        assert memory.spill_dir.is_dir() and memory.spill_dir.parent == wh.parent
        _, sdb = make_linker(table, settings, memory_limit_mb=memory.splink_mb, temp_directory=memory.spill_dir / "splink")
        assert limit(sdb) == splink_share
        assert sdb.sql("SELECT current_setting('temp_directory')").fetchall()[0][0] == str(memory.spill_dir / "splink")
        sdb.close()
    assert not memory.spill_dir.exists()
    assert limit(con) == before
    con.close()

