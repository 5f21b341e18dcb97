"""The gateway's live state: current configuration, slots and queues, limiter, upstream client.

Reloading swaps the configuration and resizes the slot pools in place; requests in flight hold
their own references and finish undisturbed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TextIO

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Fleet
from fleetgate.gateway.accesslog import AccessLog
from fleetgate.gateway.admission import Admission
from fleetgate.gateway.config import GatewayConfig
from fleetgate.gateway.metrics import GatewayMetrics
from fleetgate.gateway.ratelimit import RateLimiter, make_rate_limiter
from fleetgate.gateway.readiness import Readiness
from fleetgate.gateway.snapshot import Monitor
from fleetgate.gateway.upstream import Upstream

log = logging.getLogger("fleetgate.gateway")

FleetLoader = Callable[[], Fleet]


class ReloadError(FleetgateError):
    """The new fleet file was refused; the old configuration keeps serving."""


class GatewayState:
    """A running gateway's live state: its configuration, admission queues, rate limiter,
    upstream pool and metrics (the fleet file's ``gateway:`` section is
    :class:`fleetgate.fleetfile.Gateway`)."""

    def __init__(
        self,
        config: GatewayConfig,
        loader: FleetLoader | None = None,
        access_stream: TextIO | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.config = config
        self.readiness = readiness
        self.loader = loader
        self.access_log = AccessLog(access_stream)
        self.admission = Admission()
        self.admission.readiness = readiness
        self.metrics = GatewayMetrics(self.admission)
        self.monitor = Monitor(self.metrics)
        self.upstream = Upstream(self.admission, self.admission.set_healthy)
        self.limiter: RateLimiter = make_rate_limiter(config.redis_url)
        self._reload_lock = asyncio.Lock()
        self._apply(config)

    def _apply(self, config: GatewayConfig) -> None:
        self.admission.configure(
            {n: d.concurrency for n, d in config.deployments.items()},
            config.health.interval_s,
            frozenset(n for n, d in config.deployments.items() if d.on_demand),
        )
        self.upstream.configure(config)
        self.config = config

    async def start(self) -> None:
        if self.config.open:
            log.warning(
                "NO API KEY CONFIGURED: the gateway is OPEN to anyone who can reach its port. "
                "Add gateway.api_keys to the fleet file."
            )
        await self.upstream.start()
        self.monitor.start()
        if self.readiness is not None:
            self.readiness.attach(self.admission)
            await self.readiness.start()

    async def close(self) -> None:
        if self.readiness is not None:
            await self.readiness.close()
        await self.monitor.close()
        await self.upstream.close()
        await self.limiter.close()
        self.access_log.flush()

    async def reload(self) -> GatewayConfig:
        """Re-read the fleet file through the loader; raise :class:`ReloadError` if refused."""
        if self.loader is None:
            raise ReloadError("this gateway was started without a fleet file to reload")
        async with self._reload_lock:
            try:
                fleet = await asyncio.to_thread(self.loader)
                config = GatewayConfig.from_fleet(fleet)
            except Exception as exc:
                log.error("reload refused, the old configuration keeps serving: %s", exc)
                raise ReloadError(str(exc)) from None
            old = self.config
            if (config.listen, config.port) != (old.listen, old.port):
                log.warning("gateway listen address changed: takes effect on restart")
            if config.redis_url != old.redis_url:
                old_limiter, self.limiter = self.limiter, make_rate_limiter(config.redis_url)
                await old_limiter.close()
            self._apply(config)
            log.warning(
                "configuration reloaded: %d public models, %d deployments",
                len(config.models),
                len(config.deployments),
            )
            asyncio.get_running_loop().create_task(self.upstream.probe_all())
            return config
