"""What each backend's own ``/metrics`` says: KV cache usage, preemptions, its queue, tokens.

vLLM renamed its metrics over time (``vllm:gpu_cache_usage_perc`` became
``vllm:kv_cache_usage_perc``); every figure here is read under each name it has had, so a
fleet that mixes versions shows the same columns.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from fleetgate.gateway.config import DeploymentConfig
from fleetgate.gateway.http import HttpClient, UpstreamError

# each figure: the sample names it has had, newest first
NAMES: dict[str, tuple[str, ...]] = {
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}
_COUNTERS = ("preemptions", "prompt_tokens", "generation_tokens")


_WANTED = frozenset(name for names in NAMES.values() for name in names)


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """The figures of :data:`NAMES` found in a Prometheus text page, summed over engines
    (KV usage: the highest engine's).

    Only the few sample lines wanted are parsed (a vLLM page is mostly histogram buckets), so
    reading 20 backends costs the gateway's event loop little.
    """
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in _WANTED:
            continue
        fields = rest.split()
        if not fields:
            raise ValueError(f"no value on the line {line[:120]!r}")
        found.setdefault(name, []).append(float(fields[0]))
    figures: dict[str, float] = {}
    for figure, names in NAMES.items():
        for name in names:
            if name in found:
                values = found[name]
                figures[figure] = max(values) if figure == "kv_usage" else sum(values)
                break
    return figures


@dataclass
class BackendView:
    """One backend's latest figures, and counter samples for rates over the window."""

    figures: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    scraped_at: float | None = None
    history: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kv_usage": self.figures.get("kv_usage"),
            "running": self.figures.get("running"),
            "waiting": self.figures.get("waiting"),
            "preemptions": self.figures.get("preemptions"),
            "error": self.error,
        }
        rates: dict[str, float | None] = {f: None for f in _COUNTERS}
        if len(self.history) >= 2:
            (t0, first), (t1, last) = self.history[0], self.history[-1]
            for f in _COUNTERS:
                if f in first and f in last and t1 > t0:
                    # a restarted backend starts its counters over: count from zero then
                    grown = last[f] - first[f]
                    rates[f] = (grown if grown >= 0 else last[f]) / (t1 - t0)
        out["prompt_tokens_per_s"] = rates["prompt_tokens"]
        out["generation_tokens_per_s"] = rates["generation_tokens"]
        out["preemptions_per_s"] = rates["preemptions"]
        return out


class BackendMetrics:
    """Scrapes the backends when a view asks, at most every ``min_interval_s``."""

    def __init__(self, window_s: float, min_interval_s: float = 2.0) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.views: dict[str, BackendView] = {}
        self._last = -1e9
        self._lock = asyncio.Lock()

    async def refresh(
        self, client: HttpClient, deployments: dict[str, DeploymentConfig], timeout_s: float
    ) -> None:
        async with self._lock:
            now = monotonic()
            if now - self._last < self.min_interval_s:
                return
            self._last = now
            for gone in [n for n in self.views if n not in deployments]:
                del self.views[gone]
            deps = list(deployments.values())
            results = await asyncio.gather(*(self._scrape(client, d, timeout_s) for d in deps))
            for dep, (figures, error) in zip(deps, results, strict=True):
                view = self.views.setdefault(dep.name, BackendView())
                view.error = error
                if error is not None:
                    continue
                view.figures, view.scraped_at = figures, now
                view.history.append((now, {f: figures[f] for f in _COUNTERS if f in figures}))
                while len(view.history) > 2 and view.history[1][0] <= now - self.window_s:
                    view.history.popleft()

    @staticmethod
    async def _scrape(
        client: HttpClient, dep: DeploymentConfig, timeout_s: float
    ) -> tuple[dict[str, float], str | None]:
        try:
            async with asyncio.timeout(timeout_s):
                resp = await client.request("GET", dep.url, "/metrics")
                body = await resp.read()
        except (UpstreamError, TimeoutError, OSError) as exc:
            return {}, f"/metrics unreachable: {exc.__class__.__name__}"
        if resp.status != 200:
            return {}, f"/metrics answered {resp.status}"
        try:
            return parse_vllm_metrics(body.decode("utf-8", "replace")), None
        except ValueError as exc:
            return {}, f"/metrics is not Prometheus text: {exc}"
