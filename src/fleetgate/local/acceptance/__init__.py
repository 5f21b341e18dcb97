"""The fleet owner's acceptance criteria, end to end, each one a pass or a fail.

1. Context (``context``): every route and profile accepts exactly its limits and refuses one
   token more, and each backend runs with the planned max_model_len.
2. Backpressure (``burst``): 20 clients on the burst profile of a concurrency-2 backend finish
   with at most one error.
3. Over-limit requests (``overlimit``): context, max_tokens, body size, unknown model, bad key,
   a full queue get a 4xx, never a 5xx.
4. Rollback (``rollback``): the whole fleet deployed onto one local host, a broken change fails
   its health gate and is rolled back by itself, and over HTTP the previous limits are back.

Criteria 1-3 speak HTTP to a gateway (one brought up locally, or ``url``); criterion 4 runs in
a temporary directory with the simulator standing in for vLLM behind the rendered scripts.
"""

from fleetgate.local.acceptance.burst import burst_criterion, burst_model
from fleetgate.local.acceptance.context import context_criterion
from fleetgate.local.acceptance.overlimit import over_limit_criterion
from fleetgate.local.acceptance.report import AcceptanceReport, Criterion
from fleetgate.local.acceptance.rollback import broken_change, rollback_criterion, rollback_fleet
from fleetgate.local.acceptance.run import run_acceptance

__all__ = [
    "AcceptanceReport",
    "Criterion",
    "broken_change",
    "burst_criterion",
    "burst_model",
    "context_criterion",
    "over_limit_criterion",
    "rollback_criterion",
    "rollback_fleet",
    "run_acceptance",
]
