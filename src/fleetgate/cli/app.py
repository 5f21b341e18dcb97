"""The ``fleetgate`` Typer application; each command module registers itself on ``app``."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="fleetgate",
    help="Plan, render, deploy and serve a small fleet of vLLM servers behind one gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
