"""Where ingestion's CPU goes, per phase: every SQL statement the loader runs, timed by the CPU
of the process while it runs (files load one at a time; the SHA-256 and line count, which the
loader takes in a thread beside the parse, are taken before each file instead and timed on
their own), grouped by what it does; the source checks; Python around them.

    python -m bench.profile_ingestion PROJECT_DIR [--files N] [--tables web_events,...]

PROJECT_DIR: a project (cdp.yaml) whose landing folder holds the files; its warehouse is
replaced. Files load one after another (not side by side, as `ingest` does), so the phases
add up to the process's CPU.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import ingestion.loader as loader
from core.config import load_config
from core.contracts import entity as contract_entity
from core.warehouse import connect

CPU: dict[str, float] = defaultdict(float)
COUNT: dict[str, int] = defaultdict(int)

LABELS = [
    (r"^INSERT INTO raw\.\w+ \(.*FROM \(\s*WITH parsed", "fast jsonl: read_json + spec + checks + insert"),
    (r"^CREATE OR REPLACE TEMP TABLE _landed AS\s+WITH base", "csv: read_csv + checks into _landed"),
    (r"^CREATE OR REPLACE TEMP TABLE _landed AS", "line path: _landed"),
    (r"^CREATE OR REPLACE TEMP TABLE _(lines|records)", "line path: python lines"),
    (r"^SELECT count\(\*\), count\(_case\)", "csv: count _landed"),
    (r"^INSERT INTO raw\.quarantine", "commit: quarantine inserts"),
    (r"^INSERT INTO raw\.load_profiles", "profile: insert"),
    (r"^INSERT INTO raw\.loads", "manifest: insert"),
    (r"^INSERT INTO raw\.\w+ \(", "commit: insert from _landed"),
    (r"^SELECT _g, sum", "profile: grouping sets"),
    (r"^SELECT (greatest|NULL::DOUBLE)", "profile: span + counts"),
    (r"^ALTER TABLE _landed|^UPDATE _landed", "decode/erased columns"),
    (r"^SELECT count\(\*\) FILTER", "stage: counts"),
    (r"^(COMMIT|BEGIN|ROLLBACK)", "transaction"),
    (r"^SELECT file, checksum|^SELECT checksum", "manifest: read"),
    (r"^DROP", "drop temp"),
]


def _label(sql: str) -> str:
    s = sql.strip()
    for pattern, label in LABELS:
        if re.search(pattern, s, re.S):
            return label
    return "other: " + re.sub(r"\s+", " ", s)[:50]


class Timed:
    """A DuckDB connection whose execute() is timed by thread CPU, by label."""

    def __init__(self, con):
        self._con = con

    def execute(self, sql, params=None):
        t0 = time.process_time()
        try:
            return self._con.execute(sql, params) if params is not None else self._con.execute(sql)
        finally:
            label = _label(sql)
            CPU[label] += time.process_time() - t0
            COUNT[label] += 1

    def __getattr__(self, name):
        return getattr(self._con, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--files", type=int, default=0, help="at most N files per table (0: all)")
    ap.add_argument("--tables", default="", help="only these raw tables")
    ap.add_argument("--no-checks", action="store_true")
    args = ap.parse_args()
    config = load_config(args.project / "cdp.yaml")
    config.warehouse_path.unlink(missing_ok=True)
    config.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    hashing = [0.0]
    real_checksum = loader.checksum_and_lines
    taken: dict = {}
    loader.checksum_and_lines = taken.pop  # the loader's thread gets the figures taken before
    p0, w0 = time.process_time(), time.perf_counter()
    con = connect(config.warehouse_path)
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")
    loader.ensure_raw_schema(con)
    wanted = set(filter(None, args.tables.split(",")))
    tables = []
    for source in config.enabled_sources():
        for name, files in source.entities.items():
            ent = contract_entity(source.kind, name)
            if wanted and ent.table not in wanted:
                continue
            tables.append(ent.table)
            known, applied = loader._manifest(con, source.name, ent.table)
            paths = loader.landed_files(config, source, name)
            for path, rel in paths[: args.files or None]:
                t0 = time.process_time()
                taken[path] = real_checksum(path)
                hashing[0] += time.process_time() - t0
                res = loader.load_file(Timed(con), source, ent, files, path, rel, config.ingestion.max_bad_row_rate,
                                       known, applied, earliest=config.ingestion.earliest_date)
                assert res.status == loader.LOADED, (rel, res.status, res.message)
    load_cpu = time.process_time() - p0
    checks_cpu = 0.0
    if not args.no_checks:
        from expectations.gate import run_source_checks

        c0 = time.process_time()
        run_source_checks(config, Timed(con), since=None, tables=sorted(set(tables)))
        checks_cpu = time.process_time() - c0
    total = time.process_time() - p0
    sql = sum(CPU.values())
    print(f"process CPU {total:.1f} s (wall {time.perf_counter() - w0:.1f} s): loading {load_cpu:.1f}, "
          f"source checks {checks_cpu:.1f}")
    for label, cpu in sorted(CPU.items(), key=lambda kv: -kv[1]):
        print(f"  {cpu:8.2f} s  {COUNT[label]:5d}x  {label}")
    print(f"  {hashing[0]:8.2f} s         sha256 + line count")
    print(f"  {total - sql - hashing[0]:8.2f} s         the rest (Python, imports, GX)")
    con.close()


if __name__ == "__main__":
    main()
