"""Probes: the context smoke test and the burst load test. They speak HTTP only."""

from fleetgate.probes.burst import BurstConfig, BurstReport, RequestResult, run_burst
from fleetgate.probes.http import ApiClient, Reply
from fleetgate.probes.prompts import PromptFitError, fit_prompt
from fleetgate.probes.smoke import SmokeCheck, SmokeReport, run_smoke
from fleetgate.probes.targets import (
    ModelUnderTest,
    Target,
    Unreachable,
    confirm_served,
    target_from_fleet,
    target_from_url,
)

__all__ = [
    "ApiClient",
    "BurstConfig",
    "BurstReport",
    "ModelUnderTest",
    "PromptFitError",
    "Reply",
    "RequestResult",
    "SmokeCheck",
    "SmokeReport",
    "Target",
    "Unreachable",
    "confirm_served",
    "fit_prompt",
    "run_burst",
    "run_smoke",
    "target_from_fleet",
    "target_from_url",
]
