"""What `cdp serve` holds for each person's history (serve/cart_model.py PersonHistory, from
dbt's int_person_history): the model built on an existing warehouse (opened read-only, its
intermediate tables as a `cdp run` left them; the model's SQL compiled by dbt for the
warehouse's as_of), then loaded in a fresh process as the server loads it, with the RSS it adds.

    python -m bench.bench_serve_history --warehouse PATH [--memory-limit 3GB]

Reported beside CPU seconds (user+sys): the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _load(snapshot: str) -> dict:
    """In this (fresh) process: load the history as the server does, and what it added."""
    from serve.cart_model import _load_history
    con = duckdb.connect(snapshot, read_only=True)
    before, cpu, wall = _rss_mb(), _cpu(), time.perf_counter()
    history = _load_history(con)
    con.close()
    import gc
    gc.collect()
    return {"persons": len(history), "nbytes": history.nbytes, "bytes_per_person": round(history.nbytes / len(history), 1),
            "id_bytes": history.ids.dtype.itemsize, "rss_added_mb": round(_rss_mb() - before, 1),
            "load_wall_s": round(time.perf_counter() - wall, 2), "load_cpu_s": round(_cpu() - cpu, 2)}


def main(warehouse: Path, memory_limit: str = "3GB") -> dict:
    work = Path(tempfile.mkdtemp(prefix="serve_history_", dir=os.environ.get("TESSERA_BENCH_DIR")))
    ro = duckdb.connect(str(warehouse), read_only=True)
    as_of = ro.execute("SELECT max(as_of) FROM marts.customer_traits").fetchone()[0]
    ro.close()
    env = {**os.environ, "TESSERA_WAREHOUSE": str(work / "dummy.duckdb"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    dbt = Path(sys.executable).parent / "dbt"
    subprocess.run([str(dbt), "compile", "--select", "int_person_history", "--project-dir", str(ROOT / "dbt"),
                    "--profiles-dir", str(ROOT / "dbt"), "--target-path", str(work / "target"), "--log-path",
                    str(work / "target"), "--vars", json.dumps({"as_of": str(as_of)})],
                   env=env, check=True, capture_output=True)
    sql = next((work / "target" / "compiled").rglob("int_person_history.sql")).read_text()
    sql = re.sub(r'"dummy"\.', '"wh".', sql)
    snapshot = work / "snapshot.duckdb"
    con = duckdb.connect(str(snapshot))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"ATTACH '{warehouse}' AS wh (READ_ONLY)")
    cpu, wall = _cpu(), time.perf_counter()
    con.execute(f"CREATE TABLE main.serve_person_history AS {sql}")
    built = {"build_wall_s": round(time.perf_counter() - wall, 2), "build_cpu_s": round(_cpu() - cpu, 2),
             "as_of": str(as_of)}
    con.execute("DETACH wh")
    con.close()
    done = subprocess.run([sys.executable, "-m", "bench.bench_serve_history", "--load", str(snapshot)],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    result = {**built, **json.loads(done.stdout)}
    for p in sorted(work.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    work.rmdir()
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", type=Path)
    ap.add_argument("--memory-limit", default="3GB")
    ap.add_argument("--load", help=argparse.SUPPRESS)
    a = ap.parse_args()
    print(json.dumps(_load(a.load) if a.load else main(a.warehouse, a.memory_limit)))
