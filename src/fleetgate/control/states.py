"""A deployment's lifecycle states as the control layer tracks them."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where an on-demand deployment is; always-on ones are ``ready`` (the gateway's health
    checks say whether they really answer)."""

    OFF = "off"
    WAKING_HOST = "waking_host"
    STARTING = "starting"
    WAKING = "waking"  # from vLLM's sleep mode
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    SLEEPING = "sleeping"
    FAILED = "failed"


# States in which the deployment holds GPU memory (fully, or a sleeping residue).
ON_GPU = frozenset({State.STARTING, State.WAKING, State.READY, State.DRAINING, State.STOPPING})
