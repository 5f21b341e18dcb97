"""The narrow interface through which the gateway asks for an on-demand deployment.

The gateway knows nothing of hosts, units or GPUs: it asks "make deployment D ready by this
deadline" and hears back either nothing (it serves now) or a refusal that says why. The control
layer implements it (``fleetgate.control.Controller``); ``fleetgate serve`` connects the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Refusal(Protocol):
    """Why a deployment could not be made ready: the backend's own error lines where its start
    failed, and when to try again."""

    message: str
    retry_after_s: float


class Traffic(Protocol):
    """What the gateway tells the controller (the admission state implements it)."""

    def in_flight(self, deployment: str) -> int: ...

    def waiting(self, deployment: str) -> int: ...

    def oldest_waiting(self, deployment: str) -> float | None: ...

    def admit(self, deployment: str, on: bool) -> None: ...


class Readiness(Protocol):
    """Brings on-demand deployments up; the gateway holds requests while it does. The gateway
    attaches its traffic, then starts it, and closes it when the gateway stops."""

    def attach(self, traffic: Traffic) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def manages(self, deployment: str) -> bool: ...

    def refused(self, deployment: str) -> Refusal | None:
        """The refusal right now, without waiting (a start failed moments ago)."""

    async def ensure_ready(self, deployment: str, deadline: float) -> Refusal | None:
        """None once it serves; a refusal when it cannot by ``deadline`` (monotonic)."""

    def status(self) -> Mapping[str, Mapping[str, object]]:
        """Each deployment's lifecycle state, for ``/health/ready``."""

    def metrics_text(self) -> bytes:
        """Its Prometheus metrics, appended to the gateway's."""
