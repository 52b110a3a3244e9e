from pathlib import Path

import pytest
import yaml

from cdp.scaffold import init_project
from core.config import ConfigError, config_from_dict, load_config


def test_init_scaffolds_a_valid_project(tmp_path):
    cfg_path = init_project(tmp_path / "shop")
    config = load_config(cfg_path)
    assert config.project == "shop"
    # Relative paths resolve against the config file's folder, not the working directory.
    assert config.landing_dir == (tmp_path / "shop" / "landing").resolve()
    assert config.warehouse_path == (tmp_path / "shop" / "warehouse" / "tessera.duckdb").resolve()
    for d in ("landing", "warehouse", "published", "reports", ".dagster"):
        assert (tmp_path / "shop" / d).is_dir()
    assert {s.kind for s in config.sources} == {"web", "email", "pos", "support", "catalog"}
    # Two instances of the POS kind, the second with a column mapping.
    pos = config.enabled_sources("pos")
    assert [s.name for s in pos] == ["pos", "pos_outlet"]
    assert pos[1].entities["loyalty_members"].columns["MemberNo"] == "loyalty_id"


def test_init_refuses_to_overwrite(tmp_path):
    init_project(tmp_path / "p")
    with pytest.raises(FileExistsError, match="--force"):
        init_project(tmp_path / "p")
    init_project(tmp_path / "p", force=True)


def _write_cfg(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cdp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"projct": "x"}, r"projct: unknown key; remove it or check its spelling"),
        ({"sources": [{"name": "w", "kind": "webb", "entities": {}}]}, r"sources\[0\]\.kind: unknown source kind 'webb'"),
        ({"sources": [{"name": "w", "kind": "web"}]}, r"sources\[0\]\.entities: required key is missing"),
        (
            {"sources": [{"name": "w", "kind": "web", "entities": {"evnts": {"path": "x"}}}]},
            r"'evnts' is not an entity of kind 'web'; use one of: events",
        ),
        (
            {"sources": [{"name": "p", "kind": "pos", "entities": {"loyalty_members": {"path": "x", "columns": {"Mail": "e_mail"}}}}]},
            r"'Mail' maps to 'e_mail', which is not a field of the pos.loyalty_members contract",
        ),
        (
            {"sources": [{"name": "a", "kind": "web", "entities": {}}, {"name": "a", "kind": "pos", "entities": {}}]},
            r"the name 'a' is used twice",
        ),
        ({"sources": [{"name": "Web Shop", "kind": "web", "entities": {}}]}, r"sources\[0\]\.name: use lower-case"),
        ({"ingestion": {"max_bad_row_rate": 2}}, r"ingestion\.max_bad_row_rate: Input should be less than or equal to 1"),
        ({"as_of": "yesterday"}, r"as_of: "),
    ],
)
def test_invalid_config_names_the_key_and_the_fix(tmp_path, data, expected):
    path = _write_cfg(tmp_path, data)
    with pytest.raises(ConfigError, match=expected) as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_missing_config_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match=r"cdp init"):
        load_config(tmp_path / "nope.yaml")


def test_not_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "cdp.yaml"
    p.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_config_env_var_is_the_default(tmp_path, monkeypatch):
    cfg = init_project(tmp_path / "envproj")
    monkeypatch.setenv("CDP_CONFIG", str(cfg))
    monkeypatch.chdir(tmp_path)
    assert load_config().project == "envproj"


def test_a_config_with_ordinary_yaml_aliases_loads(tmp_path):
    # yaml.dump writes an alias for a value that appears twice; that is no bomb.
    cfg = init_project(tmp_path / "aliasproj")
    data = yaml.safe_load(cfg.read_text())
    shared = {"max_per_profile": 3}
    data["identity"] = {"rules": {"email": shared, "phone": shared}}
    text = yaml.safe_dump(data)
    assert "*id001" in text
    cfg.write_text(text)
    assert load_config(cfg).identity.rules["phone"].max_per_profile == 3


def test_dbt_builds_get_the_configured_duckdb_memory_limit(tmp_path):
    """cdp.yaml duckdb.dbt_memory_limit_gb reaches dbt as a var that profiles.yml sets DuckDB's
    memory_limit from (one var for the parse and every build: no re-parse); empty leaves DuckDB's
    default (80% of the machine's memory)."""
    from dagster_project.defs.dbt_marts import MEMORY_LIMIT_VAR, invocation_vars
    from tests.helpers import DBT_DIR

    assert invocation_vars(config_from_dict({}, tmp_path))[MEMORY_LIMIT_VAR] == "5120MiB"  # the default, 5 GB
    config = config_from_dict({"duckdb": {"dbt_memory_limit_gb": 2.5}}, tmp_path)
    assert invocation_vars(config)[MEMORY_LIMIT_VAR] == "2560MiB"
    assert MEMORY_LIMIT_VAR not in invocation_vars(config_from_dict({"duckdb": {"dbt_memory_limit_gb": None}}, tmp_path))
    assert f"var('{MEMORY_LIMIT_VAR}'" in (DBT_DIR / "profiles.yml").read_text()
    with pytest.raises(ConfigError):
        config_from_dict({"duckdb": {"dbt_memory_limit_gb": 0}}, tmp_path)
