"""The load profile and the source-drift checks: what the profile costs ingestion, and how much
headroom generated history (normal variation) leaves under each source-drift bound.

    python -m bench.bench_load_profile --customers 5000

Ingests the same generated landing folder (every source, `cdp init`'s config) with the profile
switched off and on, alternating, twice each, and reports process CPU seconds beside wall time
(the machine may be shared), the CPU spent inside the profile's own queries, then compares every
load with its source's earlier loads as the gate does and reports the largest value each check
saw against its bound.
"""

from __future__ import annotations

import shutil
import threading
import time

from bench.common import OUT, data_dir
from cdp.scaffold import init_project
from core.config import load_config
from core.warehouse import open_warehouse


def _ingest(landing, work, profile: bool) -> tuple[float, float, float, object]:
    import ingestion.loader as loader

    shutil.rmtree(work, ignore_errors=True)
    config = load_config(init_project(work))
    shutil.rmtree(config.landing_dir)
    shutil.copytree(landing, config.landing_dir)
    real, inside, lock = loader._profile, [0.0], threading.Lock()

    def timed(con, ent, res):
        c = time.thread_time()
        real(con, ent, res)
        with lock:
            inside[0] += time.thread_time() - c

    loader._profile = timed if profile else (lambda con, ent, res: None)
    try:
        with open_warehouse(config.warehouse_path) as con:
            t, c = time.perf_counter(), time.process_time()
            report = loader.ingest(config, con)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        loader._profile = real
    assert report.ok, [f.message for f in report.files if f.status == "rejected"]
    return wall, cpu, inside[0], config


def main(customers: int = 5000) -> dict:
    from expectations.source_drift import findings, load_profiles, new_load_ids

    landing = data_dir(customers, clean=False)
    work = OUT / "load_profile"
    runs: dict[bool, list] = {False: [], True: []}
    config = None
    for attempt in range(2):
        for profile in (False, True):
            wall, cpu, inside, cfg = _ingest(landing, work / f"p{int(profile)}", profile)
            runs[profile].append((wall, cpu, inside))
            config = cfg if profile else config
            print(f"  attempt {attempt + 1}, profile {'on' if profile else 'off'}: {wall:.1f}s wall, "
                  f"{cpu:.1f} CPU-s" + (f" ({inside:.1f} CPU-s inside the profile)" if profile else ""), flush=True)
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        profiles = load_profiles(con)
        rows = con.execute("SELECT sum(rows_loaded), count(*) FROM raw.loads WHERE status = 'loaded'").fetchall()[0]
        found = findings(profiles, new_load_ids(con, None), config.expectations.sources)
    bounds = config.expectations.sources
    bound = {"drift_source_rows": bounds.max_row_count_drop, "drift_source_fill_rate": bounds.max_fill_rate_drop,
             "drift_source_top_value": bounds.max_top_value_share_rise}
    headroom = {}
    for check, b in bound.items():
        mine = [f for f in found if f.check == check]
        worst = max(mine, key=lambda f: f.value, default=None)
        headroom[check] = {"comparisons": len(mine), "bound": b,
                           "largest": None if worst is None else round(worst.value, 3),
                           "where": None if worst is None else f"{worst.file} {worst.field or ''}".strip()}
    shutil.rmtree(work, ignore_errors=True)
    return {
        "rows": int(rows[0]), "files": int(rows[1]),
        "ingest_cpu_s_without_profile": [round(r[1], 2) for r in runs[False]],
        "ingest_cpu_s_with_profile": [round(r[1], 2) for r in runs[True]],
        "cpu_s_inside_profile": [round(r[2], 2) for r in runs[True]],
        "ingest_wall_s_without_profile": [round(r[0], 1) for r in runs[False]],
        "ingest_wall_s_with_profile": [round(r[0], 1) for r in runs[True]],
        "generated_history_vs_bounds": headroom,
        "generated_history_held": sum(f.value > bound[f.check] for f in found),
    }


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=5000)
    print(json.dumps(main(ap.parse_args().customers), indent=2))
