"""`cdp identity merge|split|unpair|overrides`: a user forces two records together or apart.

The pairs go to the overrides file (``identity.overrides_file``, beside cdp.yaml) and are
applied by every later identity run (`cdp run`, `cdp run --only identity`) and by
`cdp identity plan`; nothing changes in the warehouse until then."""

from __future__ import annotations

import json

import click

from cdp.cli_common import UserError, config_option, json_option, load_config_or_exit, out
from core.settings.identity import settings_of
from identity.overrides import OverridesError, add, effective, path_of, read, remove


def _path(config_path):

    config = load_config_or_exit(config_path)
    return path_of(config, settings_of(config))


def _pair_command(action: str, help_text: str):
    @click.command(action, help=help_text)
    @config_option
    @click.argument("record_a")
    @click.argument("record_b")
    @click.option("--note", default="", help="Why (kept in the file: no personal data, please).")
    def command(config_path, record_a, record_b, note) -> None:

        path = _path(config_path)
        try:
            add(path, action, record_a.strip(), record_b.strip(), note.strip())
        except OverridesError as e:
            raise UserError(str(e)) from None
        out.print(f"{action} recorded in {path}; applied by the next identity run (`cdp run --only identity`)",
                  markup=False)

    return command


merge_command = _pair_command(
    "merge", "Force two records (record keys source|entity|source_record_id) into one person, past every check "
             "but a split.")
split_command = _pair_command("split", "Force two records (record keys) apart: no merge may ever join them.")


@click.command("unpair")
@config_option
@click.argument("record_a")
@click.argument("record_b")
def unpair_command(config_path, record_a, record_b) -> None:
    """Forget a manual merge or split of two records."""

    path = _path(config_path)
    try:
        found = remove(path, record_a.strip(), record_b.strip())
    except OverridesError as e:
        raise UserError(str(e)) from None
    if not found:
        raise UserError(f"{path} has no merge or split of these two records")
    out.print(f"removed from {path}; the next identity run no longer applies it", markup=False)


@click.command("overrides")
@config_option
@json_option
def overrides_command(config_path, as_json) -> None:
    """List the manual merges and splits the next identity run applies."""

    path = _path(config_path)
    try:
        rows = effective(read(path))
    except OverridesError as e:
        raise UserError(str(e)) from None
    if as_json:
        out.print_json(json.dumps([{"action": o.action, "record_a": o.record_a, "record_b": o.record_b,
                                    "note": o.note, "added_at": o.added_at} for o in rows]))
        return
    if not rows:
        out.print(f"no manual overrides ({path})", markup=False)
    for o in rows:
        out.print(f"{o.action:<6} {o.record_a}  {o.record_b}  {o.added_at}  {o.note}", markup=False)


COMMANDS = (merge_command, split_command, unpair_command, overrides_command)
