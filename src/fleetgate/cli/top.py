"""``fleetgate top``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit, print_problems, running_here
from fleetgate.fleetfile import FleetError, gateway_url
from fleetgate.probes.top import TopError, run_top


@app.command(rich_help_panel="Test")
def top(
    target: str = typer.Argument(
        ..., help="the gateway's URL (http://host:port), or a fleet file (aims at its gateway)"
    ),
    admin_key: str | None = typer.Option(
        None,
        envvar="FLEETGATE_ADMIN_KEY",
        help="the gateway's admin key (default: $FLEETGATE_ADMIN_KEY, else the fleet file's)",
    ),
    interval: float = typer.Option(2.0, min=0.2, help="seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="print the view once and exit"),
) -> None:
    """The fleet live in the terminal: each deployment's state, slots, latency, KV cache and
    tokens/s, each route's queue and traffic, each key's requests today. q quits.

    It reads the gateway's /ui/state, so the gateway needs gateway.admin_key set. Given the
    fleet file of a running `fleetgate up`, it shows that local fleet.
    """
    url = target
    if not target.startswith(("http://", "https://")):
        fleet = load_or_exit(Path(target), strict_env=False).fleet
        if (local := running_here(Path(target), elsewhere="a URL")) is not None:
            url, admin_key = local.url, admin_key or local.admin_key
        else:
            try:
                url = gateway_url(fleet)
            except FleetError as exc:
                print_problems(exc.problems, target)
                raise typer.Exit(1) from None
            configured = fleet.gateway.admin_key if fleet.gateway else None
            if admin_key is None and configured and "${" not in configured:
                admin_key = configured
    try:
        asyncio.run(run_top(url, admin_key, interval_s=interval, console=console, once=once))
    except TopError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
