"""`cdp serve` (registered in cdp/cli.py)."""

from __future__ import annotations

import click

from cdp.cli_common import UserError, config_option, load_config_or_exit
from core.config import ConfigError


@click.command()
@config_option
@click.option("--host", default=None, help="Interface to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: serve.port, 8787).")
@click.option("--workers", type=click.IntRange(1, 32), default=None,
              help="Worker processes on the port (default: serve.workers, 1).")
def serve(config_path, host, port, workers) -> None:
    """Run the real-time server: Segment-compatible collector, live profiles, decisions, triggers.

    Events are acknowledged once fsync'd in the log under serve.spool, and land as files in the
    web source's landing folder that the next `cdp run` loads exactly once. Stop with Ctrl-C or
    SIGTERM: requests in flight finish and the open log segment is landed (in every worker).
    """
    from serve.server import run  # lazy: uvicorn and the app load only for `cdp serve`

    config = load_config_or_exit(config_path)
    try:
        run(config, host=host, port=port, workers=workers)
    except ConfigError as e:
        raise UserError(str(e)) from None
