"""``fleetgate validate``."""

from __future__ import annotations

from pathlib import Path

import typer

from fleetgate.cli.app import app, console
from fleetgate.cli.common import load_or_exit, print_problems
from fleetgate.plan import fleet_problems


@app.command(rich_help_panel="Plan")
def validate(
    fleet: Path = typer.Argument(..., help="the fleet file (fleet.yaml)"),
    strict: bool = typer.Option(
        False, "--strict", help="an unset ${VAR} is an error (as for serve and deploy)"
    ),
) -> None:
    """Check a fleet file: schema, references, limits against vLLM settings, and memory fit.

    No secrets needed: an unset ${VAR} (an API key, say) is a warning naming it, and the rest
    is checked as written; --strict makes it an error. Errors exit 1; warnings (fp8 KV cache
    on GPUs that lack it, a memory utilization a Windows desktop will likely refuse) are
    printed and exit 0.
    """
    loaded = load_or_exit(fleet, strict_env=strict, check=False)
    problems = [*loaded.unset_env, *fleet_problems(loaded.fleet)]
    print_problems(problems, str(fleet))
    errors = sum(p.level == "error" for p in problems)
    warnings = len(problems) - errors
    if errors:
        console.print(f"[red]{fleet}: {errors} error(s), {warnings} warning(s)[/]")
        raise typer.Exit(1)
    console.print(f"[green]{fleet}: valid[/] ({warnings} warning(s))")
