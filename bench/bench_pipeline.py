"""The whole pipeline as users run it: a full `cdp run`, then daily increments, then a rerun with
nothing new, each measured per stage (wall, CPU, peak RSS) from outside the process, with the
ratio increment / full. Dagster's own cost is shown too: the events it plans before the first
step, and the wall and CPU from the process start to that step.

    python -m bench.bench_pipeline --customers 100000 --days 7
    python -m bench.bench_pipeline --customers 100000 --days 30 --no-rerun --compare-full

Data: the generator's (bench/common.py, as of BENCH_AS_OF, seed 11), copied into a fresh project;
each increment is one more day written by ingestion/generator/increment.py (the as_of day's rows
again, moved a day on with new record ids). Each run is `cdp run --as-of <its day> --json` in its
own process, with `--accept-drift` (a drift block stops a publish, not the work). CPU is the
process tree's user + system time (dbt's subprocesses included), sampled
from /proc every 0.25 s and attributed to the Dagster step running at the time; "orchestration"
is what falls outside every step (start-up, definitions, planning, summary).

With ``--compare-full``, a second project gets the same landed files (the increments included)
and one full run at the last day's as_of; its snapshot is compared with the incremental
project's (``publish.compare``): same person ids, segment members, scores, offers and lists, and
what the full run would have cost that day. By default both projects keep their model schedules,
so the daily project scores with models fitted up to a week earlier than the rebuild's: the
comparison then mixes model age with incremental work. ``--same-models`` refits every model in
every run on both sides (Splink's `retrain_every_days`, the scoring models' and
recommendations' `refit_every_days`, all 0), as `tests/test_incremental_agreement.py` does: what
differs is then what incremental work did differently, and the daily runs cost the refits too.

    python -m bench.bench_pipeline --customers 100000 --days 30 --no-rerun --compare-full --same-models
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench.common import BENCH_AS_OF, OUT, ROOT, data_dir

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(root: int) -> list[int]:
    """root and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _sample(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of the processes: each one's own time plus its reaped children's."""
    cpu = rss = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
        rss += int(fields[21]) * PAGE / 2**20
    return cpu, rss


def measured_run(cmd: list[str], env: dict, max_rss_mb: float | None = None) -> dict:
    """Run cmd; samples of (time, tree CPU, tree RSS), the exact total CPU, wall, stdout. Past
    max_rss_mb (the whole tree's RSS) the tree is killed and "killed_at" says when and at what RSS."""
    samples: list[tuple[float, float, float]] = []
    killed: dict = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sampler():
        while not done.is_set():
            now = time.time()
            cpu, rss = _sample(_tree(proc.pid))
            if cpu or rss:  # (nothing left once the process has exited)
                samples.append((now, cpu, rss))
            if max_rss_mb and rss > max_rss_mb and not killed:
                killed.update(time=now, rss_mb=round(rss))
                for pid in _tree(proc.pid):  # this bench's own run: its process and its children
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
            done.wait(0.25)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    wall = time.time() - t0
    done.set()
    thread.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # exact, the whole tree
    samples.append((t0 + wall, cpu, samples[-1][2] if samples else 0.0))
    return {"pid": proc.pid, "t0": t0, "wall": wall, "cpu": cpu, "samples": samples, "returncode": proc.returncode,
            "stdout": stdout, "stderr": stderr[-3000:], "killed_at": killed or None}


def _cpu_at(samples, t: float) -> float:
    """The tree's CPU at time t (the last sample at or before it)."""
    value = 0.0
    for ts, cpu, _ in samples:
        if ts > t:
            break
        value = cpu
    return value


def stage_of(step_key: str) -> str:
    for prefix, stage in (("raw_", "ingestion"), ("expectations_sources", "ingestion"), ("privacy", "privacy"),
                          ("identity", "identity"), ("dbt_core", "dbt_core"), ("dbt_after", "dbt_after_scoring"),
                          ("experiments", "experiments"), ("scoring_recommendations", "recommendations"),
                          ("scoring", "scoring"), ("declarative_segments", "segments"),
                          ("expectations_gate", "gate"), ("publish", "publish")):
        if step_key.startswith(prefix):
            return stage
    return step_key


def dagster_intervals(dagster_home: Path, pid: int) -> tuple[list[tuple[str, float, float]], list[dict]]:
    """The steps of the runs this process made ((stage, start, end)), and per run: the events Dagster
    planned, the time from the run's first event to its first step, the steps that failed (with
    Dagster's error message) and those started but never finished (a killed or crashed run)."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    steps: list[tuple[str, float, float]] = []
    runs = []
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs(RunsFilter(tags={"tessera/pid": str(pid)})):
            started: dict[str, float] = {}
            failed: list[dict] = []
            planned = 0
            first = first_step = None
            for entry in instance.all_logs(run.run_id):
                first = entry.timestamp if first is None else first
                event = entry.dagster_event
                if event is None:
                    continue
                kind = event.event_type
                if kind in (DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED):
                    planned += 1
                elif kind == DagsterEventType.STEP_START:
                    started[event.step_key] = entry.timestamp
                    first_step = entry.timestamp if first_step is None else first_step
                elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE) and event.step_key in started:
                    steps.append((stage_of(event.step_key), started.pop(event.step_key), entry.timestamp))
                if kind == DagsterEventType.STEP_FAILURE:
                    error = getattr(event.event_specific_data, "error", None)
                    failed.append({"step": event.step_key, "stage": stage_of(event.step_key or ""),
                                   "error": (error.message.strip() if error else event.message or "")[-1500:]})
            runs.append({"run_id": run.run_id, "phase": run.tags.get("tessera/phase"), "planned_events": planned,
                         "first_event": first, "first_step": first_step, "status": str(run.status.value),
                         "failed_steps": failed,
                         "unfinished_steps": [{"step": k, "stage": stage_of(k), "started": t} for k, t in started.items()]})
    return steps, runs


def per_stage(run: dict, steps: list[tuple[str, float, float]]) -> dict[str, dict]:
    samples = run["samples"]
    stages: dict[str, dict] = {}
    covered = 0.0
    for stage, start, end in steps:
        s = stages.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0})
        s["wall_s"] += end - start
        s["cpu_s"] += _cpu_at(samples, end) - _cpu_at(samples, start)
        s["peak_rss_mb"] = max([s["peak_rss_mb"], *(r for t, _, r in samples if start <= t <= end)])
        covered += _cpu_at(samples, end) - _cpu_at(samples, start)
    total_cpu = run["cpu"]
    stages["orchestration"] = {"wall_s": run["wall"] - sum(e - s for _, s, e in steps),
                               "cpu_s": total_cpu - covered,
                               "peak_rss_mb": max((r for _, _, r in samples), default=0.0)}
    for s in stages.values():
        s.update({k: round(v, 1) for k, v in s.items()})
    return stages


def _link_or_copy(src, dst):
    """A hard link (the loader never writes into landing files; increments are new files), so a 1M
    project does not need another 17.5 GB; a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


# Every model refitted in every run (--same-models): the keys `cdp init` writes as `{}`.
REFIT_EVERY_RUN = {"identity": "{splink: {retrain_every_days: 0}}", "churn": "{refit_every_days: 0}",
                   "cart_intent": "{refit_every_days: 0}", "recommendations": "{refit_every_days: 0}"}


def project(customers: int, landing: Path | None = None, suffix: str = "", same_models: bool = False) -> Path:
    """A fresh project whose landing folder holds the generated data (increments add to it), or
    the files of another project's ``landing``."""
    folder = OUT / f"pipeline_{customers}{suffix}"
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([str(ROOT / ".venv/bin/cdp"), "init", str(folder)], check=True, capture_output=True)
    if same_models:
        cfg = folder / "cdp.yaml"
        text = cfg.read_text()
        for section, value in REFIT_EVERY_RUN.items():
            if f"\n{section}: {{}}\n" not in text:
                raise SystemExit(f"--same-models: `cdp init` no longer writes `{section}: {{}}` in cdp.yaml")
            text = text.replace(f"\n{section}: {{}}\n", f"\n{section}: {value}\n", 1)
        cfg.write_text(text)
    shutil.rmtree(folder / "landing", ignore_errors=True)
    shutil.copytree(landing or data_dir(customers), folder / "landing",
                    ignore=shutil.ignore_patterns("ground_truth", ".complete"), copy_function=_link_or_copy)
    return folder


def failure_report(run: dict, summary: dict, runs: list[dict]) -> list[str]:
    """Why a run did not end ok, by stage: failed steps with Dagster's error, steps a kill or crash
    left unfinished, the run's own failures and failed ERROR checks, else the end of stderr."""
    lines = []
    if run.get("killed_at"):
        lines.append(f"killed by the bench at {run['killed_at']['rss_mb']:,} MB RSS")
    for r in runs:
        for f in r["failed_steps"]:
            lines.append(f"stage {f['stage']} (step {f['step']}) failed: {f['error']}")
        for u in r["unfinished_steps"]:
            lines.append(f"stage {u['stage']} (step {u['step']}) started {u['started'] - run['t0']:.0f} s into the run"
                         " and never finished")
    lines += [f"run failure: {f}" for f in summary.get("failures") or []]
    lines += [f"failed check {c.get('asset')}:{c.get('check')} ({c.get('severity')}): {c.get('detail', '')}"
              for c in summary.get("checks") or [] if not c.get("passed") and c.get("severity") == "ERROR"]
    if not lines or not summary:
        lines.append(f"exit code {run['returncode']}; stderr ends: {run['stderr'][-1500:].strip()}")
    return lines


def measure(name: str, folder: Path, day: dt.date, env: dict, max_rss_gb: float | None) -> dict:
    """One `cdp run` of the project in ``folder`` at ``day``, measured per stage and printed."""
    # --accept-drift: a refit on a small or repeated day can move the churn distribution past the
    # drift bound, which blocks the publish (measured at 2,000 customers: PSI 0.57); the bench
    # measures the work, and a blocked run would also make the next rerun rebuild.
    cmd = [str(ROOT / ".venv/bin/cdp"), "run", "--config", str(folder / "cdp.yaml"), "--as-of", day.isoformat(),
           "--json", "--accept-drift"]
    run = measured_run(cmd, env, max_rss_mb=max_rss_gb * 1024 if max_rss_gb else None)
    try:
        summary = json.loads(run["stdout"][run["stdout"].index("{"):])
    except ValueError:
        summary = {}
    steps, runs = dagster_intervals(folder / ".dagster", run["pid"])
    stages = per_stage(run, steps)
    before_first = [{"phase": r["phase"], "planned_events": r["planned_events"],
                     "wall_s_to_first_step": round(r["first_step"] - r["first_event"], 1)
                     if r["first_step"] and r["first_event"] else None} for r in runs]
    # the process's start (imports, definitions) to its first step
    first_step = min((s for _, s, _ in steps), default=run["t0"] + run["wall"])
    record = {"run": name, "as_of": day.isoformat(), "ok": summary.get("ok"), "returncode": run["returncode"],
              "unchanged_since": summary.get("unchanged_since"), "changed": summary.get("changed"),
              "wall_s": round(run["wall"], 1), "cpu_s": round(run["cpu"], 1),
              "peak_rss_mb": round(max((r for _, _, r in run["samples"]), default=0), 1),
              "start_to_first_step": {"wall_s": round(first_step - run["t0"], 1),
                                      "cpu_s": round(_cpu_at(run["samples"], first_step), 1)},
              "dagster_runs": before_first, "stages": stages, "killed": bool(run.get("killed_at"))}
    if run["returncode"] != 0 or not summary.get("ok"):
        record["failure"] = failure_report(run, summary, runs)
    print(json.dumps({k: v for k, v in record.items() if k not in ("stages", "failure")}), flush=True)
    for stage, m in stages.items():
        print(f"    {stage:<18} wall {m['wall_s']:>7.1f} s  cpu {m['cpu_s']:>7.1f} s  peak rss {m['peak_rss_mb']:>7.0f} MB")
    for line in record.get("failure", []):
        print(f"  NOT OK: {line}", flush=True)
    return record


def main(customers: int, days: int = 7, rerun: bool = True, max_rss_gb: float | None = None,
         compare_full: bool = False, same_models: bool = False) -> dict:
    """`make bench`'s entry (bench/run_all.py): the figures, also written to bench_out/."""
    from ingestion.generator.increment import write_day

    folder = project(customers, same_models=same_models)
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    as_of = dt.date.fromisoformat(BENCH_AS_OF)
    plan = [("full", as_of, None)] + [(f"day {k}", as_of + dt.timedelta(days=k), k) for k in range(1, days + 1)]
    if rerun:
        plan.append(("no change", plan[-1][1], None))
    results = []
    for name, day, k in plan:
        if k is not None:
            rows = write_day(folder / "landing", as_of, day)
            print(f"{name}: landed {sum(rows.values()):,} rows ({', '.join(f'{f} {n:,}' for f, n in rows.items())})",
                  flush=True)
        results.append(measure(name, folder, day, env, max_rss_gb))
        if results[-1]["killed"]:
            break  # the project is left mid-run: later runs would measure a recovery

    agreement = None
    if compare_full and days and not results[-1]["killed"]:
        last_day = plan[-1][1]
        rebuilt = project(customers, landing=folder / "landing", suffix="_full", same_models=same_models)
        print(f"full rebuild of the same {len(list((folder / 'landing').rglob('*.*'))):,} landed files at {last_day}",
              flush=True)
        results.append(measure("full again", rebuilt, last_day, env, max_rss_gb))
        agreement = compare_published(folder, rebuilt)

    full = results[0]["cpu_s"] or 1.0
    print(f"\n{customers:,} customers: run, wall s, CPU s, CPU / full run's")
    for r in results:
        print(f"  {r['run']:<10} {r['wall_s']:>8.1f} {r['cpu_s'] or 0:>8.1f} {(r['cpu_s'] or 0) / full:>7.3f}"
              + ("  (nothing changed: skipped)" if r["unchanged_since"] else ""))
    if agreement:
        models = ("every model refitted in every run on both sides" if same_models else
                  "the daily project's models fitted on their schedule, the rebuild's on the last day")
        print(f"\nday {days} incremental against a full rebuild of the same data ({models}):")
        for line in agreement.summary():
            print(f"  {line}")
    out = OUT / f"bench_pipeline_{customers}.json"
    out.write_text(json.dumps({"customers": customers, "days": days, "same_models": same_models, "runs": results,
                               "agreement": agreement.as_dict() if agreement else None}, indent=2))
    print(f"written {out}")
    return {f"{r['run']} {k}": r[k] for r in results for k in ("wall_s", "cpu_s")} | {
        f"{r['run']} cpu / full": round((r["cpu_s"] or 0) / full, 3) for r in results[1:]}


def compare_published(incremental: Path, rebuilt: Path):
    from core.config import load_config
    from core.snapshots import current_path
    from publish.compare import compare_snapshots

    paths = [current_path(load_config(f / "cdp.yaml").published_dir) for f in (incremental, rebuilt)]
    if not all(p.exists() for p in paths):
        print("  not compared: a side published nothing", flush=True)
        return None
    return compare_snapshots(*paths)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7, help="daily increments after the full run")
    parser.add_argument("--no-rerun", action="store_true", help="skip the last rerun with nothing new")
    parser.add_argument("--max-rss-gb", type=float, default=None,
                        help="kill a run whose process tree passes this RSS, and report the stage it was in")
    parser.add_argument("--compare-full", action="store_true",
                        help="then rebuild the same landed data in a new project in one full run and compare the "
                             "two snapshots (persons, segments, scores, offers, lists)")
    parser.add_argument("--same-models", action="store_true",
                        help="refit every model in every run on both projects, so that --compare-full measures "
                             "incremental work alone, not model age (the daily runs then cost the refits too)")
    cli = parser.parse_args()
    main(cli.customers, cli.days, rerun=not cli.no_rerun, max_rss_gb=cli.max_rss_gb, compare_full=cli.compare_full,
         same_models=cli.same_models)
