"""``cdp segments ...``: check the declarative segments file without running anything."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from cdp.cli_common import UserError, load_config_or_exit, out


# Registered under `cdp segments` (cdp/cli.py), beside the listing of published segments.
@click.command("validate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--file", "file_path", type=click.Path(dir_okay=False), default=None,
              help="Validate this segments file instead of the configured one.")
@click.option("--quiet", is_flag=True, help="Only say whether the file is valid (no SQL).")
def validate(config_path, file_path, quiet) -> None:
    """Validate the segments file and print each segment's SQL with its parameters.

    Nothing is run and the warehouse is not opened. Window bounds are shown relative to the
    config's as_of (or now)."""
    from pathlib import Path

    # lazy: loaded when the command runs, not at every `cdp` start-up
    from segments.compiler import compile_segment
    from segments.model import SegmentFileError, load_segments

    config = load_config_or_exit(config_path)
    path = Path(file_path) if file_path else config.segments_file
    try:
        segment_file = load_segments(path)
    except SegmentFileError as e:
        raise UserError(str(e)) from None
    as_of = config.as_of_datetime().astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    out.print(f"{path}: {len(segment_file.segments)} segment(s), valid", markup=False)
    if quiet:
        return
    for segment in segment_file.segments:
        compiled = compile_segment(segment, as_of)
        out.print(f"\n-- {segment.name}: {segment.description}", markup=False)
        out.print(compiled.sql, markup=False)
        for i, value in enumerate(compiled.params, start=1):
            shown = value.isoformat(sep=" ") if isinstance(value, datetime) else repr(value)
            out.print(f"--   ${i} = {shown}", markup=False)
