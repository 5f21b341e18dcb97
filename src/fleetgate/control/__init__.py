"""On-demand lifecycle: which deployments are resident per GPU, wake-on-LAN, start, stop, sleep,
wake and idle stop. The gateway asks it to make a deployment ready; it never proxies."""

from fleetgate.control.controller import (
    Controller,
    NoTraffic,
    NotReady,
    Traffic,
    release_controller,
)
from fleetgate.control.states import State
from fleetgate.control.units import HostPower, ReleaseUnit, Unit, host_powers, release_units
from fleetgate.control.wol import magic_packet, send_magic_packet

__all__ = [
    "Controller",
    "HostPower",
    "NoTraffic",
    "NotReady",
    "ReleaseUnit",
    "State",
    "Traffic",
    "Unit",
    "host_powers",
    "magic_packet",
    "release_controller",
    "release_units",
    "send_magic_packet",
]
