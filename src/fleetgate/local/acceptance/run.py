"""Every criterion in order, against a gateway at a URL or a fleet brought up here."""

from __future__ import annotations

import contextlib

from fleetgate.fleetfile import Fleet
from fleetgate.local.acceptance.burst import burst_criterion
from fleetgate.local.acceptance.context import context_criterion
from fleetgate.local.acceptance.overlimit import over_limit_criterion
from fleetgate.local.acceptance.report import AcceptanceReport, Step
from fleetgate.local.acceptance.rollback import rollback_criterion
from fleetgate.local.up import local_fleet
from fleetgate.probes import target_from_fleet


async def run_acceptance(
    fleet: Fleet,
    *,
    url: str | None = None,
    api_key: str | None = None,
    speed: float = 10.0,
    rollback: bool = True,
    step: Step | None = None,
) -> AcceptanceReport:
    """Every criterion; against ``url`` when given, else against a fleet brought up here."""
    say = step or (lambda _text: None)
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            say("bringing the fleet up locally (simulated backends)")
            running = await stack.enter_async_context(
                local_fleet(fleet, gateway_port=0, speed=speed)
            )
            target = target_from_fleet(
                running.fleet, url=running.gateway_url, api_key=running.api_key
            )
            limits_fleet = running.fleet
        else:
            target = target_from_fleet(fleet, url=url, api_key=api_key)
            limits_fleet = fleet
        report = AcceptanceReport(target.url)
        say("1: context smoke test")
        report.criteria.append(await context_criterion(target))
        say("2: burst")
        report.criteria.append(await burst_criterion(target, limits_fleet))
        say("3: over-limit requests")
        report.criteria.append(await over_limit_criterion(target, limits_fleet))
    if rollback:
        say("4: deploy, broken change, rollback")
        report.criteria.append(await rollback_criterion(fleet, say, speed))
    return report
