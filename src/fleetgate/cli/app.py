"""The ``fleetgate`` Typer application; each command module registers itself on ``app``."""

from __future__ import annotations

import typer
from rich.console import Console
from typer._click import Context, HelpFormatter  # typer 0.29 vendors click
from typer.core import TyperGroup

from fleetgate import __version__


class PanelGroup(TyperGroup):
    """Plain help that still lists the commands by what they are for (each command's
    ``rich_help_panel``: Plan, Ship, Run, Test), in registration order."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        commands = [
            (name, cmd)
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        panels: dict[str, list[tuple[str, str]]] = {}
        for name, cmd in commands:
            panel = getattr(cmd, "rich_help_panel", None) or "Commands"
            panels.setdefault(panel, []).append((name, cmd.get_short_help_str(limit)))
        for panel, rows in panels.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


# Help is click's plain formatter (rich_markup_mode=None): it wraps at the terminal's width
# and never cuts an option name, where rich's panels cut them at 80 columns.
app = typer.Typer(
    name="fleetgate",
    help="Plan, render, deploy and serve a small fleet of vLLM servers behind one gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=PanelGroup,
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
