"""The simulator's start-up delay and vLLM's sleep mode.

The sleep routes follow vLLM 0.32.0's source (``vllm/entrypoints/serve/dev/sleep/api_router.py``
and ``v1/engine/core.py``), not a live server: vLLM's CPU build has no sleep mode. See the notes
in test_conformance.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fleetgate.sim import SimConfig, SimServer

FAST = {"prefill_tps": 1e6, "decode_tps": 200.0, "reply_tokens": None}
CHAT = "/v1/chat/completions"


def cfg(**kw: Any) -> SimConfig:
    base: dict[str, Any] = {"model": "tiny", "max_model_len": 2048, "max_num_seqs": 4, **FAST}
    return SimConfig(**{**base, **kw})


def chat(max_tokens: int = 5) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_the_port_is_closed_while_the_model_loads(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(startup_s=0.5)) as sim:
        assert not sim.listening
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(sim.url + "/health")
        for _ in range(200):
            if sim.listening:
                break
            await asyncio.sleep(0.05)
        async with http.get(sim.url + "/health") as resp:
            assert resp.status == 200


async def test_without_sleep_mode_the_routes_do_not_exist(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim, http.post(sim.url + "/sleep") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}


async def test_sleep_queues_requests_until_wake_up(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(sleep_mode=True, wake_s=0.2)) as sim:
        async with http.get(sim.url + "/is_sleeping") as resp:
            assert await resp.json() == {"is_sleeping": False}
        async with http.post(sim.url + "/sleep?level=1") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "sleeping", "level": 1})
        async with http.get(sim.url + "/is_sleeping") as resp:
            assert await resp.json() == {"is_sleeping": True}
        async with http.get(sim.url + "/health") as resp:
            assert resp.status == 200  # vLLM's /health checks the engine, not sleep
        pending = asyncio.ensure_future(http.post(sim.url + CHAT, json=chat()))
        await asyncio.sleep(0.2)
        assert not pending.done()  # accepted, queued, not scheduled
        assert sim.stats.waiting == 1
        async with http.post(sim.url + "/wake_up") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "awake", "tags": None})
        resp = await pending
        body = await resp.json()
        resp.release()
        assert resp.status == 200 and body["choices"][0]["finish_reason"] == "length"


async def test_sleep_aborts_what_runs_by_default(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(sleep_mode=True)) as sim:
        running = asyncio.ensure_future(http.post(sim.url + CHAT, json=chat(max_tokens=1000)))
        while sim.stats.running == 0:
            await asyncio.sleep(0.01)
        async with http.post(sim.url + "/sleep") as resp:
            assert await resp.json() == {"status": "sleeping", "level": 1}
        resp = await running
        body = await resp.json()
        resp.release()
        assert resp.status == 200 and body["choices"][0]["finish_reason"] == "abort"


async def test_sleep_wait_lets_running_requests_finish(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(sleep_mode=True)) as sim:
        running = asyncio.ensure_future(http.post(sim.url + CHAT, json=chat(max_tokens=20)))
        while sim.stats.running == 0:
            await asyncio.sleep(0.01)
        async with http.post(sim.url + "/sleep?level=1&mode=wait") as resp:
            assert resp.status == 200
        assert sim.stats.running == 0  # the request ended before the sleep was answered
        async with asyncio.timeout(10):
            resp = await running
        body = await resp.json()
        resp.release()
        assert body["choices"][0]["finish_reason"] == "length"


async def test_partial_wake_stays_asleep(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(sleep_mode=True)) as sim:
        async with http.post(sim.url + "/sleep?level=1") as resp:
            assert resp.status == 200
        async with http.post(sim.url + "/wake_up?tags=weights") as resp:
            assert await resp.json() == {"status": "sleeping", "tags": ["weights"]}
        async with http.post(sim.url + "/wake_up?tags=kv_cache") as resp:
            assert await resp.json() == {"status": "awake", "tags": ["kv_cache"]}
        async with http.get(sim.url + "/is_sleeping") as resp:
            assert await resp.json() == {"is_sleeping": False}


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("level=3", "Input should be less than or equal to 2"),
        ("level=x", "Input should be a valid integer"),
        ("mode=later", "Input should be 'abort', 'wait' or 'keep'"),
    ],
)
async def test_bad_sleep_queries_are_400(
    http: aiohttp.ClientSession, query: str, said: str
) -> None:
    async with (
        SimServer(cfg(sleep_mode=True)) as sim,
        http.post(f"{sim.url}/sleep?{query}") as resp,
    ):
        body = await resp.json()
        assert resp.status == 400
        assert said in body["error"]["message"] and body["error"]["type"] == "Bad Request"
