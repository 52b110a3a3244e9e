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
  pools:
    default_limit: 1
"""



def ensure_dagster_home(dagster_home: Path) -> Path:
    dagster_home.mkdir(parents=True, exist_ok=True)
    yaml_path = dagster_home / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text(DAGSTER_YAML)
    return dagster_home
