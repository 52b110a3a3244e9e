"""Ingestion speed: loading a folder of web JSONL through Tessera's loader vs DuckDB's bare
`CREATE TABLE AS SELECT * FROM read_json(...)` on the same files, side by side.

Each side runs twice, alternating, on a fresh DuckDB file; the best of each is compared
(the file cache is warm for both after the first read).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import duckdb

from bench.common import OUT, data_dir
from core.config import config_from_dict
from core.warehouse import connect
from ingestion.loader import ingest


def _bare(landing: Path, work: Path) -> float:
    db = work / "bare.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE web_events AS SELECT * FROM read_json('{landing}/web/*.jsonl')")
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def _ours(landing: Path, work: Path) -> tuple[float, int]:
    shutil.rmtree(work / "ours", ignore_errors=True)
    config = config_from_dict(
        {
            "paths": {"landing": str(landing), "warehouse": str(work / "ours" / "w.duckdb")},
            "sources": [{"name": "web", "kind": "web", "entities": {"events": {"path": "web/*.jsonl"}}}],
        },
        work,
    )
    con = connect(config.warehouse_path)
    t0 = time.perf_counter()
    report = ingest(config, con)
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed, report.rows_loaded()


def main(customers: int = 1_000_000) -> dict:
    landing = data_dir(customers, clean=True)
    work = OUT / "ingestion"
    work.mkdir(parents=True, exist_ok=True)
    files = sorted((landing / "web").glob("*.jsonl"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    bare_times, our_times, rows = [], [], 0
    for attempt in range(2):
        bare_times.append(_bare(landing, work))
        t, rows = _ours(landing, work)
        our_times.append(t)
        print(f"  attempt {attempt + 1}: bare read_json {bare_times[-1]:.1f}s, tessera {t:.1f}s", flush=True)
    bare, ours = min(bare_times), min(our_times)
    result = {
        "web_files": len(files),
        "web_mb": round(size_mb, 1),
        "rows": rows,
        "bare_duckdb_s": round(bare, 2),
        "tessera_s": round(ours, 2),
        "ratio_vs_bare": round(ours / bare, 2),
        "tessera_rows_per_s": round(rows / ours),
        "target_ratio": 1.5,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), indent=2))
