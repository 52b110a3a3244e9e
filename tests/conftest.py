import os
from pathlib import Path

import pytest

# Quiet, local, reproducible: no telemetry from any tool during tests.
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from cdp.scaffold import init_project  # noqa: E402
from core.config import Config, load_config  # noqa: E402


@pytest.fixture
def project(tmp_path: Path) -> Config:
    """A fresh `cdp init` folder with the default config."""
    return load_config(init_project(tmp_path / "proj"))
