"""Shared bits for benchmarks: a work folder, generated data reused across stages, timing."""

from __future__ import annotations

import datetime as dt
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_AS_OF = "2025-06-30"  # every bench generates its data as of this day
OUT = Path(os.environ.get("TESSERA_BENCH_DIR", ROOT / "bench_out"))


def data_dir(customers: int, clean: bool = True) -> Path:
    """Landing files for `customers` people, generated once and reused by every bench."""
    d = OUT / f"data_{customers}{'_clean' if clean else ''}"
    if not (d / ".complete").exists():
        from ingestion.generator import generate

        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        generate(customers=customers, seed=11, out=d, clean=clean, as_of=dt.date.fromisoformat(BENCH_AS_OF),
                 progress=lambda m: print(f"  generate: {m}", flush=True))
        print(f"  generated {customers:,} customers in {time.perf_counter() - t0:.1f}s", flush=True)
        (d / ".complete").write_text("ok")
    return d


def peak_rss_mb_of(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS in MB of the child, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss, proc.stdout


def python() -> str:
    return sys.executable
