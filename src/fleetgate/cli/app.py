"""The ``fleetgate`` Typer application; each command module registers itself on ``app``."""

from __future__ import annotations

import typer
from rich.console import Console

from fleetgate import __version__

# Help is click's plain formatter (rich_markup_mode=None): it wraps at the terminal's width
# and never cuts an option name, where rich's panels cut them at 80 columns.
app = typer.Typer(
    name="fleetgate",
    help="Plan, render, deploy and serve a small fleet of vLLM servers behind one gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        print(f"fleetgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Plan, render, deploy and serve a small fleet of vLLM servers behind one gateway."""
