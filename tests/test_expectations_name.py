"""One name for the gate's stage (issue #27): `expectations` for the package, the cdp.yaml
section, the Dagster checks and the setting names in messages. A cdp.yaml written before the
rename (`quality:`) keeps loading for one release, with a warning saying what to rename."""

import pytest

from cdp.scaffold import init_project
from core.config import ConfigError, load_config


def test_the_old_quality_section_still_loads_with_a_warning_naming_the_new_key(tmp_path):
    cfg = init_project(tmp_path / "p")
    text = cfg.read_text()
    assert "\nexpectations: {}\n" in text and "\nquality:" not in text  # what `cdp init` writes now
    cfg.write_text(text.replace("\nexpectations: {}\n",
                                "\nquality:\n  drift: {max_person_count_change: 0.3}\n  sources: {min_rows: 50}\n"))
    with pytest.warns(FutureWarning, match=r"'quality:' section is now called 'expectations:'.*rename it"):
        config = load_config(cfg)
    assert config.expectations.drift.max_person_count_change == 0.3
    assert config.expectations.sources.min_rows == 50
    assert config.expectations.sources.max_fill_rate_drop == 0.25  # the rest keeps its defaults


def test_both_names_at_once_is_an_error_that_says_what_to_do(tmp_path):
    cfg = init_project(tmp_path / "p")
    cfg.write_text(cfg.read_text() + "\nquality: {keep_snapshots: 3}\n")
    with pytest.raises(ConfigError, match=r"both 'quality' \(the old name\) and 'expectations' are set"):
        load_config(cfg)


def test_an_unknown_source_bound_is_refused_by_name(tmp_path):
    cfg = init_project(tmp_path / "p")
    cfg.write_text(cfg.read_text().replace("\nexpectations: {}\n", "\nexpectations: {sources: {max_fill_drop: 0.1}}\n"))
    with pytest.raises(ConfigError, match="max_fill_drop"):
        load_config(cfg)
