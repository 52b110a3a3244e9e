"""`cdp forget` and `cdp export-subject` (registered in cdp/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

# Not imported from cdp.cli: cli.py registers these commands, and `python -m cdp.cli` would
# then import it twice (as __main__ and as cdp.cli), a circular import.
from cdp.cli_common import UserError, config_option, err, load_config_or_exit, out  # noqa: E402
from core.salt import SaltMissing
from core.warehouse import WarehouseBusy


def _identifier_options(f):
    f = click.option("--person-id", "person_id", metavar="ID", help="A Tessera person id.")(f)
    f = click.option("--phone", metavar="NUMBER", help="A phone number, in any usual format.")(f)
    f = click.option("--email", metavar="ADDRESS", help="An email address.")(f)
    return f


def _one_identifier(email, phone, person_id) -> tuple[str, str]:
    given = [(k, v) for k, v in (("email", email), ("phone", phone), ("person_id", person_id)) if v]
    if len(given) != 1:
        raise UserError("give exactly one of --email, --phone, --person-id")
    return given[0]


@click.command()
@config_option
@_identifier_options
def forget(config_path, email, phone, person_id) -> None:
    """Record an erasure request; the next `cdp run` removes the person everywhere.

    Only salted hashes of the identifier are stored. The run resolves it to the person through
    the identity graph and removes every row about them from the warehouse, the published
    snapshots and the sync destinations, keeping salted hashes so that files landed again
    later do not bring them back. A report lands in the privacy folder's reports/.
    """
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from privacy.requests import record_request

    config = load_config_or_exit(config_path)
    kind, value = _one_identifier(email, phone, person_id)
    try:
        request = record_request(config, kind, value)
    except (SaltMissing, ValueError) as e:
        raise UserError(str(e)) from None
    out.print(f"erasure request {request.request_id} recorded ({kind}, stored as a salted hash): {request.path}")
    out.print("it is applied by the next run: `cdp run` (or the privacy/erasure asset in Dagster)")


@click.command("export-subject")
@config_option
@_identifier_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON here (default: standard output).")
def export_subject_command(config_path, email, phone, person_id, out_path) -> None:
    """Write a JSON of everything held about a person (subject access request)."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from privacy.subject import export_subject

    config = load_config_or_exit(config_path)
    kind, value = _one_identifier(email, phone, person_id)
    try:
        data = export_subject(config, kind, value)
    except (WarehouseBusy, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    text = json.dumps(data, indent=2, default=str)
    if out_path:
        Path(out_path).write_text(text)
        n = sum(len(v) for v in data.get("source_records", {}).values())
        err.print(f"wrote {out_path}: {len(data['person_ids'])} person id(s), {n} source record(s)", markup=False)
    else:
        sys.stdout.write(text + "\n")
    if not data["found"]:
        sys.exit(1)
