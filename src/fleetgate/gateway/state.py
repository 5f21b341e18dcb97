"""The gateway's live state: current configuration, slots and queues, limiter, upstream client.

Reloading swaps the configuration and resizes the slot pools in place; requests in flight hold
their own references and finish undisturbed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TextIO

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Fleet
from fleetgate.gateway.accesslog import AccessLog
from fleetgate.gateway.accounts import Accounts
from fleetgate.gateway.admission import Admission
from fleetgate.gateway.body import BodyBudget
from fleetgate.gateway.config import GatewayConfig
from fleetgate.gateway.errors import bad_gateway, shutting_down
from fleetgate.gateway.metrics import GatewayMetrics
from fleetgate.gateway.ratelimit import Quota, RateLimiter, make_rate_limiter
from fleetgate.gateway.readiness import Readiness
from fleetgate.gateway.snapshot import Monitor
from fleetgate.gateway.upstream import Upstream

log = logging.getLogger("fleetgate.gateway")

# After the drain deadline, how long the requests told to end get to write their last bytes.
_END_GRACE_S = 2.0

if TYPE_CHECKING:  # an Exchange holds the state; the state only tracks it
    from fleetgate.gateway.exchange import Exchange

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
        self.upstream.on_probed_down = self._end_requests_on
        self.limiter: RateLimiter = self._make_limiter(config.redis_url)
        self._background: set[asyncio.Task[None]] = set()
        self.exchanges: set[Exchange] = set()  # completions holding a slot, for the drain
        self.active = 0  # model-endpoint requests in progress
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.bodies = BodyBudget(config.max_buffered_bytes)
        self.accounts = Accounts(config)
        self._reload_lock = asyncio.Lock()
        self._apply(config)

    def _end_requests_on(self, name: str) -> None:
        """A deployment its health checks took out takes its requests in progress with it:
        they get 502 now instead of waiting out request_timeout_s on a backend that is gone."""
        for exchange in [e for e in self.exchanges if e.pool.name == name]:
            exchange.stop(
                bad_gateway(
                    f"deployment {name!r} failed its health checks while this request ran on it"
                )
            )

    def _apply(self, config: GatewayConfig) -> None:
        old = self.config.deployments  # the same as config's on the first call
        gone = {d.url: n for n, d in old.items() if n not in config.deployments}
        # a deployment renamed on the same backend URL keeps its slots in use and its queue
        renamed = {
            n: gone[d.url] for n, d in config.deployments.items() if n not in old and d.url in gone
        }
        self.admission.configure(
            {n: d.concurrency for n, d in config.deployments.items()},
            config.health.interval_s,
            frozenset(n for n, d in config.deployments.items() if d.on_demand),
            renamed=renamed,
        )
        self.upstream.configure(config)
        self.bodies.cap = config.max_buffered_bytes
        self.accounts.configure(config)
        self.config = config

    async def start(self) -> None:
        if self.accounts.open:
            log.warning(
                "NO API KEY CONFIGURED: the gateway is OPEN to anyone who can reach its port. "
                "Add gateway.api_keys to the fleet file."
            )
        await self.upstream.start()
        self.monitor.start()
        await self.accounts.start()
        if self.readiness is not None:
            self.readiness.attach(self.admission)
            await self.readiness.start()

    def _make_limiter(self, redis_url: str | None) -> RateLimiter:
        return make_rate_limiter(redis_url, self.metrics.ratelimit_store_failures.inc)

    def settle_later(self, quota: Quota, reserved: int, used: int) -> None:
        """Settle TPM after the answer went out: a slow limiter store must not delay it."""
        if quota.tpm is None or reserved == used:
            return
        self.run_later(self.limiter.settle(quota, reserved, used))

    def run_later(self, work: Coroutine[Any, Any, None]) -> None:
        """Book-keeping after an answer went out (settling TPM and budgets); ``close`` waits
        for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_started(self) -> None:
        self.active += 1
        self._idle.clear()

    def request_ended(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests (503) and give those in progress up to ``timeout_s`` to finish;
        then queued ones get 503 and running ones end (streams with an error event)."""
        self.draining = True
        if await self._wait_idle(timeout_s):
            return
        log.warning(
            "drain deadline (%g s) passed with %d requests in progress: ending them",
            timeout_s,
            self.active,
        )
        await self.end_all()

    async def end_all(self) -> None:
        """Answer every queued request 503, end every forwarded one (a 503, or an error event
        in its stream), and wait a moment for those answers to go out."""
        self.draining = True
        self.admission.fail_waiting(shutting_down)
        for exchange in list(self.exchanges):
            exchange.stop(shutting_down())
        await self._wait_idle(_END_GRACE_S)

    async def _wait_idle(self, timeout_s: float) -> bool:
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return not self.active

    async def close(self) -> None:
        if self.readiness is not None:
            await self.readiness.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.monitor.close()
        await self.upstream.close()
        await self.limiter.close()
        await self.accounts.close()
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
            if (config.listen, config.port, config.header_timeout_s) != (
                old.listen,
                old.port,
                old.header_timeout_s,
            ):
                log.warning(
                    "gateway listen address or header timeout changed: takes effect on restart"
                )
            if config.redis_url != old.redis_url:
                old_limiter, self.limiter = self.limiter, self._make_limiter(config.redis_url)
                await old_limiter.close()
            self._apply(config)
            log.warning(
                "configuration reloaded: %d public models, %d deployments",
                len(config.models),
                len(config.deployments),
            )
            asyncio.get_running_loop().create_task(self.upstream.probe_all())
            return config
