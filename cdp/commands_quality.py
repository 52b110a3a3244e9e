"""`cdp publish` and `cdp rollback`, and what `cdp status` shows about the published snapshot
and the quality gate."""

from __future__ import annotations

import sys

import click

from cdp.cli_common import UserError, err, load_config_or_exit, out, show_stage_progress
from cdp.reporting import print_downstream_overview, print_raw_overview
from core.snapshots import PublishError
from core.warehouse import WarehouseBusy


def print_publish_status(out, info: dict) -> None:
    pub = info.get("published")
    if pub:
        rolled = f", rolled back to at {pub['rolled_back_at']}" if pub.get("rolled_back_at") else ""
        out.print(f"published  snapshot {pub['snapshot']} (published {pub['published_at']}{rolled}; "
                  f"{len(pub['tables'])} tables) -> {pub['path']}", markup=False)
        out.print(f"           kept for rollback: {', '.join(pub['kept'])}", markup=False)
    else:
        out.print("published  nothing yet")
    gate = info.get("quality_gate")
    if gate:
        verdict = "passed" if gate["passed"] else "FAILED (publish blocked)"
        out.print(f"gate       {gate['gate_id']} {verdict}: {gate['checks']} checks at {gate['checked_at']}", markup=False)
        for label in gate.get("blocking_failures", []):
            out.print(f"           blocking failure: {label}", markup=False)
        for label in gate.get("accepted_drift", []):
            out.print(f"           drift accepted: {label}", markup=False)
        if gate.get("report"):
            out.print(f"           report: {gate['report']}", markup=False)
    else:
        out.print("gate       not run yet")


def print_gate_outcome(out, summary) -> None:
    """After a run: whether it published, and if not, which check on which table blocked it."""
    gate = summary.gate
    published = next((a for a in summary.materialized if a.asset == "publish/snapshot"), None)
    if published:
        out.print(f"published snapshot {published.metadata.get('snapshot')} "
                  f"({len(published.metadata.get('tables') or {})} tables)", markup=False)
        if published.metadata.get("report"):
            out.print(f"report (charts, opens offline): {published.metadata['report']}", markup=False)
    if gate and not gate["passed"]:
        out.print("[bold red]publish blocked by the quality gate:[/]", markup=True)
        for label in gate["blocking_failures"]:
            out.print(f"    {label}", markup=False)
        if all(label.startswith("drift_") for label in gate["blocking_failures"]):
            out.print("    only drift failed: if the change is real, accept it with `cdp publish --accept-drift`",
                      markup=False)
        out.print(f"    report: {gate['report']}", markup=False)
    if gate and gate.get("skipped_tables"):
        out.print(f"not built yet, not published: {', '.join(gate['skipped_tables'])}", markup=False)


@click.command("publish")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--accept-drift", is_flag=True,
              help="Publish even though drift checks failed (every other check must still pass).")
@click.option("--json", "as_json", is_flag=True)
def publish_command(config_path, accept_drift, as_json) -> None:
    """Audit the current build again and publish it if the gate passes (no rebuild)."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from cdp.runner import run_pipeline

    config = load_config_or_exit(config_path)
    if not config.warehouse_path.exists():
        raise UserError(f"{config.warehouse_path}: nothing built yet; run `cdp run` first")
    show_stage_progress()
    try:
        summary = run_pipeline(config_path, only=["publish"], accept_drift=accept_drift)
    except WarehouseBusy as e:
        raise UserError(str(e)) from None
    if as_json:
        import json

        out.print_json(json.dumps(summary.to_dict(), default=str))
    else:
        print_run_summary(summary, config_path)
    sys.exit(0 if summary.ok else 1)


@click.command("rollback")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--to", "to_run", default=None, metavar="RUN",
              help="The snapshot to make current (see `cdp status`); default: the one before the current.")
def rollback_command(config_path, to_run) -> None:
    """Make an earlier published snapshot current again (atomically)."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from publish.snapshot import rollback

    config = load_config_or_exit(config_path)
    try:
        now = rollback(config.published_dir, to_run)
    except PublishError as e:
        raise UserError(str(e)) from None
    out.print(f"snapshot {now} is current again ({config.published_dir / 'tessera.duckdb'})", markup=False)


def print_run_summary(summary, config_path) -> None:
    config = load_config_or_exit(config_path)
    print_raw_overview(out, config)
    print_downstream_overview(out, config)
    for c in summary.failed_checks:
        colour = "red" if c.severity == "ERROR" else "yellow"
        out.print(f"[{colour}]check failed ({c.severity}):[/] {c.asset} {c.check}", markup=True)
        if c.detail:
            out.print("    " + c.detail.replace("\n", "\n    ")[:2000], markup=False)
    for f in summary.failures:
        err.print(f"[bold red]failed:[/] {f}", markup=True)
    for a in summary.materialized:  # models without enough history yet (published empty)
        if a.metadata.get("skipped"):
            out.print(f"[yellow]skipped:[/] {a.asset} — {a.metadata['skipped']}", markup=True)
    print_gate_outcome(out, summary)
    since = getattr(summary, "unchanged_since", None)
    if since:
        out.print(f"nothing changed since run {since.get('run_id', '?')[:8]} (as_of {since.get('as_of')}, finished "
                  f"{since.get('finished_at')}): nothing rebuilt, its snapshot stands (`cdp run --force` rebuilds)")
    passed = sum(c.passed for c in summary.checks)
    verdict = "[bold green]OK[/]" if summary.ok else "[bold red]FAILED[/]"
    out.print(
        f"run {summary.run_id[:8]}: {verdict} — {len(summary.materialized)} assets materialized, "
        f"{passed}/{len(summary.checks)} checks passed",
        markup=True,
    )
