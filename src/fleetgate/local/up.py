"""Bring a whole fleet up on this machine: its backends first, then the gateway in front."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fleetgate.control import Controller
from fleetgate.fleetfile import Fleet, has_on_demand, require_valid
from fleetgate.gateway import serve
from fleetgate.local.backends import (
    BackendStartError,
    LocalBackend,
    sim_backend,
    vllm_backend,
    vllm_problems,
)
from fleetgate.local.localize import LOOPBACK, LocalFleet, localize
from fleetgate.local.ondemand import SimUnit, sim_units
from fleetgate.plan import fleet_memory


@dataclass(frozen=True)
class RunningFleet:
    """A local fleet that is up: the rewritten fleet, its backends, the gateway's URL."""

    local: LocalFleet
    backends: dict[str, LocalBackend]
    gateway_url: str
    controller: Controller | None = None

    @property
    def fleet(self) -> Fleet:
        return self.local.fleet

    @property
    def api_key(self) -> str | None:
        return self.local.api_key


@contextlib.asynccontextmanager
async def local_fleet(
    fleet: Fleet,
    *,
    gateway_port: int | None = None,
    backend: str = "sim",
    speed: float = 1.0,
    log_dir: Path | None = None,
    policy: str = "swap_aware",
    startup_s: float | None = None,
    wake_s: float | None = None,
) -> AsyncIterator[RunningFleet]:
    """Run ``fleet`` locally until the block ends; everything started is stopped on exit.

    ``gateway_port``: None keeps the fleet file's port, 0 picks a free one. ``backend`` is
    ``sim`` (the simulator) or ``vllm`` (real vLLM processes; deployments need ``model_path``).
    On-demand deployments are simulators the control layer starts, stops, puts to sleep and
    wakes (start-up and wake delays like a real one's at ``speed``, or ``startup_s``/``wake_s``).
    """
    require_valid(fleet)
    if backend not in ("sim", "vllm"):
        raise ValueError(f"backend must be sim or vllm, not {backend!r}")
    if backend == "vllm" and (problems := vllm_problems(fleet)):
        raise BackendStartError("cannot start vLLM:\n  " + "\n  ".join(problems))
    if backend == "vllm" and has_on_demand(fleet):
        raise BackendStartError(
            "on-demand deployments run as simulators only (fleetgate up --backend sim); "
            "to try them on vLLM, deploy the fleet and run fleetgate serve"
        )
    local = localize(fleet, gateway_port=gateway_port)
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, LocalBackend] = {}
        if backend == "vllm" and log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetgate-")))
        units = sim_units(local.fleet, local.ports, speed=speed, startup_s=startup_s, wake_s=wake_s)
        controller = None
        if units:
            controller = Controller(local.fleet, dict(units), policy=policy)
            stack.push_async_callback(_stop_units, units)
        for name in fleet.deployments:
            if name in units:
                backends[name] = units[name].describe(name)
                continue
            if backend == "sim":
                started = sim_backend(local.fleet, name, speed=speed, port=local.ports[name])
            else:
                assert log_dir is not None
                started = vllm_backend(local.fleet, name, log_dir=log_dir)
            backends[name] = await stack.enter_async_context(started)
        gateway = await stack.enter_async_context(
            serve(
                local.fleet,
                host=LOOPBACK,
                port=local.gateway_port,
                gpu_memory=fleet_memory(local.fleet),
                readiness=controller,
            )
        )
        yield RunningFleet(local, backends, gateway.url, controller)


async def _stop_units(units: dict[str, SimUnit]) -> None:
    for unit in units.values():
        await unit.stop()
