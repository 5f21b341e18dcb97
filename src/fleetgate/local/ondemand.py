"""On-demand deployments on this machine: simulators that start, stop, sleep and wake like
vLLM processes (a start-up delay with the port closed, a wake delay), driven by the control
layer exactly as it drives rendered units on real hosts."""

from __future__ import annotations

from dataclasses import replace

from fleetgate.fleetfile import Fleet
from fleetgate.local.backends import LocalBackend
from fleetgate.local.simconfig import sim_config_for
from fleetgate.sim import SimConfig, SimServer

# Start-up and wake delays of a simulated on-demand deployment at speed 1: a cold vLLM start
# of a 7-8B model (VLLM.md: 30-100 s) and a wake from level-1 sleep (seconds).
STARTUP_S = 30.0
WAKE_S = 2.0


class SimUnit:
    """One simulated deployment as a unit: ``start`` serves it on its port after the start-up
    delay, ``stop`` ends it (requests in flight are cut, as when a process dies).

    A config that vLLM would refuse (``start_error``) starts and exits at once, leaving that
    error as its log, as vLLM does with "the estimated maximum model length is ...".
    """

    def __init__(self, config: SimConfig, port: int, start_error: str | None = None) -> None:
        self.config = config
        self.port = port
        self.start_error = start_error
        self.server: SimServer | None = None
        self.starts = 0
        self._log = ""

    async def start(self) -> None:
        if self.server is not None:
            return
        self.starts += 1
        if self.start_error is not None:
            self._log = f"ValueError: {self.start_error}"
            return
        self.server = SimServer(self.config, host="127.0.0.1", port=self.port)
        await self.server.start()

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def running(self) -> bool:
        return self.server is not None

    async def failure_lines(self) -> str:
        return self._log

    def describe(self, deployment: str) -> LocalBackend:
        c = self.config
        url = f"http://127.0.0.1:{self.port}"
        return LocalBackend(
            deployment,
            url,
            self.port,
            c.model,
            c.max_model_len,
            c.max_num_seqs,
            c.kv_cache_tokens,
            "sim on demand",
        )


def sim_units(
    fleet: Fleet,
    ports: dict[str, int],
    *,
    speed: float = 1.0,
    startup_s: float | None = None,
    wake_s: float | None = None,
) -> dict[str, SimUnit]:
    """A :class:`SimUnit` for each on-demand deployment; delays default to a real start's,
    divided by ``speed``."""
    out = {}
    for name, dep in fleet.deployments.items():
        if not dep.on_demand:
            continue
        error = None
        try:
            config = sim_config_for(fleet, name, speed=speed)
        except ValueError as exc:  # the planner's KV cache cannot hold max_model_len
            config, error = None, str(exc)
        if config is None:
            config = SimConfig(model=dep.public_name(name), max_model_len=16, max_num_seqs=1)
        config = replace(
            config,
            startup_s=STARTUP_S / speed if startup_s is None else startup_s,
            sleep_mode=dep.swap == "sleep",
            wake_s=WAKE_S / speed if wake_s is None else wake_s,
        )
        out[name] = SimUnit(config, ports[name], start_error=error)
    return out
