import os
from pathlib import Path

import pytest

# Quiet, local, reproducible: no telemetry from any tool during tests.
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from cdp.scaffold import init_project  # noqa: E402
from core.config import (  # noqa: E402
    Config,
    config_from_dict,
    load_config,  # noqa: E402
)


@pytest.fixture
def project(tmp_path: Path) -> Config:
    """A fresh `cdp init` folder with the default config."""
    return load_config(init_project(tmp_path / "proj"))


def make_config(root: Path, sources: list[dict], **extra) -> Config:
    (root / "landing").mkdir(parents=True, exist_ok=True)
    return config_from_dict({"sources": sources, **extra}, root)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
