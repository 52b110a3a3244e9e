"""Publishing snapshots: write aside, switch atomically, keep N, roll back.

The layout and the read side live in ``core.snapshots``. Publishing writes a complete new
DuckDB file under ``snapshots/`` first, then links it to a temporary name and
``os.replace``-s that over ``tessera.duckdb``: one atomic rename. A reader that opened the
old file keeps its inode, so it goes on reading the old snapshot undisturbed; the next
reader opens the new one. Nothing is ever written into a published file after it is in place.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from core.published import (
    CART_FEATURE_COLUMNS,
    PERSON_HISTORY_COLUMNS,
    SERVE_CART_FEATURES,
    SERVE_CART_MODEL,
    SERVE_CART_RETURN_GAPS,
    SERVE_PERSON_HISTORY,
    published_tables,
)
from core.snapshots import CURRENT, MANIFEST, SNAPSHOTS, PublishError, read_manifest
from core.warehouse import table_exists


@dataclass(frozen=True)
class Snapshot:
    run_id: str
    path: Path
    published_at: str
    tables: dict[str, int]
    gate: dict
    as_of: str | None = None  # the one as_of every table of the snapshot was built at (None: all empty)


def _safe_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id):
        raise PublishError(f"run id {run_id!r} cannot name a snapshot file (letters, digits, _ . - only)")
    return run_id


def write_json_atomically(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def switch_current(published_dir: Path, snapshot_file: Path) -> None:
    tmp = published_dir / f".{CURRENT}.switch"
    tmp.unlink(missing_ok=True)
    os.link(snapshot_file, tmp)
    os.replace(tmp, published_dir / CURRENT)  # the atomic step
    dir_fd = os.open(published_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_snapshot(
    con: duckdb.DuckDBPyConnection, tables: dict[str, str], published_dir: Path, run_id: str
) -> tuple[Path, dict[str, int]]:
    """Copy ``{published_name: "schema.table"}`` from the warehouse into a new snapshot file
    (not yet current). Returns its path and row counts."""
    run_id = _safe_run_id(run_id)
    snap_dir = published_dir / SNAPSHOTS
    snap_dir.mkdir(parents=True, exist_ok=True)
    final = snap_dir / f"{run_id}.duckdb"
    if final.exists():
        raise PublishError(f"a snapshot for run {run_id} already exists: {final}")
    partial = snap_dir / f".{run_id}.duckdb.partial"
    partial.unlink(missing_ok=True)
    alias = "tessera_snapshot_out"
    con.execute(f"ATTACH '{partial}' AS {alias}")
    counts: dict[str, int] = {}
    try:
        for name, source in tables.items():
            con.execute(f'CREATE TABLE {alias}.main."{name}" AS SELECT * FROM {source}')
            counts[name] = con.execute(f'SELECT count(*) FROM {alias}.main."{name}"').fetchall()[0][0]
        con.execute(f"CHECKPOINT {alias}")
    except BaseException:
        con.execute(f"DETACH {alias}")
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".wal").unlink(missing_ok=True)
        raise
    con.execute(f"DETACH {alias}")
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    return final, counts


def one_as_of(con: duckdb.DuckDBPyConnection, tables: dict[str, str]) -> str | None:
    """The one `as_of` that every table in ``{published_name: "schema.table"}`` with an `as_of`
    column carries, as "YYYY-MM-DD HH:MM:SS" (None when those tables are all empty). A snapshot is
    one moment: a table left from an earlier build (a model that was not rebuilt, a partial run)
    would pair customers of one day with scores of another, so more than one value is refused,
    naming the tables and their as_of values."""
    values: dict[str, list[str]] = {}
    for name, source in tables.items():
        columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        if "as_of" not in columns:
            continue
        found = [r[0] for r in con.execute(
            f"SELECT DISTINCT strftime(CAST(as_of AS TIMESTAMP), '%Y-%m-%d %H:%M:%S') FROM {source} "
            "WHERE as_of IS NOT NULL ORDER BY 1").fetchall()]
        if found:
            values[name] = found
    distinct = sorted({v for vs in values.values() for v in vs})
    if len(distinct) > 1:
        by_value = {v: sorted(n for n, vs in values.items() if v in vs) for v in distinct}
        raise PublishError(
            "the tables to publish were built at different as_of times, so they are not one snapshot: "
            + "; ".join(f"{v}: {', '.join(names)}" for v, names in by_value.items())
            + ". Rebuild them in one run (`cdp run`, or `cdp run --only marts,publish`); nothing was published")
    return distinct[0] if distinct else None


def publish(
    con: duckdb.DuckDBPyConnection,
    tables: dict[str, str],
    published_dir: Path,
    run_id: str,
    gate: dict,
    keep: int = 5,
    serve: dict[str, str] | None = None,
) -> Snapshot:
    """Write a new snapshot and make it current atomically; keep the last ``keep``. ``serve``:
    the publish step's own tables for `cdp serve` (:func:`serve_tables`), written into the same
    file and listed apart in the manifest (``serve_tables``): ``tables`` stays the published
    tables the gate checked."""
    as_of = one_as_of(con, tables)  # before anything is written: a mixed build publishes nothing
    published_dir.mkdir(parents=True, exist_ok=True)
    path, written = write_snapshot(con, tables | (serve or {}), published_dir, run_id)
    counts = {name: n for name, n in written.items() if name in tables}
    snap = Snapshot(run_id, path, datetime.now(timezone.utc).isoformat(timespec="seconds"), counts, gate, as_of)
    manifest = read_manifest(published_dir)
    previous = manifest["current"]
    entry = {"run_id": snap.run_id, "published_at": snap.published_at, "as_of": as_of, "tables": counts, "gate": gate}
    if serve:
        entry["serve_tables"] = {name: n for name, n in written.items() if name not in tables}
    manifest["history"] = [entry, *manifest["history"]]
    manifest["history"], dropped = manifest["history"][:keep], manifest["history"][keep:]
    # The manifest first (still naming the old current), then the switch: a crash between the
    # two leaves the new snapshot listed but not current, which read_manifest reports truly
    # from the link; the other order would leave a current snapshot the history lacks.
    write_json_atomically(published_dir / MANIFEST, {**manifest, "current": previous})
    switch_current(published_dir, path)
    manifest["current"] = snap.run_id
    write_json_atomically(published_dir / MANIFEST, manifest)
    for old in dropped:
        if old["run_id"] != manifest["current"]:
            (published_dir / SNAPSHOTS / f"{old['run_id']}.duckdb").unlink(missing_ok=True)
    return snap


def rollback(published_dir: Path, to_run: str | None = None) -> str:
    """Make an earlier kept snapshot current (the one before the current, by default)."""
    manifest = read_manifest(published_dir)
    history = manifest["history"]
    if not history:
        raise PublishError(f"{published_dir}: nothing has been published yet")
    runs = [h["run_id"] for h in history]
    if to_run is None:
        idx = runs.index(manifest["current"]) if manifest["current"] in runs else 0
        if idx + 1 >= len(runs):
            raise PublishError("there is no earlier kept snapshot to roll back to")
        to_run = runs[idx + 1]
    if to_run not in runs:
        raise PublishError(f"run {to_run!r} is not among the kept snapshots: {', '.join(runs)}")
    path = published_dir / SNAPSHOTS / f"{_safe_run_id(to_run)}.duckdb"
    if not path.exists():
        raise PublishError(f"the snapshot file for run {to_run} is missing: {path}")
    switch_current(published_dir, path)
    manifest["current"] = to_run
    manifest.setdefault("rollbacks", []).append(
        {"to": to_run, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    )
    write_json_atomically(published_dir / MANIFEST, manifest)
    return to_run


def serve_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """``{published_name: source}`` of the serve_* tables, for those whose warehouse tables exist
    (a project that has not scored carts yet publishes none, and the server uses the published scores)."""
    tables = {}
    # the cart model's compiled parameters (JSON numbers), never the pickled payload: a snapshot
    # is opened by readers that must not run code from it
    if table_exists(con, "scoring", "saved_models") and con.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'scoring' "
            "AND table_name = 'saved_models' AND column_name = 'compiled'").fetchone()[0]:
        tables[SERVE_CART_MODEL] = ("(SELECT model, model_version, fitted_as_of, compiled FROM scoring.saved_models "
                                    "WHERE model = 'cart_intent' AND compiled IS NOT NULL)")
    if table_exists(con, "intermediate", "int_cart_features"):
        tables[SERVE_CART_FEATURES] = (f"(SELECT {', '.join(CART_FEATURE_COLUMNS)} FROM intermediate.int_cart_features "
                                       "WHERE snapshot = 'score')")
    if table_exists(con, "intermediate", "int_carts"):
        tables[SERVE_CART_RETURN_GAPS] = ("(SELECT return_gap_hours FROM intermediate.int_carts "
                                          "WHERE return_gap_hours IS NOT NULL)")
    if table_exists(con, "intermediate", "int_person_history"):
        tables[SERVE_PERSON_HISTORY] = (f"(SELECT {', '.join(PERSON_HISTORY_COLUMNS)} "
                                        "FROM intermediate.int_person_history)")
    return tables


def publish_build(config, con: duckdb.DuckDBPyConnection, gate: dict, manifest=None) -> Snapshot:
    """Publish the audited build: the tables the gate checked, named as the gate recorded
    them, as snapshot ``gate['gate_id']``. Refuses a build whose gate did not pass.
    ``manifest``: the dbt manifest declaring the published tables (default: the registry's)."""
    if not gate.get("passed"):
        raise PublishError(f"the quality gate of {gate.get('gate_id')} did not pass: "
                           f"{', '.join(gate.get('blocking_failures', []))}; nothing was published")
    # Where each table is built comes from the dbt manifest, like the list the gate checked.
    relations = {t.name: t.relation for t in published_tables(manifest)}
    unknown = [name for name in gate["tables"] if name not in relations]
    if unknown:
        raise PublishError(f"the gate of {gate.get('gate_id')} checked tables the dbt project no longer declares "
                           f"published: {', '.join(unknown)}; run the gate again")
    tables = {name: relations[name] for name in gate["tables"]}
    return publish(con, tables, config.published_dir, run_id=gate["gate_id"], gate=gate,
                   keep=config.expectations.keep_snapshots, serve=serve_tables(con))
