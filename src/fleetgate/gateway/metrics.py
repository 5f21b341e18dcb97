"""Prometheus metrics. Counters and histograms are updated per request; gauges (queue depth,
in-flight, health) are read from the admission state when scraped, costing nothing per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetgate.gateway.admission import Admission

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _AdmissionCollector(Collector):
    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "fleetgate_queue_depth", "Requests waiting for a slot", labels=["lane"]
        )
        for lane, n in self._admission.queue_depths().items():
            depth.add_metric([lane], n)
        in_flight = GaugeMetricFamily(
            "fleetgate_in_flight", "Requests holding a deployment slot", labels=["deployment"]
        )
        capacity = GaugeMetricFamily(
            "fleetgate_slots", "Concurrency slots of a deployment", labels=["deployment"]
        )
        healthy = GaugeMetricFamily(
            "fleetgate_deployment_healthy",
            "1 if the deployment passes its checks",
            labels=["deployment"],
        )
        for name, pool in self._admission.pools.items():
            in_flight.add_metric([name], pool.in_use)
            capacity.add_metric([name], pool.capacity)
            healthy.add_metric([name], 1 if pool.healthy else 0)
        yield from (depth, in_flight, capacity, healthy)


class _Children:
    """``metric.labels(...)`` costs a lock and a dict build per call; look each child up once."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    """The gateway's own registry, so several gateways (tests) never share counters."""

    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fleetgate_requests",
            "Requests by public model, endpoint (chat, completions, responses, tokenize), "
            "status and refusal reason",
            ["model", "endpoint", "status", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "fleetgate_queue_wait_seconds",
            "Time spent queued for a slot, by how the wait ended: admitted, timed_out (429) "
            "or left (the client went away)",
            ["lane", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "fleetgate_upstream_latency_seconds",
            "Upstream request time, to the last byte",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "fleetgate_time_to_first_token_seconds",
            "Upstream time to the first streamed byte",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "fleetgate_tokens",
            "Tokens in (prompt) and out (completion)",
            ["lane", "direction"],
            registry=r,
        )
        self.retries = Counter(
            "fleetgate_upstream_retries",
            "Upstream attempts beyond the first",
            ["deployment"],
            registry=r,
        )
        self.malformed = Counter(
            "fleetgate_malformed_requests",
            "Requests refused before routing because they are not valid HTTP, by error kind",
            ["kind"],
            registry=r,
        )
        self.connections_refused = Counter(
            "fleetgate_connections_refused",
            "Connections answered 503 and closed because max_connections were open",
            registry=r,
        )
        self.ratelimit_store_failures = Counter(
            "fleetgate_ratelimit_store_failures",
            "Calls to the shared rate-limit store (Redis) that failed or timed out; Redis is "
            "then skipped for a while and limits are per process",
            registry=r,
        )
        r.register(_AdmissionCollector(admission))
        for name in (
            "requests",
            "queue_wait",
            "upstream_latency",
            "ttft",
            "tokens",
            "retries",
            "malformed",
        ):
            setattr(self, name, _Children(getattr(self, name)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
