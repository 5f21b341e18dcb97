"""On-demand deployments behind the real gateway: the control layer starts, stops, drains and
swaps simulated deployments (units with a start-up delay) while requests wait in the queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

import aiohttp
import pytest

from fleetgate.fleetfile import parse_fleet
from fleetgate.local import local_fleet
from fleetgate.local.up import RunningFleet

FLEET = """
hosts:
  box: {{gpus: [{{memory_gib: {gib}, arch: ampere}}], default: {default}}}
  gw: {{}}
deployments:
  a: {{host: box, port: 8001, model: Qwen/Qwen2.5-0.5B, max_model_len: 2048, max_num_seqs: 4,
      on_demand: true, gpu_memory_utilization: {util}}}
  b: {{host: box, port: 8002, model: Qwen/Qwen2.5-0.5B, max_model_len: {b_len}, max_num_seqs: 4,
      on_demand: true, gpu_memory_utilization: {util}}}
gateway:
  host: gw
  defaults: {{queue_depth: 64, queue_wait_s: 30, load_wait_s: 30}}
  routes:
    a: {{deployments: [a]}}
    b: {{deployments: [b]}}
"""


def fleet_text(gib: float = 24, default: str = "null", b_len: int = 2048, util: float = 0.9) -> str:
    return FLEET.format(gib=gib, default=default, b_len=b_len, util=util)


async def until_state(http: aiohttp.ClientSession, url: str, name: str, state: str) -> None:
    """Wait for a lifecycle state (bounded: a hang fails the test instead of blocking it)."""
    async with asyncio.timeout(60):
        while (await health(http, url))["deployments"][name]["state"] != state:
            await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat(model: str, max_tokens: int = 8, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def ask(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return resp.status, (data, dict(resp.headers))


async def health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/health/ready") as resp:
        return await resp.json()  # type: ignore[no-any-return]


def starts(running: RunningFleet) -> dict[str, int]:
    assert running.controller is not None
    return {n: d.swaps for n, d in running.controller.deps.items()}


async def test_models_and_health_answer_while_everything_is_off(
    http: aiohttp.ClientSession,
) -> None:
    fleet = parse_fleet(fleet_text()).fleet
    async with local_fleet(fleet, gateway_port=0, speed=50, startup_s=0.3) as running:
        async with http.get(running.gateway_url + "/v1/models") as resp:
            assert resp.status == 200
            assert {m["id"] for m in (await resp.json())["data"]} == {"a", "b"}
        body = await health(http, running.gateway_url)
        assert body["ready"] is True
        assert body["routes"]["a"] == {"up": [], "on_demand": ["a"], "down": []}
        assert body["deployments"]["a"]["state"] == "off"


async def test_b_while_a_streams_drains_a_then_swaps(http: aiohttp.ClientSession) -> None:
    fleet = parse_fleet(fleet_text()).fleet
    async with local_fleet(fleet, gateway_port=0, speed=50, startup_s=0.3) as running:
        url = running.gateway_url
        status, _ = await ask(http, url, chat("a"))
        assert status == 200  # a was started for it
        # a long stream on a, then a request for b
        stream = await http.post(url + "/v1/chat/completions", json=chat("a", 200, stream=True))
        assert stream.status == 200
        first = await stream.content.readline()
        assert first.startswith(b"data: ")
        b_answer = asyncio.ensure_future(ask(http, url, chat("b")))
        await until_state(http, url, "a", "draining")
        status, _ = await ask(http, url, chat("a"))  # nothing new for a while it drains
        rest = (await stream.read()).decode()
        stream.release()
        # it ran to its end (not cut by the swap)
        compact = rest.replace(" ", "")
        assert '"finish_reason":"stop"' in compact or '"finish_reason":"length"' in compact
        assert "data: [DONE]" in rest and '"error"' not in rest
        status_b, _ = await b_answer
        assert status_b == 200
        assert status == 200  # that request for a waited, then a came back for it
        state = (await health(http, url))["deployments"]
        assert state["a"]["state"] == "ready" and state["b"]["state"] == "off"
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        assert 'fleetgate_deployment_transitions_total{deployment="a",state="draining"}' in text
        assert 'fleetgate_deployment_state{deployment="a",state="ready"} 1.0' in text


async def test_a_start_that_fails_is_503_with_the_backends_error_and_a_comes_back(
    http: aiohttp.ClientSession,
) -> None:
    # at 0.7 of a 2.6 GiB GPU the planner's KV cache holds 2144 tokens of this model (after its
    # cold-compile scratch): a's 2048 fit, b's 4096 do not (and one of them at a time fits the
    # GPU beside the CUDA context)
    fleet = parse_fleet(fleet_text(gib=2.6, default="a", b_len=4096, util=0.7)).fleet
    async with local_fleet(fleet, gateway_port=0, speed=50, startup_s=0.3) as running:
        url = running.gateway_url
        await until_state(http, url, "a", "ready")  # the host's default comes up by itself
        status, (body, headers) = await ask(http, url, chat("b"))
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        message = body["error"]["message"]
        assert "deployment 'b' could not be brought up" in message
        assert "estimated maximum model length is" in message
        await until_state(http, url, "a", "ready")  # back to the default after the failure
        status, _ = await ask(http, url, chat("a"))
        assert status == 200
        status, (body, _) = await ask(http, url, chat("b"))  # refused at once for a while
        assert status == 503 and "failed to start" in body["error"]["message"]


@pytest.mark.parametrize(("policy", "most_starts"), [("swap_aware", 2), ("fifo", None)])
async def test_burst_across_two_models_on_one_gpu(
    http: aiohttp.ClientSession, policy: str, most_starts: int | None
) -> None:
    fleet = parse_fleet(fleet_text()).fleet
    async with local_fleet(
        fleet, gateway_port=0, speed=50, startup_s=0.3, policy=policy
    ) as running:
        url = running.gateway_url
        began = monotonic()
        bodies = [chat("a" if i % 2 else "b", max_tokens=16) for i in range(40)]
        results = await asyncio.gather(*(ask(http, url, b) for b in bodies))
        took = monotonic() - began
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 429, 503}
        for status, (body, headers) in results:
            if status != 200:
                assert body["error"]["message"] and "Retry-After" in headers
        assert statuses.count(200) == 40  # ample deadlines: every one is served
        assert took < 30 + 30  # none waited past its load wait plus its queue wait
        assert running.controller is not None
        admission: Any = running.controller.traffic  # the gateway's admission state
        assert all(p.in_use == 0 for p in admission.pools.values())
        assert all(n == 0 for n in admission.queue_depths().values())
        assert admission.waiting("a") == admission.waiting("b") == 0
        total = sum(starts(running).values())
        if most_starts is not None:
            assert total <= most_starts  # one start per model: a's run, then b's
        else:
            assert total >= 2


@pytest.mark.parametrize(("routing", "expected"), [("ordered", (2, 0)), (None, (1, 1))])
async def test_ordered_routing_fills_the_first_deployment_first(
    http: aiohttp.ClientSession, routing: str | None, expected: tuple[int, int]
) -> None:
    extra = f", routing: {routing}" if routing else ""
    fleet = parse_fleet(
        "hosts:\n  box: {gpus: [{memory_gib: 24, arch: ampere}]}\n"
        "deployments:\n"
        "  p: {host: box, port: 8001, model: Qwen/Qwen2.5-0.5B, max_model_len: 2048,"
        " max_num_seqs: 2, gpu_memory_utilization: 0.4}\n"
        "  q: {host: box, port: 8002, model: Qwen/Qwen2.5-0.5B, max_model_len: 2048,"
        " max_num_seqs: 2, gpu_memory_utilization: 0.4}\n"
        "gateway:\n  host: box\n  port: 4000\n"
        f"  routes:\n    r: {{deployments: [p, q]{extra}}}\n"
    ).fleet
    async with local_fleet(fleet, gateway_port=0, speed=0.2) as running:
        url = running.gateway_url
        streams = [
            await http.post(url + "/v1/chat/completions", json=chat("r", 200, stream=True))
            for _ in range(2)
        ]
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        for s in streams:
            s.close()
    flying = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fleetgate_in_flight{")
    }
    assert (flying["p"], flying["q"]) == expected


async def test_a_deployment_that_died_while_ready_is_started_again(
    http: aiohttp.ClientSession,
) -> None:
    fleet = parse_fleet(fleet_text()).fleet
    async with local_fleet(fleet, gateway_port=0, speed=50, startup_s=0.3) as running:
        url = running.gateway_url
        status, _ = await ask(http, url, chat("a"))
        assert status == 200
        assert running.controller is not None
        unit: Any = running.controller.units["a"]
        await unit.stop()  # the process dies behind the controller's back
        status, (body, _) = await ask(http, url, chat("a"))
        # the gateway's retries fail, it marks a down; the next request brings it back
        assert status in (200, 502), body
        status, _ = await ask(http, url, chat("a"))
        assert status == 200
        assert unit.starts == 2
