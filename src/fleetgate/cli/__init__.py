"""The ``fleetgate`` command: thin wrappers that parse, call one layer, and print."""

from __future__ import annotations

from fleetgate.cli import check, deploy, plan, probes, render, serve, sim, up, validate  # noqa: F401  (each module registers its commands)
from fleetgate.cli.app import app


def main() -> None:
    app()
