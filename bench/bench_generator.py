"""Benchmark the synthetic data generator: wall time, rows per second, rows per file.

    .venv/bin/python bench/bench_generator.py            # 1,000,000 customers
    .venv/bin/python bench/bench_generator.py 100000     # a quicker look
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestion.generator import generate  # noqa: E402


def main(customers: int = 1_000_000, seed: int = 7, keep: bool = True) -> dict:
    """Generate `customers` (clean: no malformed rows, so bare DuckDB can read the files)
    into the shared bench data folder, which the ingestion bench then reuses."""
    from bench.common import BENCH_AS_OF, OUT

    out = OUT / f"data_{customers}_clean"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    try:
        summary = generate(customers, seed, out, as_of=dt.date.fromisoformat(BENCH_AS_OF), clean=True,
                           progress=lambda msg: print(f"  {time.perf_counter() - started:7.1f}s  {msg}", flush=True))
        wall = time.perf_counter() - started
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        (out / ".complete").write_text("ok")
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)

    per_set: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for relative, rows in summary.files.items():
        file_set = re.sub(r"_\d{4}-\d\d\.(jsonl|csv)$", "_YYYY-MM.\\1", relative)
        files, total = per_set[file_set]
        per_set[file_set] = (files + 1, total + rows)
    bad = sum(sum(kinds.values()) for kinds in summary.bad_rows.values())

    print(f"\ncustomers: {customers:,}   wall time: {wall:.1f}s   rows: {summary.rows:,}   "
          f"rows/s: {summary.rows / wall:,.0f}   on disk: {size / 1e9:.2f} GB   bad rows: {bad:,}")
    print(f"{'file':40} {'files':>5} {'rows':>14}")
    for file_set in sorted(per_set):
        files, rows = per_set[file_set]
        print(f"{file_set:40} {files:>5} {rows:>14,}")
    if keep:
        print(f"\nkept in {out}")
    return {"customers": customers, "seconds": round(wall, 1), "rows": summary.rows,
            "rows_per_second": round(summary.rows / wall), "gigabytes": round(size / 1e9, 2), "target_seconds": 300}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
