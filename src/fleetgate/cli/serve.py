"""``fleetgate serve``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from fleetgate.cli.app import app, err_console
from fleetgate.cli.common import exit_on_failure, load_or_exit, print_problems
from fleetgate.fleetfile import (
    Fleet,
    FleetError,
    has_on_demand,
    load_fleet,
    require_gateway,
    require_valid,
    with_key_store,
)


def _checked(path: Path) -> Fleet:
    """Load and cross-check the fleet file; raise FleetError when it has errors (reload uses
    this too, so an invalid file is refused and the running configuration stays)."""
    fleet = require_valid(load_fleet(path).fleet, str(path))
    require_gateway(fleet, str(path))
    return with_key_store(fleet)


@app.command(rich_help_panel="Run")
def serve(
    fleet: Path = typer.Argument(..., help="the fleet file (fleet.yaml)"),
    host: str | None = typer.Option(None, help="listen address (default: gateway.listen)"),
    port: int | None = typer.Option(None, help="port (default: gateway.port)"),
) -> None:
    """Run the OpenAI-compatible gateway described by the fleet file's gateway section.

    SIGHUP or POST /admin/reload (with the admin key) re-reads the file; an invalid file is
    refused and the running configuration keeps serving. With on_demand deployments, the
    control layer runs inside: it wakes hosts, starts and stops (or puts to sleep) the units of
    the release deployed on each host as requests need them (docs/on-demand.md).
    """
    from fleetgate.control import release_controller
    from fleetgate.gateway import run
    from fleetgate.plan import fleet_memory

    load_or_exit(fleet)
    try:
        checked = _checked(fleet)
    except FleetError as exc:
        print_problems(exc.problems, exc.file)
        raise typer.Exit(1) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    err_console.print(f"serving {fleet}", highlight=False)
    readiness = release_controller(checked) if has_on_demand(checked) else None
    with exit_on_failure(fleet):  # e.g. a key store that cannot be opened
        run(
            checked,
            host=host,
            port=port,
            loader=lambda: _checked(fleet),
            gpu_memory=fleet_memory(checked),
            readiness=readiness,
        )
