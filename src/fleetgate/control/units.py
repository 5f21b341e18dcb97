"""How the control layer starts and stops a deployment's server: the rendered unit of the
release in service on its host, through the deploy layer's transport and host operations.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from fleetgate.deploy import HostError, HostOps, host_ops, transport_for
from fleetgate.deploy.releases import LOG_SCAN_LINES, error_lines, log_excerpt
from fleetgate.deploy.transport import Transport, TransportError
from fleetgate.fleetfile import Fleet, Host
from fleetgate.render import Manifest
from fleetgate.render.scripts import workdir_of

SUSPEND_COMMANDS = {
    "linux": "systemctl suspend",
    "windows": "rundll32.exe powrprof.dll,SetSuspendState 0,1,0",
}


class Unit(Protocol):
    """One deployment's server process."""

    async def start(self) -> None:
        """Ask for a start; returns when the start command did (not when it serves)."""

    async def stop(self) -> None: ...

    async def running(self) -> bool:
        """The process is alive (it may still be loading)."""

    async def failure_lines(self) -> str:
        """Why it stopped: the error lines of its log, for a refusal's message."""


class ReleaseUnit:
    """A unit script (``start-NAME.sh`` or its systemd twin) of the host's current release."""

    def __init__(self, ops: HostOps, deployment: str) -> None:
        self.ops = ops
        self.deployment = deployment
        self._script: tuple[str, str] | None = None  # (release, script)

    def _locate(self) -> tuple[str, str]:
        state = self.ops.state()
        if state.current is None:
            raise HostError(f"no release is deployed on {self.ops.transport.name}")
        if self._script is None or self._script[0] != state.current:
            manifest = Manifest.of_release(self.ops.fetch(state.current))
            units = manifest.units if manifest else []
            unit = next((u for u in units if u.name == self.deployment), None)
            if unit is None:
                raise HostError(f"release {state.current} has no unit for {self.deployment!r}")
            self._script = (state.current, unit.script)
        return self._script

    def _action(self, action: str, *args: str) -> tuple[int, str]:
        release, script = self._locate()
        result = self.ops.unit(release, script, action, *args)
        return result.rc, result.error if result.rc else result.text

    async def start(self) -> None:
        rc, text = await asyncio.to_thread(self._action, "start")
        if rc != 0:
            raise HostError(f"starting {self.deployment} failed: {text}")

    async def stop(self) -> None:
        rc, text = await asyncio.to_thread(self._action, "stop")
        if rc != 0:
            raise HostError(f"stopping {self.deployment} failed: {text}")

    async def running(self) -> bool:
        rc, _ = await asyncio.to_thread(self._action, "status")
        return rc == 0

    async def failure_lines(self) -> str:
        try:
            _, text = await asyncio.to_thread(self._action, "logs", str(LOG_SCAN_LINES))
        except (HostError, TransportError) as exc:
            return f"(its log could not be read: {exc})"
        errors = error_lines(text)
        return "\n".join(errors) if errors else log_excerpt(self.deployment, text)


class HostPower:
    """Is a host awake, and how to suspend it: a command over its transport."""

    def __init__(self, host: Host, transport: Transport) -> None:
        self.host = host
        self.transport = transport

    async def awake(self) -> bool:
        def check() -> bool:
            try:
                return self.transport.exec("exit 0", timeout=10).rc == 0
            except TransportError:
                return False

        return await asyncio.to_thread(check)

    async def suspend(self) -> None:
        command = SUSPEND_COMMANDS[self.host.os]
        await asyncio.to_thread(self.transport.exec, command, timeout=30)


def release_units(fleet: Fleet) -> dict[str, Unit]:
    """A :class:`ReleaseUnit` for every on-demand deployment of the fleet."""
    out: dict[str, Unit] = {}
    for name, dep in fleet.deployments.items():
        if not dep.on_demand:
            continue
        host = fleet.hosts[dep.host]
        ops = host_ops(transport_for(host), host.os, workdir_of(fleet, dep.host))
        out[name] = ReleaseUnit(ops, name)
    return out


def host_powers(fleet: Fleet) -> dict[str, HostPower]:
    return {
        name: HostPower(host, transport_for(host))
        for name, host in fleet.hosts.items()
        if host.wake is not None
    }
