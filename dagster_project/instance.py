"""The project's Dagster home: where `cdp run`, `cdp sync` and `dagster dev` record runs.

No Dagster import here: `cdp init` writes the folder without loading Dagster."""

from __future__ import annotations

from pathlib import Path

# Dagster instance settings: one run at a time and one warehouse writer at a time
# (DuckDB allows a single writing process per file), no telemetry.
DAGSTER_YAML = """\
telemetry:
  enabled: false
# Stage progress lines (Python loggers named tessera.*) appear in each run's event log.
# Emails and phone numbers in them are masked when each record is created (the code location
# installs core.pii at import), so the event log never receives them; a handler added
# under dagster_handler_config can take the same filter: {"()": core.pii.MaskPII}.
python_logs:
  managed_python_loggers:
    - tessera
concurrency:
  runs:
    max_concurrent_runs: 1
"""
# The one-writer pool (every warehouse-writing step is in pool `tessera_warehouse`): DuckDB
# allows a single writing process per file. A Spark warehouse has no such limit (each load
# writes folders of its own), so an engine: spark project's instance leaves pools unlimited.
ONE_WRITER_POOL = """\
  pools:
    default_limit: 1
"""


def dagster_yaml(engine: str = "duckdb") -> str:
    return DAGSTER_YAML + (ONE_WRITER_POOL if engine == "duckdb" else "")


def ensure_dagster_home(dagster_home: Path, engine: str = "duckdb") -> Path:
    """The folder with its dagster.yaml (written once, for the project's engine: kept as
    edited afterwards)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    yaml_path = dagster_home / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text(dagster_yaml(engine))
    return dagster_home
