"""Skip what did not change: a whole `cdp run` whose inputs equal those of the last complete run
does no work past landing (ingestion and the erasure requests), and says so.

"Nothing changed" means every one of these is the same as when the last complete, successful
run finished (its fingerprint, kept in the Dagster home as FILE):

- the landed loads: ``raw.loads`` (every file's checksum, status and rows erased from it), so a
  new or re-landed file is a change, and so is a load that failed or was quarantined;
- the erasure requests applied (the privacy folder's reports) and any still pending;
- the configuration, as validated (comments and layout in cdp.yaml are not changes);
- the segments file's bytes;
- the code: every Python module of the installed packages and every file of the dbt project;
- the as_of: an explicit one (``cdp run --as-of``, cdp.yaml's ``as_of``) exactly; otherwise the
  UTC day. Within one day a rerun keeps the published snapshot and its as_of (the earlier run's
  time): recency windows move by the hours between the two, which is the one thing a same-day
  skip does not redo. A new day is a change (day counts and recency traits move daily).

Not seen: edits made to the warehouse by hand, or by a tool other than `cdp run`. `--force`
runs everything; a partial run (`--only`) or a failed one forgets the fingerprint, so the next
whole run builds.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from core.config import Config
from core.dbt_project import dbt_project_dir
from core.warehouse import fetch_all, open_warehouse, table_exists
from privacy.requests import privacy_dir

FILE = "unchanged_fingerprint.json"
# Top-level folders of the installation that are not pipeline code.
_NOT_CODE = {"tests", "bench", "docs", ".venv", "dbt", "build", "node_modules"}
_DBT_SKIP = {"target", "logs", "dbt_packages"}


def _digest(parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _files_digest(root: Path, pattern: str, skip: set[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob(pattern)):
        rel = path.relative_to(root)
        if path.is_file() and not (set(rel.parts[:-1]) & skip):
            h.update(str(rel).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def code_digest() -> str:
    """The pipeline's code: the first-party packages' modules and the dbt project's files."""
    root = Path(__file__).resolve().parents[1]
    packages = sorted(p for p in root.iterdir() if (p / "__init__.py").is_file() and p.name not in _NOT_CODE)
    return _digest([*(f"{p.name}:{_files_digest(p, '*.py', {'__pycache__'})}" for p in packages),
                    f"dbt:{_files_digest(dbt_project_dir(), '*', _DBT_SKIP)}"])


def _loads_digest(config: Config) -> str:
    if config.engine == "spark":
        return _spark_loads_digest(config)
    if not config.warehouse_path.exists():
        return "no warehouse"
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        if not table_exists(con, "raw", "loads"):
            return "no loads"
        rows = fetch_all(con, "SELECT * FROM raw.loads ORDER BY ALL")
    return _digest(rows)


def _spark_loads_digest(config: Config) -> str:
    """engine: spark - the manifest's Parquet files (raw/loads), read by an in-memory DuckDB:
    the DuckDB file is only the driver's working copy there (core/spark_bridge.py)."""
    import duckdb

    from core.spark import local_path, table_location

    location = table_location(config, "raw", "loads")
    if "://" in location and not location.startswith("file:"):
        return f"not compared: {datetime.now(timezone.utc).isoformat()}"  # a cluster's store: always a change
    files = sorted(str(p) for p in local_path(location).rglob("*.parquet")) if local_path(location).is_dir() else []
    if not files:
        return "no loads"
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(f"SELECT * FROM read_parquet({files!r}, union_by_name = true) ORDER BY ALL").fetchall()
    finally:
        con.close()
    return _digest(rows)


def _privacy_digest(config: Config) -> str:
    folder = privacy_dir(config)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return _digest(names)


def fingerprint(config: Config, as_of: datetime, as_of_given: bool) -> dict[str, str]:
    """What a whole run's result depends on, part by part (see the module's docstring)."""
    segments = config.segments_file
    return {
        "loads": _loads_digest(config),
        "erasure": _privacy_digest(config),
        "config": _digest([config.model_dump_json()]),
        "segments": hashlib.sha256(segments.read_bytes()).hexdigest() if segments.is_file() else "none",
        "code": code_digest(),
        "as_of": as_of.isoformat(sep=" ") if as_of_given else f"day {as_of.date().isoformat()}",
    }


def compare(config: Config, current: dict[str, str]) -> tuple[dict | None, list[str]]:
    """(the last complete run's record (run_id, as_of, finished_at), the parts that changed since);
    (None, every part) when no complete run is remembered."""
    try:
        saved = json.loads((config.dagster_home / FILE).read_text())
    except (OSError, ValueError):
        return None, sorted(current)
    before = saved.get("fingerprint") or {}
    return {k: saved[k] for k in ("run_id", "as_of", "finished_at") if k in saved}, \
        sorted(k for k in current if before.get(k) != current[k])


def remember(config: Config, current: dict[str, str], run_id: str, as_of: str) -> None:
    record = {"fingerprint": current, "run_id": run_id, "as_of": as_of,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = config.dagster_home / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def forget(config: Config) -> None:
    (config.dagster_home / FILE).unlink(missing_ok=True)

