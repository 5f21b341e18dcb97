"""The ``fleetgate`` command: thin wrappers that parse, call one layer, and print."""

from __future__ import annotations

# Each module registers its commands on import; this order is the order of `fleetgate --help`.
# isort: off
from fleetgate.cli import validate, plan  # noqa: F401
from fleetgate.cli import render, deploy  # noqa: F401
from fleetgate.cli import serve, keys, up, sim  # noqa: F401
from fleetgate.cli import probes, top, check  # noqa: F401

# isort: on
from fleetgate.cli.app import app


def main() -> None:
    app()
