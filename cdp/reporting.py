"""What the CLI prints about a project: raw table counts, quarantine, latest run."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cdp.reporting_scoring import print_model_overview
from core.config import Config
from core.contracts import ENTITIES
from core.dbt_project import dbt_project_dir
from core.snapshots import current_path, read_manifest
from core.warehouse import WarehouseBusy, open_warehouse, table_exists
from expectations.gate import latest_gate
from ingestion.loader import unmatched_files


def raw_counts(con) -> dict[str, int]:
    existing = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'").fetchall()}
    return {
        e.table: con.execute(f"SELECT count(*) FROM raw.{e.table}").fetchall()[0][0]
        for e in ENTITIES if e.table in existing
    }


def quarantine_by_reason(con) -> list[tuple[str, str, str, int]]:
    return con.execute(
        "SELECT table_name, reason, coalesce(field, ''), count(*) FROM raw.quarantine "
        "GROUP BY ALL ORDER BY 1, 4 DESC"
    ).fetchall()


def files_by_status(con) -> list[tuple[str, str, int]]:
    # The latest outcome per file (a rejected file is retried on each run).
    return con.execute(
        """SELECT table_name, status, count(*) FROM (
               SELECT * FROM raw.loads
               QUALIFY row_number() OVER (PARTITION BY source, table_name, file ORDER BY finished_at DESC) = 1)
           GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()


def print_unmatched_files(console: Console, config: Config) -> None:
    stray = unmatched_files(config)
    if stray:
        console.print(f"[yellow]not loaded: {len(stray)} landed file(s) match no source's path[/] "
                      f"(names are matched exactly, case included): {escape(', '.join(stray))}")


def print_raw_overview(console: Console, config: Config) -> None:
    print_unmatched_files(console, config)
    if not config.warehouse_path.exists():
        console.print("no warehouse yet")
        return
    try:
        with open_warehouse(config.warehouse_path, read_only=True) as con:
            counts = raw_counts(con)
            if not counts:
                console.print("raw: no tables yet")
                return
            quarantine = quarantine_by_reason(con)
            statuses = files_by_status(con)
    except WarehouseBusy as e:
        console.print(str(e))
        return
    files: dict[str, dict[str, int]] = {}
    for table, st, n in statuses:
        files.setdefault(table, {})[st] = n
    q_total: dict[str, int] = {}
    for table, _, _, n in quarantine:
        q_total[table] = q_total.get(table, 0) + n
    t = Table(title="Raw tables", title_justify="left")
    t.add_column("table")
    t.add_column("rows", justify="right")
    t.add_column("quarantined", justify="right")
    t.add_column("files")
    for table, n in counts.items():
        fs = ", ".join(f"{k} {v}" for k, v in sorted(files.get(table, {}).items())) or "-"
        t.add_row(f"raw.{table}", f"{n:,}", f"{q_total.get(table, 0):,}", fs)
    console.print(t)
    if quarantine:
        q = Table(title="Quarantine by reason (raw.quarantine)", title_justify="left")
        q.add_column("table")
        q.add_column("reason")
        q.add_column("field")
        q.add_column("rows", justify="right")
        for table, reason, fld, n in quarantine:
            q.add_row(table, reason, fld, f"{n:,}")
        console.print(q)


def print_downstream_overview(console: Console, config: Config) -> None:
    """Identity and marts, as far as they have been built: what a run made."""
    if not config.warehouse_path.exists():
        return
    try:
        with open_warehouse(config.warehouse_path, read_only=True) as con:
            if table_exists(con, "identity", "graph"):
                records, persons, multi, largest = con.execute(
                    """SELECT count(*), count(DISTINCT person_id),
                              count(*) FILTER (WHERE n > 1), max(n)
                       FROM (SELECT person_id, count(*) OVER (PARTITION BY person_id) AS n FROM identity.graph)"""
                ).fetchall()[0]
                if records:  # (a run over empty raw tables resolves no one: nothing to divide)
                    console.print(
                        f"Identity: {records:,} source records -> {persons:,} persons "
                        f"({multi / records:.0%} of records share their person with another record; "
                        f"largest person holds {largest:,} records)"
                    )
                else:
                    console.print("Identity: no source records yet")
            if table_exists(con, "marts", "segment_membership"):
                t = Table(title="Segments (marts.segment_membership)", title_justify="left")
                t.add_column("segment")
                t.add_column("persons", justify="right")
                rows = con.execute(
                    "SELECT segment, count(*) FROM marts.segment_membership GROUP BY 1 ORDER BY 2 DESC"
                ).fetchall()
                for segment, n in rows:
                    t.add_row(segment, f"{n:,}")
                customers = con.execute("SELECT count(*) FROM marts.customers").fetchall()[0][0] if table_exists(
                    con, "marts", "customers") else 0
                console.print(f"Marts: {customers:,} customers")
                console.print(t)
            print_model_overview(console, con)
    except WarehouseBusy as e:
        console.print(str(e))


def latest_run(dagster_home: Path) -> dict | None:
    if not (dagster_home / "dagster.yaml").exists():
        return None
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(limit=1)
        if not records:
            return None
        rec = records[0]
        run = rec.dagster_run

        def ts(x):
            return datetime.fromtimestamp(x, timezone.utc).isoformat(timespec="seconds") if x else None

        return {
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "started_at": ts(rec.start_time),
            "finished_at": ts(rec.end_time),
            "stages": run.tags.get("tessera/stages", "all"),
            "trigger": run.tags.get("tessera/trigger", "dagster"),
        }


def status_dict(config: Config, config_path: Path) -> dict:
    info: dict = {
        "config": str(config_path),
        "project": config.project,
        "paths": {
            "landing": str(config.landing_dir),
            "warehouse": str(config.warehouse_path),
            "published": str(config.published_dir),
            "dagster_home": str(config.dagster_home),
            "reports": str(config.reports_dir),
            # The installed dbt project, and where dbt writes for this project (manifest,
            # partial-parse state, one folder per invocation under runs/).
            "dbt_project": str(dbt_project_dir()),
            "dbt_target": str(config.dbt_target_dir),
        },
        "sources": [{"name": s.name, "kind": s.kind, "entities": sorted(s.entities)} for s in config.enabled_sources()],
        "latest_run": latest_run(config.dagster_home),
        "unmatched_landing_files": unmatched_files(config),
    }
    last_cli = config.dagster_home / "last_run.json"
    if info["latest_run"] and last_cli.exists():
        record = json.loads(last_cli.read_text())
        if record.get("run_id") == info["latest_run"]["run_id"]:
            failed = [c for c in record.get("checks", []) if not c["passed"]]
            info["latest_run"]["ok"] = record.get("ok")
            info["latest_run"]["failed_checks"] = [f"{c['asset']}:{c['check']} ({c['severity']})" for c in failed]
    info.update(publish_status(config))
    if config.warehouse_path.exists():
        try:
            with open_warehouse(config.warehouse_path, read_only=True) as con:
                info["raw_tables"] = raw_counts(con)
                info["quarantined_rows"] = sum(r[3] for r in quarantine_by_reason(con)) if info["raw_tables"] else 0
        except WarehouseBusy as e:
            info["warehouse_error"] = str(e)
    return info


def publish_status(config: Config) -> dict:
    """The current published snapshot and the latest gate outcome (read from files: works
    while a run holds the warehouse)."""
    manifest = read_manifest(config.published_dir)
    current = next((h for h in manifest["history"] if h["run_id"] == manifest.get("current")), None)
    published = None
    if current:
        published = {
            "snapshot": current["run_id"], "published_at": current["published_at"],
            "path": str(current_path(config.published_dir)), "tables": current["tables"],
            "gate_passed": current.get("gate", {}).get("passed"),
            "kept": [h["run_id"] for h in manifest["history"]],
        }
        if manifest.get("rollbacks") and manifest["rollbacks"][-1]["to"] == current["run_id"]:
            published["rolled_back_at"] = manifest["rollbacks"][-1]["at"]
    return {"published": published, "quality_gate": latest_gate(config.reports_dir)}
