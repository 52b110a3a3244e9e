import os
from pathlib import Path

import pytest

# Quiet, local, reproducible: no telemetry from any tool during tests.
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import duckdb  # noqa: E402

from cdp.scaffold import init_project  # noqa: E402
from core.config import Config, load_config  # noqa: E402
from ingestion.loader import ensure_raw_schema  # noqa: E402
from tests.helpers import make_config  # noqa: E402

# `make test` runs modules in parallel, each module whole on one worker (--dist loadfile), handed
# out in collection order (--no-loadscope-reorder). Longest first, so that no long module starts
# last and runs alone while the other worker idles (longest-processing-time-first); the rest
# keep their order. By CPU seconds per module (setup + calls, self + children), measured on a
# whole `make test`; update when a module's cost changes. test_spark.py is not in `make test`.
LONGEST_FIRST = ("test_incremental_agreement.py", "test_privacy.py", "test_quality_gate.py", "test_exports.py",
                 "test_install.py", "test_crash_only.py", "test_marketing.py", "test_dbt_marts.py",
                 "test_segment_spec.py", "test_identity_e2e.py", "test_identity_subsets.py", "test_dagster_ingestion.py",
                 "test_generator.py", "test_dbt_incremental.py", "test_spark.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def no_dagster_state_storage_left_over():
    """Each test starts with no current Dagster defs-state storage. Dagster keeps it in a
    process-wide context variable that `with DagsterInstance...` sets and resets; an xdist worker
    runs many modules in one process, and one left holding a disposed instance's storage made a
    later module's definitions fail to load ("Attempted to resolve undefined DagsterInstance
    weakref"). A `cdp` command is one process and leaves it unset (checked after a whole in-process
    `cdp run`), so this isolates tests from each other without hiding a product behaviour."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
    yield


@pytest.fixture
def env(tmp_path: Path):
    """(config, connection) over an empty warehouse with the raw schema: identity tested on rows
    inserted by hand, rules only (Splink off)."""
    cfg = make_config(tmp_path, [], identity={"splink": {"enabled": False}})
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_raw_schema(con)
    yield cfg, con
    con.close()


@pytest.fixture
def project(tmp_path: Path) -> Config:
    """A fresh `cdp init` folder with the default config."""
    return load_config(init_project(tmp_path / "proj"))
