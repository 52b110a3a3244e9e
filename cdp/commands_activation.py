"""`cdp sync NAME [--dry-run]` and `cdp sync --all`: reverse-ETL syncs from the published snapshot."""

from __future__ import annotations

import json
import sys

import click

from cdp.cli_common import UserError, config_option, load_config_or_exit, out, progress


def _print_report(r) -> None:
    planned = ", ".join(f"{v} {k}" for k, v in r.planned.items())
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r.skipped.items() if v)
    head = f"[bold]{r.sync}[/] -> {r.destination} (snapshot {r.snapshot or '?'})"
    out.print(head + (" [yellow]dry run: nothing sent[/]" if r.dry_run else ""))
    out.print(f"  planned: {planned}" + (f"; not sent: {skipped}" if skipped else ""))
    if r.dry_run:
        for s in r.sample:
            fields = f" fields: {', '.join(s['fields'])}" if s["fields"] else ""
            out.print(f"    {s['action']:<14} {s['reason']:<12} {s['person_id']:<14} {s['key']}{fields}",
                      markup=False)
    for w in r.warnings:
        out.print(f"  [yellow]warning:[/] {w}", markup=True)
    if r.dry_run:
        return
    failed = f"failed {r.failed}" + (" (pending, retried next run)" if r.failed else "")
    extra = "".join([f"; {r.reconciled} found already applied after a lost acknowledgement" if r.reconciled else "",
                     f"; {r.recovered_runs} killed run(s) marked interrupted" if r.recovered_runs else ""])
    out.print(f"  sent {r.sent}, rejected {r.rejected}, {failed}; {r.requests} requests in {r.seconds:.1f}s{extra}")
    if r.error:
        out.print(f"  [red]stopped:[/] {r.error}")


@click.command("sync")
@config_option
@click.argument("name", required=False)
@click.option("--all", "all_syncs", is_flag=True, help="Run every enabled sync in the config.")
@click.option("--dry-run", is_flag=True, help="Print the planned additions, updates and removals; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def sync_command(config_path, name, all_syncs, dry_run, as_json) -> None:
    """Sync audiences and traits from the published snapshot to a destination (diffed, consent-safe)."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from activation.state import StateBusy
    from activation.sync import SyncError, run_all, run_sync
    from dagster_project.defs.activation import record_cli_syncs  # lazy: Dagster takes seconds to import

    config = load_config_or_exit(config_path)
    if bool(name) == bool(all_syncs):
        raise UserError("give a sync NAME or --all (not both); syncs: "
                        + (", ".join(s.name for s in config.syncs) or "(none configured)"))
    try:
        reports = run_all(config, dry_run, progress) if all_syncs else [run_sync(config, name, dry_run, progress)]
    except (SyncError, StateBusy) as e:
        raise UserError(str(e)) from None
    try:
        # The sync assets in the Dagster UI show this delivery too.
        record_cli_syncs(config, reports)
    except Exception as e:  # the deliveries are done and recorded in the sync state either way
        click.echo(f"warning: could not record the sync in Dagster: {e}", err=True)
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in reports], default=str))
    else:
        for r in reports:
            _print_report(r)
    sys.exit(0 if all(r.ok for r in reports) else 1)
