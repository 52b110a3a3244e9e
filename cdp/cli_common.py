"""What every `cdp` command module shares: the consoles, the --config/--json options, the
exit-2 error and config loading. A module of its own because cli.py imports the command
modules to register them; importing cdp.cli from them would be circular."""

from __future__ import annotations

import shutil
import sys
import time

import click
from rich.console import Console

from cdp.config import ConfigError, load_config

# Tables wider than 80 columns stay readable when piped (make demo's log, CI, a pager).
out = Console(highlight=False, soft_wrap=True,
              width=None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 40)).columns, 160))
err = Console(stderr=True, highlight=False, soft_wrap=True)

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON).")


class UserError(click.ClickException):
    """Bad input: one clear message on stderr and exit code 2, never a traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        err.print(f"[bold red]error:[/] {self.message}", markup=True)


def _load(config_path):
    try:
        return load_config(config_path)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _progress(msg: str) -> None:
    err.print(f"{time.strftime('%H:%M:%S')} {msg}", markup=False)
