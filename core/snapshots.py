"""Reading published snapshots: where they are, their manifest, and the one way to open one.

Layout under the config's ``paths.published``::

    tessera.duckdb              the current snapshot (a hard link to one file in snapshots/)
    snapshots/<run_id>.duckdb   the last N published snapshots, for rollback
    manifest.json               history: run, published_at, tables and row counts, gate result

``publish`` writes them; everything else (marketer commands, the report, syncs, the quality
gate's drift baseline, erasure's scan) reads them only through :func:`open_snapshot`, which is
sealed: read-only, no access to files or the network, no extension loading, and the
configuration locked so a query cannot turn any of that back on.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

CURRENT = "tessera.duckdb"
MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots"

# A snapshot reader can reach the snapshot's own tables and nothing else.
SEALED_SETTINGS = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
}


class PublishError(RuntimeError):
    """Nothing is published yet, a snapshot is missing, or a publish was refused."""


def current_path(published_dir: Path) -> Path:
    return published_dir / CURRENT


def snapshot_file(published_dir: Path, run_id: str) -> Path:
    return published_dir / SNAPSHOTS / f"{run_id}.duckdb"


def read_manifest(published_dir: Path) -> dict:
    path = published_dir / MANIFEST
    if not path.exists():
        return {"current": None, "history": []}
    return json.loads(path.read_text())


def open_snapshot(path: Path) -> duckdb.DuckDBPyConnection:
    """A sealed, read-only connection to one snapshot file."""
    con = duckdb.connect(str(path), read_only=True, config=dict(SEALED_SETTINGS))
    # A second connection to a file already open in this process shares its database, whose
    # configuration the first one locked (the publish report reads the new snapshot while
    # charting the recent ones): nothing to set then.
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0] is not True:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET lock_configuration = true")
    return con


def open_current(published_dir: Path) -> duckdb.DuckDBPyConnection:
    """The current published snapshot, sealed (readers never take the warehouse's lock)."""
    path = current_path(published_dir)
    if not path.exists():
        raise PublishError(f"{path}: nothing has been published yet; run `cdp run` first")
    return open_snapshot(path)
