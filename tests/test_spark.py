"""engine: spark - the settings, and each stage on a local[2] Spark against DuckDB on the same
input. One SparkSession for the whole module (starting one costs ~10-20 s); run alone with
`pytest -m spark`. Needs Java 17 (on every machine of this kind; README "Running on Spark")."""

import hashlib
import json
import random
import shutil
from decimal import Decimal

import duckdb
import numpy as np
import pytest

from core.config import ConfigError, config_from_dict, load_config
from core.settings.identity import IdentitySettings
from core.warehouse import connect
from ingestion import loader, spark_loader
from tests.helpers import make_config, write

pytestmark = pytest.mark.spark


# ------------------------------------------------------------------ settings (no Spark needed)
def test_engine_defaults_to_duckdb_and_the_template_says_so(project):
    assert project.engine == "duckdb"
    assert project.spark.master == "local[2]" and project.spark.catalog == "spark_catalog"
    assert project.spark_warehouse.startswith("file:") and project.spark_warehouse.endswith("/warehouse/spark")
    text = (project.root / "cdp.yaml").read_text()
    assert "\nengine: duckdb\n" in text
    spark_cfg = load_config_text(project.root, text.replace("\nengine: duckdb\n", "\nengine: spark\n"))
    assert spark_cfg.engine == "spark"


def load_config_text(root, text):
    (root / "cdp.yaml").write_text(text)
    return load_config(root / "cdp.yaml")


@pytest.mark.parametrize("spark, says", [
    ({"master": "local[two]"}, "spark.master: 'local[two]' is not a Spark master URL"),
    ({"connect": "http://host:15002"}, "spark.connect: 'http://host:15002' is not a Spark Connect endpoint"),
    ({"master": "yarn", "connect": "sc://host:15002"}, "give either `master` or `connect`, not both"),
    ({"catalog": "my-catalog"}, "spark.catalog: use letters"),
    ({"conf": {"executor.memory": "8g"}}, "is not a Spark setting"),
    ({"conf": {"spark.master": "yarn"}}, "set it there"),
    ({"warehouse_dir": "x"}, "spark.warehouse_dir: unknown key"),
])
def test_bad_spark_settings_say_what_to_fix(tmp_path, spark, says):
    with pytest.raises(ConfigError, match=r"(?s)" + __import__("re").escape(says)):
        config_from_dict({"engine": "spark", "spark": spark}, tmp_path)


def test_engine_must_be_known_and_uris_pass_through(tmp_path):
    with pytest.raises(ConfigError, match="engine: Input should be 'duckdb' or 'spark'"):
        config_from_dict({"engine": "postgres"}, tmp_path)
    cfg = config_from_dict({"engine": "spark", "spark": {"connect": "sc://spark.internal:15002",
                                                         "warehouse": "s3a://bucket/tessera"}}, tmp_path)
    assert cfg.spark.connect == "sc://spark.internal:15002" and cfg.spark_warehouse == "s3a://bucket/tessera"


def test_the_one_writer_pool_is_only_for_duckdb_projects(tmp_path):
    import yaml

    from dagster_project.instance import ensure_dagster_home

    duck = yaml.safe_load((ensure_dagster_home(tmp_path / "duck") / "dagster.yaml").read_text())
    spark = yaml.safe_load((ensure_dagster_home(tmp_path / "spk", "spark") / "dagster.yaml").read_text())
    assert duck["concurrency"]["pools"] == {"default_limit": 1}
    assert "pools" not in spark["concurrency"] and spark["concurrency"]["runs"] == {"max_concurrent_runs": 1}


def test_a_stage_not_on_spark_stops_with_its_reason(tmp_path):
    from dagster import Failure

    from dagster_project.defs.resources import TesseraResource

    (tmp_path / "cdp.yaml").write_text("engine: spark\n")
    tessera = TesseraResource(config_path=str(tmp_path / "cdp.yaml"))
    assert tessera.engine == "spark"
    # a step that names no schemas it writes on Spark is not on Spark
    with pytest.raises(Failure, match="engine: spark; on Spark this stage does not run yet"):
        with tessera.warehouse():
            pass


# ------------------------------------------------------------------ the session
@pytest.fixture(scope="module")
def spark_root(tmp_path_factory):
    return tmp_path_factory.mktemp("spark_project")


@pytest.fixture(scope="module")
def spark(spark_root):
    from core.spark import spark_session

    cfg = config_from_dict({"engine": "spark"}, spark_root)
    session = spark_session(cfg)
    yield session
    session.stop()


# ------------------------------------------------------------------ ingestion: the same outcome on both engines
SOURCES = [
    {"name": "web", "kind": "web", "entities": {"events": {"path": "web/*.jsonl"}}},
    {"name": "pos_outlet", "kind": "pos", "entities": {"loyalty_members": {
        "path": "pos_outlet/members*.csv",
        "columns": {"MemberNo": "loyalty_id", "FirstName": "first_name", "Surname": "last_name",
                    "Street": "address_line1", "DOB": "date_of_birth", "JoinedOn": "enrolled_at"},
        "formats": {"date_of_birth": "%d/%m/%Y", "enrolled_at": "%d/%m/%Y %H:%M"}}}},
]


def web_line(i: int, **overrides) -> str:
    rec = {"messageId": f"m{i}", "type": "track", "event": "Product Viewed", "anonymousId": f"a{i % 7}",
           "properties": {"product_id": f"S{i % 5}", "price": 9.5},
           "context": {"page": {"url": f"https://shop.example/p/{i}"}},
           "timestamp": f"2025-03-01T10:{i % 60:02d}:00.000Z"}
    rec.update(overrides)
    return json.dumps({k: v for k, v in rec.items() if v is not None})


def land(config) -> None:
    web = config.landing_dir / "web"
    bad = [web_line(1), web_line(2, timestamp="2025-02-30T25:61:00Z"), web_line(3, messageId=None),
           web_line(4, anonymousId=None), web_line(5)[:40], web_line(6, type="bogus"),
           web_line(7, timestamp="1970-01-01T00:00:00Z"), "", web_line(9, anonymousId=None, userId="u9")]
    write(web / "e1.jsonl", "\n".join(bad + [web_line(i) for i in range(10, 40)]) + "\n")
    write(web / "e2.jsonl", "\n".join(web_line(i) for i in range(100, 160)) + "\n")
    shutil.copy(web / "e2.jsonl", web / "e2_copy.jsonl")  # the same content again: a duplicate
    # a line that is not UTF-8: read again line by line, and quarantined verbatim
    (web / "e3.jsonl").write_bytes(("\n".join(web_line(i) for i in range(200, 230)) + "\n").encode()
                                   + b'{"messageId": "m\xff", "type": "track"}\n')
    members = ["MemberNo,FirstName,Surname,Street,DOB,JoinedOn,Extra"] + [
        f"L{i},Bo,Ng,{i} High St,0{1 + i % 9}/02/1980,03/04/2021 10:15,x" for i in range(30)]
    members += ['L50,Bo,Ng,"Flat 2\n7 Mill Lane",31/02/1980,03/04/2021 10:15,x']  # a field over 2 lines, a bad DOB
    members += ["L51,Bo,Ng,1 Rd,01/01/1990,yesterday,x"]  # invalid_timestamp
    write(config.landing_dir / "pos_outlet" / "members_1.csv", "\n".join(members) + "\n")


def _text_cols(con, table: str, columns: list[str]) -> str:
    return ", ".join(f'CAST("{c}" AS VARCHAR)' for c in columns)


def duckdb_rows(con, table, columns, order):
    return con.execute(f"SELECT {_text_cols(con, table, columns)} FROM raw.{table} ORDER BY {order}").fetchall()


def spark_rows(config, table, columns, order):
    """The Spark warehouse's Parquet files, read by DuckDB (as a BI tool would)."""
    from core.spark import table_location

    folder = spark_loader.local_path(table_location(config, "raw", table))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = [str(p) for p in folder.rglob("*.parquet")]
    if not files:
        return []
    return con.execute(f"SELECT {_text_cols(con, table, columns)} FROM read_parquet({files!r}, union_by_name=true) "
                       f"ORDER BY {order}").fetchall()


def same_rows(on_spark: list[tuple], on_duckdb: list[tuple]) -> None:
    """Equal row lists; on a difference, the first differing pair in full."""
    for a, b in zip(on_spark, on_duckdb):
        assert a == b, f"Spark: {a}\nDuckDB: {b}"
    assert len(on_spark) == len(on_duckdb) > 0


def test_ingestion_on_spark_matches_duckdb(tmp_path, spark, monkeypatch):
    from core.contracts import entity

    duck_cfg = make_config(tmp_path / "duck", SOURCES, ingestion={"max_bad_row_rate": 0.5})
    spark_cfg = make_config(tmp_path / "spk", SOURCES, ingestion={"max_bad_row_rate": 0.5}, engine="spark")
    land(duck_cfg)
    land(spark_cfg)
    con = connect(duck_cfg.warehouse_path)
    duck = loader.ingest(duck_cfg, con)
    on_spark = spark_loader.ingest(spark_cfg, spark)

    def outcome(report):
        return sorted((f.file, f.status, f.rows_loaded, f.rows_quarantined, f.lines, f.lines_skipped, f.checksum)
                      for f in report.files)

    assert outcome(on_spark) == outcome(duck)
    statuses = {f.file: f.status for f in on_spark.files}
    assert statuses["web/e2_copy.jsonl"] == loader.DUPLICATE and statuses["web/e1.jsonl"] == loader.LOADED
    for kind, name in (("web", "events"), ("pos", "loyalty_members")):
        ent = entity(kind, name)
        cols = list(ent.field_names) + ["_source", "_file", "_row"]
        same_rows(spark_rows(spark_cfg, ent.table, cols, "_file, _row"), duckdb_rows(con, ent.table, cols, "_file, _row"))
    qcols = ["_source", "_file", "_row", "table_name", "reason", "field", "raw_record"]
    quarantined = spark_rows(spark_cfg, "quarantine", qcols, "_file, _row, reason")
    same_rows(quarantined, duckdb_rows(con, "quarantine", qcols, "_file, _row, reason"))
    reasons = {(r[1], r[4]) for r in quarantined}
    assert {("web/e3.jsonl", "invalid_encoding"), ("web/e1.jsonl", "invalid_value"), ("web/e1.jsonl", "malformed_json"),
            ("pos_outlet/members_1.csv", "field_nulled:invalid_value"),
            ("pos_outlet/members_1.csv", "invalid_timestamp")} <= reasons
    # the catalog sees the tables Spark wrote
    duck_rows_before_e4 = con.execute("SELECT * FROM raw.web_events").fetchall()
    assert spark.table("spark_catalog.raw.web_events").count() == len(duck_rows_before_e4)

    # a crash between a file's rows and its manifest row: nothing of it stays, the rerun loads it once
    write(spark_cfg.landing_dir / "web" / "e4.jsonl", "\n".join(web_line(i) for i in range(300, 310)) + "\n")
    real_record = spark_loader._record

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(spark_loader, "_record", crash)
    with pytest.raises(KeyboardInterrupt):
        spark_loader.ingest(spark_cfg, spark, tables=["web_events"])
    monkeypatch.setattr(spark_loader, "_record", real_record)
    again = spark_loader.ingest(spark_cfg, spark, tables=["web_events"], progress=lambda m: None)
    assert [(f.file, f.rows_loaded) for f in again.files if f.status == loader.LOADED] == [("web/e4.jsonl", 10)]
    e4 = spark.sql("SELECT count(*) FROM spark_catalog.raw.web_events WHERE _file = 'web/e4.jsonl'").first()[0]
    assert e4 == 10
    con.close()

    # The working copy gets a table a slice of its Parquet files at a time (whole, raw.web_events
    # at 100k customers passed spark.driver.maxResultSize): the same rows and types as whole.
    from core import spark_bridge

    copies = {}
    for name, chunk in (("whole", 1 << 40), ("one file per slice", 1)):
        monkeypatch.setattr(spark_bridge, "CHUNK_BYTES", chunk)
        copies[name] = duckdb.connect()
        spark_bridge._copy_in(spark, copies[name], "spark_catalog.raw.web_events", "raw", "web_events", naive=True)
    assert len(spark_bridge._file_slices(spark.table("spark_catalog.raw.web_events"))) > 3
    rows = {name: c.execute("SELECT * FROM raw.web_events ORDER BY _file, _row").fetchall() for name, c in copies.items()}
    assert rows["one file per slice"] == rows["whole"] and len(rows["whole"]) == e4 + len(duck_rows_before_e4)
    types = {name: c.execute("DESCRIBE raw.web_events").fetchall() for name, c in copies.items()}
    assert types["one file per slice"] == types["whole"]
    # a view comes whole: its input files are the table it reads, whose types are not the view's
    # (as marts.identity_graph's FLOAT over identity.graph's DOUBLE)
    spark.sql("CREATE TABLE spark_catalog.raw.prices USING parquet AS SELECT CAST(_row AS DOUBLE) AS price "
              "FROM spark_catalog.raw.web_events")
    spark.sql("CREATE OR REPLACE VIEW spark_catalog.raw.prices_float AS "
              "SELECT CAST(price AS FLOAT) AS price FROM spark_catalog.raw.prices")
    try:
        working = duckdb.connect()
        assert "raw.prices_float" in spark_bridge.import_from_spark(spark, working, spark_cfg)
        assert working.execute("SELECT count(*) FROM raw.prices_float").fetchall()[0][0] == len(rows["whole"])
    finally:
        spark.sql("DROP VIEW spark_catalog.raw.prices_float")
        spark.sql("DROP TABLE spark_catalog.raw.prices")


# ------------------------------------------------------------------ identity: the same pairs and clusters
def identity_records(n_people: int = 120, seed: int = 5) -> list[dict]:
    """Splink input records: people with 1-3 records each, some with a typo, a nickname or a
    missing field (enough for the recipe to choose blocks and train)."""
    rng = random.Random(seed)
    firsts = ["anna", "ben", "carla", "dev", "ella", "finn", "gita", "hugo", "iris", "jon", "kira", "liam"]
    lasts = ["smith", "jones", "patel", "nguyen", "brown", "okafor", "silva", "kowalski", "li", "murphy"]
    cities = ["leeds", "york", "bath", "derby", "hull"]
    rows = []
    for p in range(n_people):
        first, last = rng.choice(firsts), rng.choice(lasts)
        dob = f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        postcode = f"LS{rng.randint(1, 29)}{rng.randint(1, 9)}{rng.choice('ABDEF')}{rng.choice('GHJLN')}"
        email = f"{first}.{last}{p}@mail.example"
        phone = f"+4477009{p:05d}"
        address = f"{rng.randint(1, 200)} {rng.choice(['high', 'mill', 'park'])} st"
        for k in range(rng.choice([1, 1, 2, 3])):
            f, e, ph, d = first, email, phone, dob
            if k and rng.random() < 0.3:
                f = f[:-1] + "x"  # a typo
            if k and rng.random() < 0.3:
                e = None
            if k and rng.random() < 0.3:
                ph = None
            rows.append({"first_name": f, "first_name_canon": f, "last_name": last,
                         "full_name": f"{f} {last}", "email_canon": e, "email_local": e.split("@")[0] if e else None,
                         "phone": ph, "address": address, "postcode": postcode, "postcode_outward": postcode[:-3],
                         "dob": d, "city": rng.choice(cities)})
    rng.shuffle(rows)
    return [{"unique_id": i, **r} for i, r in enumerate(rows)]


def test_identity_on_spark_gives_the_duckdb_pairs_and_clusters(spark, tmp_path):
    import pyarrow as pa

    from identity import spark_splink, splink_model
    from identity.clustering import _components

    settings = IdentitySettings()
    records = identity_records()
    table = pa.Table.from_pylist(records)
    linker, db = splink_model.make_linker(table, settings, threads=1)
    splink_model.train(linker, settings)
    splink_model.smooth_untrained(linker)
    model = splink_model.model_dict(linker)
    assert splink_model.check_parameters(model) == []
    duck_pairs = splink_model.predict(linker, settings.match_threshold).to_pylist()
    db.close()
    assert len(duck_pairs) > 20  # the test has pairs to compare

    frame = spark.createDataFrame(table.to_pandas())
    spark_linker = spark_splink.spark_linker(spark, frame, settings, model=model)
    spark_pairs = spark_splink.predict(spark_linker, settings.match_threshold).collect()

    def keyed(pairs):
        return {(min(p["unique_id_l"], p["unique_id_r"]), max(p["unique_id_l"], p["unique_id_r"])):
                p["match_probability"] for p in pairs}

    duck_keyed, spark_keyed = keyed(duck_pairs), keyed([r.asDict() for r in spark_pairs])
    assert spark_keyed.keys() == duck_keyed.keys()
    assert all(abs(spark_keyed[k] - duck_keyed[k]) < 1e-6 for k in duck_keyed)
    # the stage's scorer hands the records over as Parquet files (in memory, one local relation
    # ran the driver's heap out at 100k customers): the same pairs, and no file left behind
    scratch = tmp_path / "scratch"
    scored = spark_splink.pair_scorer(spark, settings, str(scratch))(table, model, settings.match_threshold)
    scored_keyed = keyed(scored.to_pylist())
    assert scored_keyed.keys() == duck_keyed.keys()
    assert all(abs(scored_keyed[k] - duck_keyed[k]) < 1e-6 for k in duck_keyed)
    assert scratch.is_dir() and not any(scratch.rglob("*"))

    # clusters: scipy's components of the DuckDB pairs = Spark's components of Spark's pairs
    left = np.array([k[0] for k in duck_keyed])
    right = np.array([k[1] for k in duck_keyed])
    labels = _components(len(records), left, right)
    duck_clusters = {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}
    edges = spark.createDataFrame([(a, b) for a, b in spark_keyed], "src long, dst long")
    nodes = spark.createDataFrame([(r["unique_id"],) for r in records], "node long")
    comp = spark_splink.connected_components(edges, nodes).collect()
    by_comp: dict[int, set] = {}
    for row in comp:
        by_comp.setdefault(row["component"], set()).add(row["node"])
    assert {frozenset(v) for v in by_comp.values()} == duck_clusters
    assert all(min(v) == c for c, v in by_comp.items())  # the component id is its smallest record
    assert any(len(c) > 2 for c in duck_clusters)  # (chains were joined, not only pairs)


def test_connected_components_joins_a_long_chain_in_few_rounds(spark):
    from identity import spark_splink

    n = 64  # a chain 0-1-2-...-63, given in a shuffled order: plain propagation would need 63 rounds
    pairs = [(i, i + 1) for i in range(n - 1)] + [(100, 101)]
    random.Random(1).shuffle(pairs)
    edges = spark.createDataFrame(pairs, "src long, dst long")
    comp = {r["node"]: r["component"] for r in spark_splink.connected_components(edges, max_rounds=12).collect()}
    assert {comp[i] for i in range(n)} == {0} and comp[100] == comp[101] == 100


# ------------------------------------------------------------------ dbt: the dispatched macros on both adapters
PROBE_MODEL = """
with src as (
    select '{"page": {"url": "https://shop.example/p/1"}, "price": "9.5", "tags": ["sale", "new"]}' as j,
           '+44 (0)7700-900123' as phone
)
select {{ json_text('j', 'page.url') }} as url,
       {{ json_number('j', 'price') }} as price,
       {{ json_array_contains(json_array_text('j', 'tags'), 'new') }} as has_new,
       {{ json_array_contains(json_array_text('j', 'tags'), 'old') }} as has_old,
       {{ digits_only('phone') }} as digits,
       {{ sha256_hex("'a@b.c'") }} as digest
from src
"""
EXPLODE_MODEL = """
with src as (select '{"products": [{"id": "S1", "qty": 2}, {"id": "S2", "qty": 1}]}' as j),
lines as (select {{ explode_json_array(json_array_text('j', 'products')) }} as product_json from src)
select {{ json_text('product_json', 'id') }} as product_id, {{ json_number('product_json', 'qty') }} as qty from lines
"""


def test_dispatched_macros_give_the_same_rows_on_duckdb_and_spark(tmp_path, spark):
    """The project's own macros folder, in a probe project: each dispatched macro run by dbt
    on DuckDB (duckdb__) and on Spark (dbt-spark's session method: default__)."""
    from dbt.cli.main import dbtRunner

    from core.dbt_project import dbt_project_dir

    probe = tmp_path / "probe"
    shutil.copytree(dbt_project_dir() / "macros", probe / "macros")
    write(probe / "models" / "macro_probe.sql", PROBE_MODEL)
    write(probe / "models" / "macro_explode.sql", EXPLODE_MODEL)
    write(probe / "dbt_project.yml", "name: probe\nversion: '1.0.0'\nconfig-version: 2\nprofile: probe\n"
          "models: {probe: {+materialized: table}}\n")
    write(probe / "profiles.yml", f"""probe:
  target: duckdb
  outputs:
    duckdb: {{type: duckdb, path: "{tmp_path / 'probe.duckdb'}", schema: main, threads: 1}}
    spark: {{type: spark, method: session, host: NA, schema: probe, threads: 1}}
""")
    for target in ("duckdb", "spark"):
        res = dbtRunner().invoke(["run", "--project-dir", str(probe), "--profiles-dir", str(probe),
                                  "--target", target, "--target-path", str(tmp_path / f"target_{target}")])
        assert res.success, (target, res.exception)
    con = duckdb.connect(str(tmp_path / "probe.duckdb"))
    duck = con.execute("SELECT url, price, has_new, has_old, digits, digest FROM main.macro_probe").fetchall()
    duck_lines = sorted(con.execute("SELECT product_id, qty FROM main.macro_explode").fetchall())
    con.close()
    on_spark = [tuple(r) for r in spark.sql("SELECT url, price, has_new, has_old, digits, digest FROM probe.macro_probe").collect()]
    spark_lines = sorted(tuple(r) for r in spark.sql("SELECT product_id, qty FROM probe.macro_explode").collect())
    assert duck == on_spark == [("https://shop.example/p/1", 9.5, True, False, "4407700900123", hashlib.sha256(b"a@b.c").hexdigest())]
    assert duck_lines == spark_lines == [("S1", 2.0), ("S2", 1.0)]


# ------------------------------------------------------------------ dbt: every model and test on Spark
DBT_AS_OF = "2025-06-30"


def copy_to_spark(con, config, spark, schema: str) -> None:
    """One DuckDB schema's tables as Parquet table folders of the Spark warehouse (the layout of
    core/spark.py), declared in the session. Raw tables are declared by the Spark loader's own
    ensure_raw_tables. Timestamps are written as UTC instants, as the Spark warehouse holds them
    (core/spark.py; DuckDB's naive ones would read as Spark's TIMESTAMP_NTZ)."""
    from core.spark import qualified, table_location

    spark.sql(f"CREATE DATABASE IF NOT EXISTS {config.spark.catalog}.{schema}")
    tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
                                        "AND table_type = 'BASE TABLE'", [schema]).fetchall()]
    for table in tables:
        cols = ", ".join(f'CAST("{c}" AS TIMESTAMPTZ) AS "{c}"' if t in ("TIMESTAMP", "TIMESTAMP_NS") else f'"{c}"' for c, t in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position", [schema, table]).fetchall())
        folder = spark_loader.local_path(table_location(config, schema, table)) / ("copied" if schema == "raw" else "")
        folder.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT {cols} FROM {schema}.{table}) TO '{folder / 'part-0.parquet'}' (FORMAT parquet)")
        if schema != "raw":
            spark.sql(f"DROP TABLE IF EXISTS {qualified(config, schema, table)}")
            spark.sql(f"CREATE TABLE {qualified(config, schema, table)} USING parquet "
                      f"LOCATION '{table_location(config, schema, table)}'")
    if schema == "raw":
        spark_loader.ensure_raw_tables(spark, config)


def test_every_dbt_model_and_test_builds_on_spark_with_the_duckdb_rows(tmp_path, spark):
    """The whole dbt project (`dbt build`: every model and data test) on dbt-spark's session
    method, over Spark Parquet tables holding the same raw, identity, scoring and segment rows as
    a DuckDB warehouse where dbt-duckdb builds it too: the published marts have the same rows.
    (Ingestion's and Splink's equality on Spark are tested above; the Python stages'
    outputs are copied here, so this checks the SQL alone.)"""
    from dbt.cli.main import dbtRunner

    from cdp.scaffold import init_project
    from core.dbt_project import dbt_project_dir
    from core.warehouse import open_warehouse
    from dagster_project.defs.dbt_marts import invocation_vars
    from ingestion.generator import generate
    from scoring.pipeline import run_recommendation_stage, run_scoring
    from segments.evaluator import write_segments
    from segments.model import load_segments
    from tests.helpers import build_identity_from_ground_truth

    cfg_path = init_project(tmp_path / "proj")
    cfg_path.write_text(cfg_path.read_text().replace("\nas_of:\n", f"\nas_of: {DBT_AS_OF}\n")
                        .replace("engine: duckdb", "engine: spark"))
    config = load_config(cfg_path)
    generate(customers=300, seed=7, out=config.landing_dir, as_of=config.as_of, clean=True)
    variables = invocation_vars(config, config.as_of.isoformat())  # by hand: the as_of as a var
    project = str(dbt_project_dir())

    def build(target: str, select: list[str]) -> None:
        res = dbtRunner().invoke(["build", *select, "--project-dir", project, "--profiles-dir", project,
                                  "--target", target, "--target-path", str(tmp_path / f"target_{target}"),
                                  "--vars", json.dumps(variables)])
        failed = [(r.node.name, r.message) for r in (res.result or []) if str(r.status) in ("error", "fail")]
        assert res.success and not failed, (target, failed or res.exception)

    with open_warehouse(config.warehouse_path) as con:
        loader.ingest(config, con)
        build_identity_from_ground_truth(con, config.landing_dir / "ground_truth")
    build("duckdb", ["--exclude", "tag:after_scoring"])
    with open_warehouse(config.warehouse_path) as con:
        run_scoring(con, config.churn, config.cart_intent, config.offers)
        run_recommendation_stage(con, config.as_of_datetime().replace(tzinfo=None), config.recommendations)
        write_segments(con, load_segments(config.segments_file))
    build("duckdb", ["--select", "tag:after_scoring"])

    with open_warehouse(config.warehouse_path) as con:  # (dbt-duckdb, in this process, holds it open)
        con.execute("SET TimeZone = 'UTC'")
        for schema in ("raw", "identity", "scoring", "segments", "experiments"):
            copy_to_spark(con, config, spark, schema)
        duck = {t: sorted(map(tuple, con.execute(sql).fetchall()), key=repr) for t, sql in MART_ROWS.items()}
    build("spark", [])
    on_spark = {t: sorted((tuple(r) for r in spark.sql(sql).collect()), key=repr) for t, sql in MART_ROWS.items()}
    for table in MART_ROWS:
        assert on_spark[table] == duck[table], table
    assert len(duck["customers"]) > 20 and duck["segment_membership"]


# Compared as text / rounded numbers (engines may differ in the last bits of a float).
MART_ROWS = {
    "customers": "SELECT person_id, email, phone, cast(date_of_birth AS string), source_record_count FROM marts.customers",
    "customer_traits": "SELECT person_id, order_count, round(revenue, 6), cast(first_order_at AS string), rfm_score, "
                       "lifecycle_stage, web_sessions, email_opens_90d, support_tickets, preferred_category "
                       "FROM marts.customer_traits",
    "segment_membership": "SELECT segment, person_id, cast(since AS string) FROM marts.segment_membership",
    "consent": "SELECT person_id, channel, status, cast(since AS string), source FROM marts.consent",
}


# ------------------------------------------------------------------ the whole pipeline: cdp run on both engines
def merge_monthly_files(landing) -> None:
    """One landed file per entity instead of 24 monthly ones (the same rows, in the same order):
    the Spark loader pays ~2 s of job overhead per file on local[2], which is the test's cost,
    not what it checks."""
    groups: dict = {}
    for path in sorted(landing.rglob("*_20[0-9][0-9]-[0-9][0-9].*")):
        stem = path.name.rsplit("_", 1)[0]
        groups.setdefault((path.parent, stem, path.suffix), []).append(path)
    for (folder, stem, suffix), paths in groups.items():
        lines: list[str] = []
        for i, p in enumerate(paths):
            text = p.read_text().splitlines()
            lines += text if (i == 0 or suffix != ".csv") else text[1:]
            p.unlink()
        (folder / f"{stem}_all{suffix}").write_text("\n".join(lines) + "\n")


def published_rows(path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return sorted(map(tuple, con.execute(sql).fetchall()), key=repr)
    finally:
        con.close()


# Scores: the feature models give every feature one type on both engines (counts BIGINT, day
# differences and shares DOUBLE, rounding in DOUBLE, money summed as integer cents:
# dbt/macros/model_features.sql), so the two engines give the same feature rows (every column)
# and then the same scores. (Before money was summed in cents, DOUBLE sums added in another
# order on each engine put an average one cent apart: at 20k, 39 of 10,487 churn scores up to
# 0.000175 apart; docs/benchmarks.md.)
SCORE_TOLERANCE = 1e-6
FEATURE_TABLES = {  # the model feature tables, each in an order its leading key columns fix
    "int_churn_features": "snapshot, person_id",
    "int_cart_features": "snapshot, cutoff_at, cart_id",
    "int_carts": "cart_id",
}


def same_scores(on_spark: list[tuple], duck: list[tuple]) -> None:
    gaps = [abs(a[-1] - b[-1]) for a, b in zip(on_spark, duck, strict=True)]
    assert gaps and max(gaps) <= SCORE_TOLERANCE, sorted(gaps)[-10:]


def same_value(x, y) -> bool:
    numbers = (int, float, Decimal)
    if isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool) and not isinstance(y, bool):
        return abs(float(x) - float(y)) <= 1e-9
    return x == y


def same_feature_rows(paths: dict, table: str, order: str) -> None:
    """The feature table in the two working copies (on Spark: the copy scoring read): the same
    rows, every column equal (numbers to 1e-9: the same DOUBLE on both, bar a last bit)."""
    rows, columns = {}, {}
    for engine, path in paths.items():
        con = duckdb.connect(str(path), read_only=True)
        try:
            cur = con.execute(f"SELECT * FROM intermediate.{table} ORDER BY {order}")
            columns[engine] = [d[0] for d in cur.description]
            rows[engine] = cur.fetchall()
        finally:
            con.close()
    assert columns["spark"] == columns["duckdb"], table
    assert len(rows["spark"]) == len(rows["duckdb"]) > 0, table
    differ = {name: sum(not same_value(a[i], b[i]) for a, b in zip(rows["spark"], rows["duckdb"]))
              for i, name in enumerate(columns["duckdb"])}
    differ = {name: n for name, n in differ.items() if n}
    assert not differ, (table, differ)


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory, spark) -> dict:
    """`cdp run` end to end on engine: spark (local[2], this module's session) and on DuckDB, on
    the same generated project: {engine: (cdp.yaml path, config)}, both runs ok and published."""
    from cdp.runner import run_pipeline
    from cdp.scaffold import init_project
    from core.snapshots import current_path
    from ingestion.generator import generate

    # A `cdp run` on a local master starts with an empty catalog (a new process, no metastore);
    # this module's shared session still lists the tables earlier tests built (a
    # segment_membership_history found there would be updated in place, which needs MERGE).
    for db in spark.catalog.listDatabases():
        if db.name != "default":
            spark.sql(f"DROP DATABASE IF EXISTS `{db.name}` CASCADE")
    for table in spark.catalog.listTables("default"):
        spark.sql(f"DROP {'VIEW' if table.isTemporary else 'TABLE'} IF EXISTS `{table.name}`")

    tmp_path = tmp_path_factory.mktemp("pipeline")
    runs = {}
    for engine in ("duckdb", "spark"):
        cfg_path = init_project(tmp_path / engine)
        cfg_path.write_text(cfg_path.read_text().replace("\nas_of:\n", f"\nas_of: {DBT_AS_OF}\n")
                            .replace("engine: duckdb", f"engine: {engine}"))
        config = load_config(cfg_path)
        generate(customers=300, seed=7, out=config.landing_dir, as_of=config.as_of, clean=True)
        merge_monthly_files(config.landing_dir)
        summary = run_pipeline(cfg_path)
        assert summary.ok, (engine, summary.failures, [c.__dict__ for c in summary.failed_checks])
        assert current_path(config.published_dir).exists(), engine
        runs[engine] = (cfg_path, config)
    return runs


@pytest.mark.timeout(1800)  # two whole runs: 12-19 min wall on the shared 2 cores at load 7-16 (docs/benchmarks.md)
def test_cdp_run_on_spark_matches_duckdb(pipeline_runs):
    """ingestion -> identity -> dbt -> scoring -> segments -> gate -> publish on both engines: the
    same persons (ids and their records), the same segment members, the same model features
    (every column) and so every score equal."""
    from core.snapshots import current_path

    paths = {engine: current_path(config.published_dir) for engine, (_, config) in pipeline_runs.items()}

    def both(sql):
        return published_rows(paths["duckdb"], sql), published_rows(paths["spark"], sql)

    duck, on_spark = both("SELECT person_id FROM customers")
    assert on_spark == duck and len(duck) > 200
    duck, on_spark = both("SELECT person_id, source, source_record_id FROM identity_graph")
    assert on_spark == duck
    duck, on_spark = both("SELECT segment, person_id FROM segment_membership")
    assert on_spark == duck and duck
    for table, order in FEATURE_TABLES.items():
        same_feature_rows({engine: config.warehouse_path for engine, (_, config) in pipeline_runs.items()},
                          table, order)
    duck, on_spark = both("SELECT person_id, churn_probability FROM churn_scores")
    assert [r[0] for r in on_spark] == [r[0] for r in duck] and duck
    same_scores(on_spark, duck)
    duck, on_spark = both("SELECT person_id, cart_id, purchase_probability FROM cart_intent")
    assert [r[:2] for r in on_spark] == [r[:2] for r in duck]
    same_scores(on_spark, duck)


@pytest.mark.timeout(900)
def test_erasure_on_spark_leaves_the_subject_in_no_raw_or_published_table(pipeline_runs, spark):
    """`cdp forget --email` on the Spark project above, then the erasure step (`cdp run --only
    privacy`): the person's emails and person id are in no raw table's Parquet files, no Spark
    mart, no kept snapshot and not in the working copy; the other persons stay."""
    from cdp.runner import run_pipeline
    from core.snapshots import current_path
    from core.spark import table_location
    from privacy.requests import record_request

    cfg_path, config = pipeline_runs["spark"]
    snapshot = current_path(config.published_dir)
    con = duckdb.connect(str(snapshot), read_only=True)
    # (customer_ids holds emails only as hashes: the golden record's email)
    person_id, email = con.execute("""
        SELECT person_id, email FROM customers WHERE email IS NOT NULL
        ORDER BY source_record_count DESC, person_id LIMIT 1""").fetchone()
    emails = {email.lower()}
    persons_before = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
    con.close()
    needles = emails | {person_id.lower()}

    def raw_hits() -> dict[str, int]:
        """Rows of each raw table's Parquet files (read as a BI tool would) holding a needle."""
        root = spark_loader.local_path(table_location(config, "raw", ""))
        reader = duckdb.connect()
        hits = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = [str(p) for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_"))]
            if files:
                text = "lower(CAST(t AS VARCHAR))"
                cond = " OR ".join(f"contains({text}, ?)" for _ in needles)
                n = reader.execute(f"SELECT count(*) FROM read_parquet({files!r}, union_by_name=true) t WHERE {cond}",
                                   sorted(needles)).fetchall()[0][0]
                if n:
                    hits[folder.name] = n
        reader.close()
        return hits

    def db_hits(path, schemas=None) -> dict[str, int]:
        db = duckdb.connect(str(path), read_only=True)
        hits = {}
        for schema, table in db.execute("SELECT table_schema, table_name FROM information_schema.tables "
                                        "WHERE table_type = 'BASE TABLE'").fetchall():
            if schemas and schema not in schemas:
                continue
            cond = " OR ".join("contains(lower(CAST(t AS VARCHAR)), ?)" for _ in needles)
            n = db.execute(f'SELECT count(*) FROM "{schema}"."{table}" t WHERE {cond}', sorted(needles)).fetchall()[0][0]
            if n:
                hits[f"{schema}.{table}"] = n
        db.close()
        return hits

    before = raw_hits()
    assert len(before) >= 2 and db_hits(snapshot).get("main.customers"), before  # the search finds them

    record_request(config, "email", email)
    summary = run_pipeline(cfg_path, only=["privacy"])
    assert summary.ok, (summary.failures, [c.__dict__ for c in summary.failed_checks])

    assert raw_hits() == {}
    for kept in sorted(config.published_dir.glob("snapshots/*.duckdb")):
        assert db_hits(kept) == {}, kept.name
    assert db_hits(config.warehouse_path, schemas=("raw", "identity", "marts", "scoring", "segments")) == {}
    for table in ("marts.customers", "marts.customer_ids", "identity.graph"):  # Spark's own tables
        assert spark.table(f"spark_catalog.{table}").where(f"person_id = '{person_id}'").count() == 0, table
    con = duckdb.connect(str(current_path(config.published_dir)), read_only=True)
    assert con.execute("SELECT count(*) FROM customers").fetchall()[0][0] == persons_before - 1
    con.close()
    report = json.loads(next((config.resolve(config.privacy.folder) / "reports").glob("erasure-*.json")).read_text())
    assert report["status"] == "erased" and any(k.startswith("spark:raw.") for k in report["rows_removed"])

    # their rows landed again, in a new file: the Spark loader drops them as erased, as DuckDB's does
    relanded = None
    for name in ("email/subscribers.csv", "pos/loyalty_members.csv", "pos_outlet/members.csv"):
        lines = (config.landing_dir / name).read_text().splitlines()
        mine = [line for line in lines[1:] if any(e in line.lower() for e in emails)]
        if mine:
            relanded = name.replace(".csv", "_again.csv")
            (config.landing_dir / relanded).write_text("\n".join([lines[0], *mine]) + "\n")
            break
    assert relanded, "the person has a row in a file to land again"
    summary = run_pipeline(cfg_path, only=["ingestion"])
    assert summary.ok, summary.failures
    assert raw_hits() == {}
    loads = spark_loader.local_path(table_location(config, "raw", "loads"))
    reader = duckdb.connect()
    row = reader.execute(f"SELECT status, rows_loaded, rows_quarantined, rows_erased FROM read_parquet("
                         f"'{loads}/*/*.parquet') WHERE file = ?", [relanded]).fetchall()
    reader.close()
    assert row == [("loaded", 0, 0, len(mine))], row
