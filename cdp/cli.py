"""The ``cdp`` command. Every command takes ``--config PATH`` (default ./cdp.yaml or $CDP_CONFIG).

Errors a user can fix (a bad config, a busy warehouse, bad input) print one clear message
and exit with status 2; a pipeline run that fails exits with status 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from cdp.cli_common import UserError, config_option, load_config_or_exit, out, progress, show_stage_progress
from cdp.commands_activation import sync_command
from cdp.commands_experiments import experiment_command, experiments_command
from cdp.commands_identity import COMMANDS as IDENTITY_COMMANDS
from cdp.commands_marketing import COMMANDS as MARKETING_COMMANDS
from cdp.commands_marketing import segments_command
from cdp.commands_privacy import export_subject_command, forget
from cdp.commands_quality import print_publish_status, print_run_summary, publish_command, rollback_command
from cdp.commands_scoring import evaluate_churn, evaluate_recommendations
from cdp.commands_segments import validate as validate_segments
from cdp.commands_serve import serve as serve_command
from cdp.reporting import status_dict
from core.config import ConfigError, find_config_path
from core.run_lock import RunInProgress
from core.warehouse import WarehouseBusy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tessera CDP: one profile per real customer, from web, email, POS and support data."""


# --------------------------------------------------------------------------- init
@main.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite an existing cdp.yaml.")
def init(directory: str, force: bool) -> None:
    """Scaffold a working folder: DIR/cdp.yaml with defaults, and its folders."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from cdp.scaffold import init_project

    try:
        cfg_path = init_project(Path(directory), force=force)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    out.print(f"created {cfg_path}")
    out.print(f"next: land files under {cfg_path.parent / 'landing'} (or `cdp generate --config {cfg_path}`),"
              f" then `cdp run --config {cfg_path}`")


# --------------------------------------------------------------------------- generate
@main.command()
@config_option
@click.option("--customers", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Landing folder to write into (default: the config's paths.landing).")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Last day of generated history (default: today).")
@click.option("--clean", is_flag=True, help="Write no malformed rows.")
def generate(config_path, customers, seed, out_dir, as_of, clean) -> None:
    """Write realistic sample landing files for every source, plus ground truth."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from ingestion.generator import generate as run_generator

    if out_dir is None:
        out_dir = load_config_or_exit(config_path).landing_dir
    t0 = time.perf_counter()
    summary = run_generator(
        customers=customers, seed=seed, out=Path(out_dir),
        as_of=as_of.date() if as_of else None, progress=progress, clean=clean,
    )
    rows = summary.rows
    out.print(f"wrote sample data for {customers:,} customers to {out_dir} in {time.perf_counter() - t0:.1f}s"
              + (f" ({rows:,} rows)" if rows else ""))
    out.print(f"ground truth (never read by the pipeline): {Path(out_dir) / 'ground_truth'}")


# --------------------------------------------------------------------------- run
@main.command()
@config_option
@click.option("--only", "only", multiple=True, metavar="STAGE",
              help="Run only this stage (repeatable), e.g. --only ingestion.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--accept-drift", is_flag=True, help="Publish even if drift checks fail (every other check must pass).")
@click.option("--keep-going", is_flag=True,
              help="Go on when ingestion rejects a file whole (by default the run stops before identity).")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The run's reference day (UTC, its end) for every stage; default: cdp.yaml's as_of, else now.")
@click.option("--force", is_flag=True, help="Build everything even if nothing changed since the last complete run.")
def run(config_path, only, as_json, accept_drift, keep_going, as_of, force) -> None:
    """Run the asset graph in this process (what the Dagster UI runs), then summarise."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from cdp.runner import run_pipeline

    load_config_or_exit(config_path)  # validate first, with a clear message
    show_stage_progress()
    try:
        summary = run_pipeline(config_path, only=list(only) or None, accept_drift=accept_drift, keep_going=keep_going,
                               as_of=as_of.date() if as_of else None, force=force)
    except ValueError as e:
        raise UserError(str(e)) from None
    except (WarehouseBusy, RunInProgress) as e:  # another run holds the project: exit 2, naming it
        raise UserError(str(e)) from None
    if as_json:
        out.print_json(json.dumps(summary.to_dict(), default=str))
    else:
        print_run_summary(summary, config_path)
    sys.exit(0 if summary.ok else 1)


# --------------------------------------------------------------------------- status
@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path, as_json) -> None:
    """Show the paths in use, the latest run's outcome and what the warehouse holds."""

    config = load_config_or_exit(config_path)
    info = status_dict(config, find_config_path(config_path))
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"config     {info['config']}")
    for k, v in info["paths"].items():
        out.print(f"{k:<10} {v}")
    lr = info.get("latest_run")
    if lr:
        verdict = "" if lr.get("ok") is None else (" — all blocking checks passed" if lr["ok"] else " — FAILED checks")
        out.print(f"latest run {lr['run_id'][:8]} {lr['status']}{verdict} (started {lr['started_at']}, stages: {lr['stages']})")
        for c in lr.get("failed_checks", []):
            out.print(f"           failed check {c}")
    else:
        out.print("latest run none yet")
    if info["unmatched_landing_files"]:
        out.print(f"landing    not loaded, match no source's path: {', '.join(info['unmatched_landing_files'])}",
                  markup=False)
    if info.get("warehouse_error"):
        out.print(f"warehouse  {info['warehouse_error']}")
    for table, n in (info.get("raw_tables") or {}).items():
        out.print(f"  raw.{table:<22} {n:>12,} rows")
    print_publish_status(out, info)


# --------------------------------------------------------------------------- identity
@main.group()
def identity() -> None:
    """Identity resolution: what a config change would do, manual merges and splits."""


@identity.command("plan")
@config_option
@click.option("--proposed", "proposed_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="A cdp.yaml, or a YAML file holding only the proposed `identity:` section.")
@click.option("--json", "as_json", is_flag=True)
def identity_plan(config_path, proposed_path, as_json) -> None:
    """Dry run: merges, splits and records moved if the proposed identity settings were applied."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from identity.plan import plan_from_files

    load_config_or_exit(config_path)
    try:
        result = plan_from_files(config_path, proposed_path)
    except (ConfigError, ValueError) as e:
        raise UserError(str(e)) from None
    except WarehouseBusy as e:
        raise UserError(str(e)) from None
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    for key in ("changed_settings", "merges", "splits", "records_moved", "persons_before", "persons_after"):
        if key in result:
            value = result[key]
            out.print(f"{key:<18} {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    for key, value in result.items():
        if key not in ("changed_settings", "merges", "splits", "records_moved", "persons_before", "persons_after"):
            out.print(f"{key:<18} {json.dumps(value, default=str)[:500]}")
    out.print("nothing was changed (dry run)")


# --------------------------------------------------------------------------- evaluate
@main.group()
def evaluate() -> None:
    """Measure a stage against the generator's ground truth."""


@evaluate.command("identity")
@config_option
@click.option("--json", "as_json", is_flag=True)
def evaluate_identity(config_path, as_json) -> None:
    """Pairwise precision/recall/F1, B-cubed, over- and under-merged clusters."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from identity.evaluate import evaluate_config

    try:
        result = evaluate_config(load_config_or_exit(config_path))
    except WarehouseBusy as e:
        raise UserError(str(e)) from None
    if "error" in result:
        raise UserError(result["error"])
    if as_json:
        out.print_json(json.dumps(result, default=str))
    else:
        for k, v in result.items():
            out.print(f"{k:<28} {v}")


main.add_command(sync_command)
main.add_command(publish_command)
main.add_command(rollback_command)
main.add_command(forget)
main.add_command(export_subject_command)
main.add_command(experiment_command)
main.add_command(experiments_command)
main.add_command(serve_command)
for _command in MARKETING_COMMANDS:
    main.add_command(_command)
for _command in IDENTITY_COMMANDS:
    identity.add_command(_command)
evaluate.add_command(evaluate_churn)
evaluate.add_command(evaluate_recommendations)
# `cdp segments` lists the published segments; `cdp segments validate` checks the definitions file.
segments_command.add_command(validate_segments)


if __name__ == "__main__":
    main()
