"""Test support for the gateway: a fleet around simulators, and polling for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fleetgate.fleetfile import Fleet


def sim_fleet(
    deployments: dict[str, tuple[int, int | None, int]],
    routes: dict[str, dict[str, Any]],
    **gateway: Any,
) -> dict[str, Any]:
    """A fleet document: ``deployments`` maps name -> (port, max_model_len, max_num_seqs)."""
    return {
        "version": 1,
        "hosts": {"local": {"address": "127.0.0.1", "transport": "local", "gpus": ["RTX 3090"]}},
        "deployments": {
            name: {
                "host": "local",
                "port": port,
                "model": "test/tiny",
                "served_model_name": "tiny",
                "max_model_len": max_len,
                "max_num_seqs": seqs,
            }
            for name, (port, max_len, seqs) in deployments.items()
        },
        "gateway": {
            "host": "local",
            "port": 4999,
            "health": {"interval_s": 0.1, "timeout_s": 0.5, "unhealthy_after": 2},
            **gateway,
            "routes": routes,
        },
    }


def make_fleet(doc: dict[str, Any]) -> Fleet:
    return Fleet.model_validate(doc)


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``cond()`` holds; fail the test with a clear message if it never does."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
