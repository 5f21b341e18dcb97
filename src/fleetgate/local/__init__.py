"""A fleet on this machine: simulated (or real vLLM) backends behind a real gateway."""

from fleetgate.local.backends import BackendStartError, LocalBackend
from fleetgate.local.localize import LocalFleet, free_port, localize
from fleetgate.local.record import UpRecord, find_running, recorded, state_dir
from fleetgate.local.up import RunningFleet, local_fleet

__all__ = [
    "BackendStartError",
    "LocalBackend",
    "LocalFleet",
    "RunningFleet",
    "UpRecord",
    "find_running",
    "free_port",
    "local_fleet",
    "localize",
    "recorded",
    "state_dir",
]
