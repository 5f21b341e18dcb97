"""One picture of the fleet as the gateway sees it: the /ui page and ``fleetgate top`` both
draw it, from ``GET /ui/state``.

Per deployment: its state, slots, latency over the last minutes, what the backend's own
/metrics say, and the plan's GPU memory split (handed in by whoever started the gateway: the
gateway knows nothing of planning). Per lane (route or profile): queue and traffic. Per API key:
today's requests, tokens and refusals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from fleetgate.gateway.backendmetrics import BackendMetrics
from fleetgate.gateway.recent import SAMPLE_S, WINDOW_S, Delta, Window, read_cumulative

if TYPE_CHECKING:
    from fleetgate.gateway.metrics import GatewayMetrics
    from fleetgate.gateway.state import GatewayState

ANONYMOUS = "(no key)"  # an open gateway, or a request refused before its key was known
_SCRAPE_TIMEOUT_S = 2.0


class KeyTally:
    """Per API key, since the gateway's local midnight: requests, tokens, refusals."""

    def __init__(self) -> None:
        self.day = ""
        self._rolls_at = 0.0
        self.counts: dict[str, list[int]] = {}  # name -> [requests, tokens in, out, refusals]

    def _roll(self, now: float) -> None:
        local = time.localtime(now)
        self.day = time.strftime("%Y-%m-%d", local)
        # the next local midnight (mktime normalises day + 1; a DST day is not 24 h long)
        self._rolls_at = time.mktime((local.tm_year, local.tm_mon, local.tm_mday + 1,
                                      0, 0, 0, 0, 0, -1))  # fmt: skip
        self.counts.clear()

    def record(self, key: str | None, status: int, tokens_in: int, tokens_out: int) -> None:
        """One finished request; a refusal is any answer of 400 or more but a client's 499."""
        now = time.time()
        if now >= self._rolls_at:
            self._roll(now)
        c = self.counts.get(key or ANONYMOUS)
        if c is None:
            c = self.counts[key or ANONYMOUS] = [0, 0, 0, 0]
        c[0] += 1
        c[1] += tokens_in
        c[2] += tokens_out
        if status >= 400 and status != 499:
            c[3] += 1

    def today(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Every configured key (idle ones too) and any other that was counted today."""
        if time.time() >= self._rolls_at:
            self._roll(time.time())
        rows = []
        for name in dict.fromkeys([*names, *self.counts]):
            req, tin, tout, refused = self.counts.get(name, (0, 0, 0, 0))
            rows.append(
                {"name": name, "requests": req, "tokens_in": tin, "tokens_out": tout,
                 "refusals": refused}
            )  # fmt: skip
        return rows


class Monitor:
    """The live views' memory: a window of the gateway's metrics, the backends' figures, the
    per-key tally, and the plan's GPU memory numbers."""

    def __init__(
        self, metrics: GatewayMetrics, window_s: float = WINDOW_S, sample_s: float = SAMPLE_S
    ) -> None:
        self.metrics = metrics
        self.window = Window(window_s)
        self.sample_s = sample_s
        self.backends = BackendMetrics(window_s)
        self.keys = KeyTally()
        # deployment -> {"gpu", "total_gib", "segments": [{"label", "gib"}]}, from the plan
        self.gpu_memory: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            self.window.add(read_cumulative(self.metrics.registry))


def deployment_state(gw: GatewayState, name: str) -> str:
    """``up`` or ``down`` from the health checks. The on-demand lifecycle's states (starting,
    sleeping, draining) are answered here, by asking it first."""
    pool = gw.admission.pools.get(name)
    return "up" if pool is not None and pool.healthy else "down"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def snapshot(gw: GatewayState) -> dict[str, Any]:
    """The whole picture as plain JSON-able data; scrapes the backends at most every 2 s."""
    config, monitor = gw.config, gw.monitor
    timeout = min(config.health.timeout_s, _SCRAPE_TIMEOUT_S)
    await monitor.backends.refresh(gw.upstream.client, config.deployments, timeout)
    delta = monitor.window.delta(read_cumulative(monitor.metrics.registry))
    lanes = [m for m in config.models.values() if m.name == m.lane]
    lanes_of: dict[str, list[str]] = {}
    for m in lanes:
        for d in m.deployments:
            lanes_of.setdefault(d, []).append(m.name)
    deployments = [
        _deployment(gw, dep.name, lanes_of.get(dep.name, []), delta)
        for dep in config.deployments.values()
    ]
    hosts: dict[str, list[str]] = {}
    for shown in deployments:
        hosts.setdefault(shown["host"], []).append(shown["name"])
    return {
        "gateway": {
            "now": time.time(),
            "up_s": round(time.time() - monitor.started, 1),
            "window_s": round(delta.seconds, 1),
            "open": gw.accounts.open,
        },
        "hosts": [{"name": h, "deployments": names} for h, names in hosts.items()],
        "deployments": deployments,
        "lanes": [_lane(gw, m.name, delta) for m in lanes],
        "keys": monitor.keys.today(gw.accounts.names()),
        "day": monitor.keys.day or time.strftime("%Y-%m-%d"),
    }


def _deployment(gw: GatewayState, name: str, lanes: list[str], delta: Delta) -> dict[str, Any]:
    dep = gw.config.deployments[name]
    pool = gw.admission.pools.get(name)
    backend = gw.monitor.backends.views.get(name)
    return {
        "name": name,
        "host": dep.host,
        "model": dep.model,
        "served_model": dep.served_model,
        "max_model_len": dep.max_model_len,
        "state": deployment_state(gw, name),
        "slots_in_use": pool.in_use if pool else 0,
        "slots": pool.capacity if pool else dep.concurrency,
        "lanes": lanes,
        "ttft_ms": _percentiles(delta, "fleetgate_time_to_first_token_seconds", name),
        "e2e_ms": _percentiles(delta, "fleetgate_upstream_latency_seconds", name),
        "backend": backend.as_dict() if backend else None,
        "gpu_memory": gw.monitor.gpu_memory.get(name),
    }


def _percentiles(delta: Delta, histogram: str, deployment: str) -> dict[str, float | None]:
    return {
        "p50": _ms(delta.quantile(histogram, 0.5, deployment=deployment)),
        "p95": _ms(delta.quantile(histogram, 0.95, deployment=deployment)),
    }


def _lane(gw: GatewayState, lane: str, delta: Delta) -> dict[str, Any]:
    model = gw.config.models[lane]
    done = delta.total("fleetgate_requests_total", model=lane)
    ok = delta.total("fleetgate_requests_total", model=lane, status="200")
    left = delta.total("fleetgate_requests_total", model=lane, status="499")  # client went away
    tokens_in = delta.total("fleetgate_tokens_total", lane=lane, direction="in")
    tokens_out = delta.total("fleetgate_tokens_total", lane=lane, direction="out")
    wait = "fleetgate_queue_wait_seconds"
    return {
        "name": lane,
        "route": model.route,
        "deployments": list(model.deployments),
        "queued": gw.admission.queued(lane),
        "queue_depth": model.queue_depth,
        "requests": int(done),
        "ok": int(ok),
        "refused": int(done - ok - left),
        "tokens_in_per_s": round(tokens_in / delta.seconds, 2),
        "tokens_out_per_s": round(tokens_out / delta.seconds, 2),
        "queue_wait_ms": {
            "p50": _ms(delta.quantile(wait, 0.5, lane=lane, outcome="admitted")),
            "p95": _ms(delta.quantile(wait, 0.95, lane=lane, outcome="admitted")),
        },
    }
