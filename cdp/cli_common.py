"""What every `cdp` command module shares: the consoles, the --config/--json options, the
exit-2 error, config loading and the stage progress lines. cli.py imports the command modules
to register them; they import only this module, never cdp.cli."""

from __future__ import annotations

import logging
import shutil
import sys
import time

import click
from rich.console import Console

from core.config import ConfigError, load_config
from core.pii import MaskPII, install_log_masking

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


def load_config_or_exit(config_path):
    try:
        return load_config(config_path)
    except ConfigError as e:
        raise UserError(str(e)) from None


def progress(msg: str) -> None:
    err.print(f"{time.strftime('%H:%M:%S')} {msg}", markup=False)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (it may be swapped, e.g. by test runners)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_stage_progress() -> None:
    """Print the stages' progress lines (logger `tessera`) as short lines on stderr."""
    install_log_masking()
    log = logging.getLogger("tessera")
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_tessera_cli", False) for h in log.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._tessera_cli = True
        handler.addFilter(MaskPII())
        log.addHandler(handler)
