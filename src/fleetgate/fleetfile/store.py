"""Where a fleet's gateway keeps its keys and usage when the fleet file does not say.

``gateway.store`` names it (a SQLite file path or a PostgreSQL DSN). Unset, ``fleetgate serve``
and ``fleetgate keys``/``usage`` agree on one SQLite file per fleet name under
``$XDG_STATE_HOME/fleetgate`` (default ``~/.local/state/fleetgate``), so budgets and keys
survive a restart; a gateway run in-process by a test or ``fleetgate up`` keeps them in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fleetgate.fleetfile.schema import Fleet


def default_key_store(fleet: Fleet) -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", fleet.name) or "fleet"
    return str(Path(state) / "fleetgate" / f"{name}-keys.db")


def with_key_store(fleet: Fleet) -> Fleet:
    """The fleet with ``gateway.store`` set: its own, or :func:`default_key_store`."""
    gw = fleet.gateway
    if gw is None or gw.store is not None:
        return fleet
    return fleet.model_copy(
        update={"gateway": gw.model_copy(update={"store": default_key_store(fleet)})}
    )
