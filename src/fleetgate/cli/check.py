"""``fleetgate check``: the fleet owner's acceptance criteria, pass or fail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.table import Table

from fleetgate.cli.app import app, console
from fleetgate.cli.common import exit_on_failure, load_or_exit, running_here
from fleetgate.local.acceptance import AcceptanceReport, run_acceptance


def print_acceptance(report: AcceptanceReport) -> None:
    table = Table(title=f"acceptance: {report.url}")
    table.add_column("#", justify="right")
    table.add_column("criterion")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in report.criteria:
        table.add_row(
            str(c.number), c.title, "[green]pass[/]" if c.ok else "[red]FAIL[/]", c.detail
        )
    console.print(table)
    console.print("[green]all criteria pass[/]" if report.ok else "[red]some criteria FAIL[/]")


@app.command(rich_help_panel="Test")
def check(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    url: str | None = typer.Option(
        None, help="test this running gateway instead of a local fleet brought up here"
    ),
    api_key: str | None = typer.Option(
        None, envvar="FLEETGATE_API_KEY", help="with --url: the API key to use"
    ),
    speed: float = typer.Option(10.0, min=0.01, help="simulated GPU speed factor"),
    rollback: bool = typer.Option(True, help="run criterion 4 (deploy, break, roll back)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """The four acceptance criteria end to end; exit 1 if any fails.

    (1) context smoke test on every route and profile; (2) 20 clients on the burst profile of
    the smallest backend finish with at most 1 error; (3) over-limit requests get a 4xx, never
    a 5xx; (4) deploy through the deploy layer onto a local host, deploy a broken change, see
    the automatic rollback, and verify over HTTP that the previous limits are back. Without
    --url: the fleet `fleetgate up` runs from this file here, if any (said so), else the fleet
    is brought up here for the check on simulated backends; criterion 4 always runs locally: every
    deployment and route of the fleet on one local host (simulated backends at --speed), with
    the burst route's backend broken.
    """
    loaded = load_or_exit(fleet, strict_env=False)
    if url is None and (local := running_here(fleet)) is not None:
        url, api_key = local.url, api_key or local.api_key
    with console.status("starting") as status, exit_on_failure(fleet):
        report = asyncio.run(
            run_acceptance(
                loaded.fleet,
                url=url,
                api_key=api_key,
                speed=speed,
                rollback=rollback,
                step=lambda text: status.update(text),
            )
        )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_acceptance(report)
    if not report.ok:
        raise typer.Exit(1)
