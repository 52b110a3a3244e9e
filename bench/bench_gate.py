"""Benchmark: the quality gate's share of a whole pipeline run (target < 20% at 1M customers).

    .venv/bin/python -m bench.bench_gate --customers 20000

Runs `cdp run` (ingestion, identity, dbt, quality checks, publish) in this process on generated
data (shared with the other benches via bench/common.py), then reads each step's start and end
from the Dagster event log. Gate time = the `expectations_sources` and `expectations_gate` check steps
(GX import, SQL measurements, GX validations, Data Docs and the report included). Writing the
snapshot (`publish/snapshot`) is reported separately: it copies the marts, it checks nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GATE_STEPS = ("expectations_sources", "expectations_gate")


def step_seconds(dagster_home: Path, run_id: str) -> dict[str, float]:
    """Wall seconds per step of a run, from its STEP_START and STEP_SUCCESS/FAILURE events."""
    from dagster import DagsterEventType, DagsterInstance

    start: dict[str, float] = {}
    end: dict[str, float] = {}
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for kind in kinds:
            for rec in instance.get_records_for_run(run_id, of_type=kind, limit=10_000).records:
                entry = rec.event_log_entry
                step = entry.step_key or ""
                if kind == DagsterEventType.STEP_START:
                    start[step] = min(start.get(step, entry.timestamp), entry.timestamp)
                else:
                    end[step] = max(end.get(step, entry.timestamp), entry.timestamp)
    return {s: round(end[s] - start[s], 2) for s in start if s in end}


def main(customers: int, workdir: Path | None = None) -> dict:
    from bench.common import OUT, data_dir
    from cdp.runner import run_pipeline
    from cdp.scaffold import init_project
    from core.config import load_config

    landing = data_dir(customers)
    proj = (workdir or OUT) / f"gate_{customers}"
    shutil.rmtree(proj, ignore_errors=True)
    cfg_path = init_project(proj)
    text = cfg_path.read_text().replace("  landing: landing ", f"  landing: {landing} ")
    # Run as of the day the data was generated for (else "today" sees a long-silent history).
    as_of = json.loads((landing / "ground_truth" / "mess.json").read_text())["as_of"]
    cfg_path.write_text(text.replace("\nas_of:\n", f"\nas_of: {as_of}\n"))
    config = load_config(cfg_path)
    assert config.landing_dir == landing.resolve(), config.landing_dir
    assert config.as_of is not None and config.as_of.isoformat() == as_of, config.as_of

    t0 = time.perf_counter()
    summary = run_pipeline(cfg_path)
    total = time.perf_counter() - t0
    steps = step_seconds(config.dagster_home, summary.run_id)
    # (Dagster runs a check in several steps when its assets are built in several: expectations_gate_2, ...)
    gate_steps = {k: v for k, v in steps.items() if any(k == s or k.startswith(f"{s}_") for s in GATE_STEPS)}
    gate = sum(gate_steps.values())
    publish = steps.get("publish__snapshot", steps.get("publish_snapshot", 0.0))
    out = {
        "customers": customers,
        "run_ok": summary.ok,
        "pipeline_s": round(total, 1),
        "gate_checks_s": round(gate, 1),
        "gate_steps_s": gate_steps,
        "gate_share_of_pipeline": round(gate / total, 3) if total else None,
        "target_share": 0.20,
        "publish_snapshot_write_s": publish,
        "gate_checks": summary.gate["checks"] if summary.gate else None,
        "gate_passed": summary.gate["passed"] if summary.gate else None,
        "steps_s": steps,
    }
    if not summary.ok:
        out["failures"] = summary.failures[:5]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=20_000)
    args = ap.parse_args()
    print(json.dumps(main(args.customers), indent=2, default=str))
