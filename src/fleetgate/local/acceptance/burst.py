"""Criterion 2: 20 clients on the burst profile of a concurrency-2 backend finish with at most
one error."""

from __future__ import annotations

from fleetgate.fleetfile import Fleet, public_models
from fleetgate.local.acceptance.report import Criterion
from fleetgate.probes import BurstConfig, Target, run_burst


def burst_model(fleet: Fleet) -> str:
    """A profile (else a route) on the backend with the fewest slots: the owner's burst case."""
    models = [pm for pm in public_models(fleet).values() if pm.kind != "alias"]
    return min(
        models,
        key=lambda pm: (pm.kind != "profile", pm.limits.concurrency or 10**6, pm.name),
    ).name


async def burst_criterion(target: Target, fleet: Fleet, clients: int = 20) -> Criterion:
    model = burst_model(fleet)
    config = BurstConfig(
        model=model,
        concurrency=clients,
        requests=clients * 2,
        duration_s=120,
        stream=True,
        prompt_tokens=(64, 256),
        max_tokens=(16, 48),
        timeout_s=240,
    )
    report = await run_burst(target.url, config, target.api_key)
    s = report.summary()
    detail = (
        f"{clients} clients, {s['requests']} requests on {model}: {s['succeeded']} ok, "
        f"{s['failed']} failed, {s['responses_429']} answers 429 retried; "
        f"p50 e2e {s['e2e_s']['p50'] or 0:.2f} s, p99 {s['e2e_s']['p99'] or 0:.2f} s"
    )
    if s["failures_by_reason"]:
        detail += f"; failures: {s['failures_by_reason']}"
    return Criterion(2, "a burst completes with at most 1 error", report.failed <= 1, detail, s)
