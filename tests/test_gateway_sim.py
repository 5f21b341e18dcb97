"""The gateway against the simulator: DESIGN.md's error table row by row, queueing, disconnects,
retries, health, hot reload, streaming, and the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from tests.support.gateway import eventually, make_fleet, sim_fleet

from fleetgate.fleetfile import load_fleet, require_valid
from fleetgate.gateway import RunningGateway, serve
from fleetgate.sim import SimConfig, SimServer

KEY = "sk-test-owner-0001"
LIMITED_KEY = "sk-test-other-0002"
ADMIN = "admin-key-0003"
ROUTE = "tiny-route"


def sim_config(**kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(
        model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=2000.0, reply_tokens=8
    )
    base.update(kw)
    return SimConfig(**base)


def chat(content: str = "hello", **kw: Any) -> dict[str, Any]:
    return {"model": ROUTE, "messages": [{"role": "user", "content": content}], **kw}


def words(n: int) -> str:
    """A user message of exactly ``n`` simulator tokens (each word is one token)."""
    return "hello" + " hello" * (n - 1)


# A one-message chat costs content + 4 tokens on the simulator:
# <s> <|user|> ... <|end|> <|assistant|>
TEMPLATE = 4


@asynccontextmanager
async def gateway(doc: dict[str, Any], **kw: Any) -> AsyncIterator[RunningGateway]:
    async with serve(make_fleet(doc), **kw) as gw:
        yield gw


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(sim_config()) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        yield session


def keyed(route: dict[str, Any] | None = None, **gateway_kw: Any) -> dict[str, Any]:
    return {
        "api_keys": [
            {"name": "owner", "key": KEY},
            {"name": "other", "key": LIMITED_KEY, "routes": ["elsewhere"]},
        ],
        **gateway_kw,
    }


def one_route(sim: SimServer, max_len: int | None = 512, **limits: Any) -> dict[str, Any]:
    base = {"deployments": ["d1"], "max_input_tokens": 100, "max_output_tokens": 50}
    base.update(limits)
    routes = {ROUTE: base, "elsewhere": {"deployments": ["d1"]}}
    return {"deployments": {"d1": (sim.port, max_len, 4)}, "routes": routes}


def doc_for(sim: SimServer, gateway_kw: dict[str, Any] | None = None, **limits: Any):
    parts = one_route(sim, **limits)
    return sim_fleet(parts["deployments"], parts["routes"], **keyed(**(gateway_kw or {})))


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url + "/v1/chat/completions", data=data, **kw) as resp:
        text = await resp.read()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"raw": text.decode(errors="replace")}
        return resp.status, parsed, resp.headers


def assert_error(status: int, body: dict[str, Any], expected: int, *fragments: str) -> None:
    assert status == expected, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in err["message"], err["message"]


# -- the error table, row by row ----------------------------------------------------------------


async def test_a_plain_request_passes(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        status, body, _ = await post(client, gw.url, chat(max_tokens=5))
        assert status == 200 and body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "tiny-route"}',
        b'{"model": "tiny-route", "messages": [{"role": "user", "content": "x"}], "n": "2"}',
    ],
)
async def test_malformed_bodies_are_400(sim, client, raw: bytes) -> None:
    async with gateway(doc_for(sim)) as gw:
        status, body, _ = await post(client, gw.url, raw)
        assert_error(status, body, 400)


async def test_prompt_at_the_input_limit_passes_and_one_more_token_is_refused(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        status, body, _ = await post(client, gw.url, chat(words(100 - TEMPLATE), max_tokens=5))
        assert status == 200, body
        assert body["usage"]["prompt_tokens"] == 100
        status, body, _ = await post(client, gw.url, chat(words(101 - TEMPLATE), max_tokens=5))
        assert_error(status, body, 400, "101", "100")
        assert body["error"]["code"] == "context_length_exceeded"
        assert sim.stats.finished == 1  # the refused one never reached the backend


async def test_prompt_plus_max_tokens_over_the_context_is_refused(sim, client) -> None:
    async with gateway(doc_for(sim, max_input_tokens=500, max_output_tokens=300)) as gw:
        status, body, _ = await post(client, gw.url, chat(words(300), max_tokens=250))
        assert_error(status, body, 400, "304", "250", "512")
        assert body["error"]["code"] == "context_length_exceeded"


async def test_max_tokens_over_the_route_limit_is_400_or_clamped(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        status, body, _ = await post(client, gw.url, chat(max_tokens=51))
        assert_error(status, body, 400, "51", "50")
        assert body["error"]["param"] == "max_tokens"
    slow = sim_config(reply_tokens=None)  # replies run to max_tokens: shows the clamp
    async with SimServer(slow) as long_sim, gateway(doc_for(long_sim, clamp_max_tokens=True)) as gw:
        status, body, _ = await post(client, gw.url, chat(max_tokens=500))
        assert status == 200 and body["usage"]["completion_tokens"] == 50
        status, body, _ = await post(client, gw.url, chat())  # no max_tokens: the route's
        assert status == 200 and body["usage"]["completion_tokens"] == 50


async def test_missing_wrong_and_unauthorised_keys(sim) -> None:
    async with gateway(doc_for(sim)) as gw, aiohttp.ClientSession() as anon:
        status, body, _ = await post(anon, gw.url, chat())
        assert_error(status, body, 401, "missing")
        status, body, _ = await post(
            anon, gw.url, chat(), headers={"Authorization": "Bearer sk-wrong-key"}
        )
        assert_error(status, body, 401, "not valid")
        status, body, _ = await post(
            anon, gw.url, chat(), headers={"Authorization": f"Bearer {LIMITED_KEY}"}
        )
        assert_error(status, body, 403, "other", ROUTE)
        status, body, _ = await post(
            anon,
            gw.url,
            {**chat(), "model": "elsewhere"},
            headers={"Authorization": f"Bearer {LIMITED_KEY}"},
        )
        assert status == 200
        async with anon.get(gw.url + "/v1/models", headers={"x-api-key": LIMITED_KEY}) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["elsewhere"]


async def test_unknown_model_is_404(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        status, body, _ = await post(client, gw.url, {**chat(), "model": "nope"})
        assert_error(status, body, 404, "nope", ROUTE)


async def test_bodies_over_the_limit_are_413_declared_or_chunked(sim, client) -> None:
    async with gateway(doc_for(sim, gateway_kw={"max_body_bytes": 2048})) as gw:
        big = json.dumps(chat("x" * 4000)).encode()
        status, body, _ = await post(client, gw.url, big)
        assert_error(status, body, 413, "2048")

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        async with client.post(gw.url + "/v1/chat/completions", data=chunks()) as resp:
            assert resp.status == 413
            assert "2048" in (await resp.json())["error"]["message"]


async def test_rpm_and_tpm_exhausted_are_429_with_retry_after(sim, client) -> None:
    async with gateway(doc_for(sim, rpm=2)) as gw:
        for _ in range(2):
            assert (await post(client, gw.url, chat(max_tokens=5)))[0] == 200
        status, body, headers = await post(client, gw.url, chat(max_tokens=5))
        assert_error(status, body, 429, "rpm is 2")
        assert int(headers["Retry-After"]) >= 1
    async with gateway(doc_for(sim, tpm=1200)) as gw:
        # reserves prompt + max_tokens; the bound for a short prompt is generous but settles
        status, body, headers = await post(client, gw.url, chat(words(90), max_tokens=50))
        assert status == 200
        # 94 + 50 reserved, ~100 used: another 1100 tokens would not fit in what is left
        status, body, headers = await post(client, gw.url, chat(words(90), max_tokens=50))
        assert status == 200
        many = [post(client, gw.url, chat(words(90), max_tokens=50)) for _ in range(10)]
        results = await asyncio.gather(*many)
        refused = [r for r in results if r[0] == 429]
        assert refused and all("tpm is 1200" in r[1]["error"]["message"] for r in refused)
        assert all(int(r[2]["Retry-After"]) >= 1 for r in refused)


async def test_every_deployment_down_is_503_with_retry_after(client) -> None:
    async with SimServer(sim_config()) as sim, gateway(doc_for(sim)) as gw:
        sim.set_faults("dead")
        await eventually(lambda: not gw.gateway.upstream.healthy("d1"))
        status, body, headers = await post(client, gw.url, chat())
        assert_error(status, body, 503, "down")
        assert int(headers["Retry-After"]) >= 1
        async with client.get(gw.url + "/health/ready") as resp:
            assert resp.status == 503
            assert (await resp.json())["routes"][ROUTE]["down"] == ["d1"]
        sim.set_faults("ok")
        await eventually(lambda: gw.gateway.upstream.healthy("d1"))
        assert (await post(client, gw.url, chat(max_tokens=3)))[0] == 200
        async with client.get(gw.url + "/health/ready") as resp:
            assert resp.status == 200


async def test_upstream_failure_after_retries_is_502(client, caplog) -> None:
    # a context large enough that a short prompt is admitted on its byte bound (no /tokenize)
    async with SimServer(sim_config(max_model_len=4096)) as sim:
        doc = doc_for(
            sim,
            gateway_kw={"health": {"interval_s": 60, "unhealthy_after": 10}},
            max_len=4096,
            max_input_tokens=2000,
        )
        async with gateway(doc) as gw:
            sim.set_faults("dead")  # 500 on requests: not retried (the engine may have run)
            with caplog.at_level(logging.INFO, logger="fleetgate.gateway.access"):
                status, body, _ = await post(client, gw.url, chat())
            assert_error(status, body, 502, "500")
            line = json.loads(caplog.records[-1].getMessage())
            assert line["attempts"] == 1 and line["status"] == 502
            sim.set_faults("crash")  # connection refused: retried, then 502
            status, body, _ = await post(client, gw.url, chat())
            assert_error(status, body, 502, "3 attempt")
            sim.set_faults("ok")


async def test_upstream_timeout_is_504(client) -> None:
    sim_server = SimServer(sim_config())
    async with (
        sim_server as sim,
        gateway(doc_for(sim, gateway_kw={"request_timeout_s": 0.3})) as gw,
    ):
        sim.set_faults("stall")
        status, body, _ = await post(client, gw.url, chat())
        assert_error(status, body, 504, "0.3")
        await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 0)
        await eventually(lambda: sim.stats.running == 0)  # the backend was told to stop
        sim.set_faults("ok")


async def test_backend_4xx_is_passed_through_and_not_retried(sim, client, caplog) -> None:
    # The gateway does not know max_model_len here, so the backend's own check answers.
    doc = doc_for(sim, max_len=None, max_input_tokens=None, max_output_tokens=None)
    async with gateway(doc) as gw:
        with caplog.at_level(logging.INFO, logger="fleetgate.gateway.access"):
            status, body, _ = await post(client, gw.url, chat(words(10), max_tokens=600))
        assert_error(status, body, 400, "512")
        assert json.loads(caplog.records[-1].getMessage())["attempts"] == 1


# -- queueing -----------------------------------------------------------------------------------


async def _burst(url: str, n: int) -> list[tuple[int, dict[str, Any], Any]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
        return await asyncio.gather(*(post(s, url, chat(max_tokens=20)) for _ in range(n)))


async def test_burst_of_50_queues_politely_behind_2_slots() -> None:
    async with SimServer(sim_config(decode_tps=400.0, reply_tokens=None)) as sim:
        doc = doc_for(sim, concurrency=2, queue_depth=64, queue_wait_s=60)
        async with gateway(doc) as gw:
            results = await _burst(gw.url, 50)
            assert [r[0] for r in results] == [200] * 50
            assert sim.stats.max_running_seen <= 2
            assert gw.gateway.admission.queued(ROUTE) == 0
            assert gw.gateway.admission.pools["d1"].in_use == 0


async def test_burst_overflowing_a_queue_of_8_gets_429_with_retry_after() -> None:
    async with SimServer(sim_config(decode_tps=100.0, reply_tokens=None)) as sim:
        doc = doc_for(sim, concurrency=2, queue_depth=8, queue_wait_s=60)
        async with gateway(doc) as gw:
            results = await _burst(gw.url, 50)
            statuses = [r[0] for r in results]
            assert set(statuses) <= {200, 429}
            assert statuses.count(200) >= 10 and statuses.count(429) >= 1
            for status, body, headers in results:
                if status == 429:
                    assert int(headers["Retry-After"]) >= 1
                    assert "queue_depth is 8" in body["error"]["message"]
            assert sim.stats.max_running_seen <= 2
            assert gw.gateway.admission.queued(ROUTE) == 0


async def test_queue_is_fifo_and_a_wait_past_the_deadline_is_429(client) -> None:
    async with SimServer(sim_config(decode_tps=50.0, reply_tokens=None)) as sim:
        doc = doc_for(sim, concurrency=1, queue_depth=8, queue_wait_s=0.4)
        async with gateway(doc) as gw:
            order: list[int] = []

            async def one(i: int, tokens: int) -> int:
                status, _, _ = await post(client, gw.url, chat(max_tokens=tokens))
                order.append(i)
                return status

            first = asyncio.create_task(one(0, 5))  # ~0.1 s
            await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 1)
            rest = []
            for i in (1, 2):
                rest.append(asyncio.create_task(one(i, 5)))
                await eventually(lambda i=i: gw.gateway.admission.queued(ROUTE) == i)
            assert await asyncio.gather(first, *rest) == [200, 200, 200]
            assert order == [0, 1, 2]
            # a long request holds the slot past the next one's queue deadline
            hog = asyncio.create_task(one(3, 50))  # ~1 s
            await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 1)
            status, body, headers = await post(client, gw.url, chat(max_tokens=5))
            assert_error(status, body, 429, "position 1 (0 ahead)", "queue_wait_s is 0.4")
            assert body["error"]["message"].startswith("waited 0.4 s")
            assert int(headers["Retry-After"]) >= 1
            assert await hog == 200
            async with client.get(gw.url + "/metrics") as resp:
                scraped = await resp.text()
            # the refused wait is in the histogram next to the admitted ones
            assert f'queue_wait_seconds_count{{lane="{ROUTE}",outcome="timed_out"}} 1.0' in scraped
            assert f'queue_wait_seconds_count{{lane="{ROUTE}",outcome="admitted"}} 4.0' in scraped


async def test_profile_shares_slots_but_has_its_own_queue(client) -> None:
    async with SimServer(sim_config(decode_tps=100.0, reply_tokens=None)) as sim:
        doc = doc_for(
            sim,
            concurrency=1,
            queue_depth=1,
            queue_wait_s=30,
            profiles={"tiny-burst": {"queue_depth": 5}},
        )
        async with gateway(doc) as gw:
            tasks = [asyncio.create_task(post(client, gw.url, chat(max_tokens=10)))]
            await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 1)
            tasks.append(asyncio.create_task(post(client, gw.url, chat(max_tokens=10))))
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
            status, _, _ = await post(client, gw.url, chat(max_tokens=10))
            assert status == 429  # the plain route's queue of 1 is full
            burst = [
                asyncio.create_task(
                    post(client, gw.url, {**chat(max_tokens=10), "model": "tiny-burst"})
                )
                for _ in range(3)
            ]
            results = await asyncio.gather(*tasks, *burst)
            assert [r[0] for r in results] == [200] * 5
            assert sim.stats.max_running_seen == 1


# -- disconnects --------------------------------------------------------------------------------


async def test_a_client_leaving_the_queue_frees_its_place(client) -> None:
    sim_server = SimServer(sim_config(decode_tps=50.0, reply_tokens=None))
    async with sim_server as sim, gateway(doc_for(sim, concurrency=1, queue_depth=4)) as gw:
        hog = asyncio.create_task(post(client, gw.url, chat(max_tokens=25)))
        await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 1)
        leaver = asyncio.create_task(post(client, gw.url, chat(max_tokens=5)))
        await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 0)
        assert (await hog)[0] == 200
        assert sim.stats.finished == 1  # the leaver never reached the backend


async def test_a_client_leaving_mid_stream_frees_the_slot_and_stops_the_backend(client) -> None:
    sim_server = SimServer(sim_config(decode_tps=20.0, reply_tokens=None))
    async with sim_server as sim, gateway(doc_for(sim, concurrency=1)) as gw:
        body = json.dumps(chat(max_tokens=50, stream=True)).encode()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as own:
            resp = await own.post(gw.url + "/v1/chat/completions", data=body)
            assert resp.status == 200
            await resp.content.readline()
            assert sim.stats.running == 1
            resp.close()
        await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 0)
        await eventually(lambda: sim.stats.running == 0 and sim.stats.aborted == 1)


# -- retries and health -------------------------------------------------------------------------


async def test_a_crashed_deployment_is_retried_elsewhere_then_marked_down(client) -> None:
    big = sim_config(max_model_len=4096)  # short prompts admitted on their bound: no /tokenize
    async with SimServer(big) as a, SimServer(big) as b:
        doc = sim_fleet(
            {"a": (a.port, 4096, 4), "b": (b.port, 4096, 4)},
            {ROUTE: {"deployments": ["a", "b"]}},
            api_keys=[{"name": "owner", "key": KEY}],
            health={"interval_s": 30, "unhealthy_after": 2},
        )
        async with gateway(doc) as gw:
            a.set_faults("crash")
            results = [await post(client, gw.url, chat(max_tokens=3)) for _ in range(6)]
            assert [r[0] for r in results] == [200] * 6
            assert not gw.gateway.upstream.healthy("a")  # passive: refused twice
            assert b.stats.finished == 6
            metrics = await (await client.get(gw.url + "/metrics")).text()
            assert 'fleetgate_upstream_retries_total{deployment="b"}' in metrics
            assert 'fleetgate_deployment_healthy{deployment="a"} 0.0' in metrics
            a.set_faults("ok")


async def test_retries_that_moved_and_failed_give_back_the_slot_they_hold(client) -> None:
    # The first attempt's slot is handed back when a retry moves to another deployment; the
    # slot of the deployment that failed last is the one the request still holds.
    big = sim_config(max_model_len=4096)  # short prompts admitted on their bound: no /tokenize
    async with SimServer(big) as a, SimServer(big) as b:
        doc = sim_fleet(
            {"a": (a.port, 4096, 4), "b": (b.port, 4096, 4)},
            {ROUTE: {"deployments": ["a", "b"]}},
            api_keys=[{"name": "owner", "key": KEY}],
            health={"interval_s": 30, "unhealthy_after": 10},
            retries=1,  # a -> b, then 502: the request ends holding b's slot, not a's
        )
        async with gateway(doc) as gw:
            a.set_faults("crash")
            b.set_faults("crash")
            status, body, _ = await post(client, gw.url, chat(max_tokens=3))
            assert_error(status, body, 502, "attempt")
            pools = gw.gateway.admission.pools
            assert (pools["a"].in_use, pools["b"].in_use) == (0, 0)
            assert (pools["a"].running_since, pools["b"].running_since) == ([], [])
            a.set_faults("ok")
            b.set_faults("ok")


async def test_503_from_a_backend_is_retried_on_another_deployment(sim, client, caplog) -> None:
    from aiohttp import web

    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", busy)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    busy_port = runner.addresses[0][1]
    try:
        doc = sim_fleet(
            {"busy": (busy_port, 4096, 4), "good": (sim.port, 4096, 4)},
            {ROUTE: {"deployments": ["busy", "good"]}},
            api_keys=[{"name": "owner", "key": KEY}],
        )
        async with gateway(doc) as gw:
            with caplog.at_level(logging.INFO, logger="fleetgate.gateway.access"):
                status, _, _ = await post(client, gw.url, chat(max_tokens=3))
            assert status == 200
            line = json.loads(caplog.records[-1].getMessage())
            assert line["attempts"] == 2 and line["deployment"] == "good"
    finally:
        await runner.cleanup()


async def test_vllm_queue_full_503_is_busy_not_down(client) -> None:
    """vLLM with --max-num-queued-reqs refuses overflow with 503 (QueueOverflowError): busy,
    so the request is retried, then refused as backpressure (429), and the backend stays in."""
    from aiohttp import web

    calls = []

    async def full(request: web.Request) -> web.Response:
        calls.append(1)
        message = (
            "The engine is currently busy and cannot accept new requests. "
            "Please try again later or on a different instance."
        )
        body = {
            "error": {"message": message, "type": "Service Unavailable", "param": None, "code": 503}
        }
        return web.json_response(body, status=503)

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", full)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        doc = sim_fleet(
            {"full": (runner.addresses[0][1], 4096, 4)},
            {ROUTE: {"deployments": ["full"]}},
            api_keys=[{"name": "owner", "key": KEY}],
        )
        async with gateway(doc) as gw:
            status, body, headers = await post(client, gw.url, chat(max_tokens=3))
            assert status == 429 and "Retry-After" in headers
            assert "busy" in body["error"]["message"] and len(calls) == 3
            assert gw.gateway.admission.pools["full"].healthy
            assert gw.gateway.admission.pools["full"].in_use == 0
    finally:
        await runner.cleanup()


# -- reload -------------------------------------------------------------------------------------


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


def _loader(path: Path):
    def load():
        return require_valid(load_fleet(path).fleet)

    return load


async def test_hot_reload_applies_refuses_invalid_and_keeps_in_flight(tmp_path, client) -> None:
    async with SimServer(sim_config(decode_tps=50.0, reply_tokens=None)) as sim:
        doc = doc_for(sim, gateway_kw={"admin_key": ADMIN})
        path = tmp_path / "fleet.yaml"
        _write(path, doc)
        fleet = _loader(path)()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with serve(fleet, loader=_loader(path)) as gw:
            in_flight = asyncio.create_task(post(client, gw.url, chat(max_tokens=40)))
            await eventually(lambda: sim.stats.running == 1)
            doc["gateway"]["aliases"] = {"fresh": ROUTE}
            _write(path, doc)
            async with client.post(gw.url + "/admin/reload") as resp:
                assert resp.status == 401
            async with client.post(gw.url + "/admin/reload", headers=admin) as resp:
                assert resp.status == 200 and "fresh" in (await resp.json())["models"]
            assert (await post(client, gw.url, {**chat(max_tokens=2), "model": "fresh"}))[0] == 200
            path.write_text("gateway: [this is not a fleet")
            async with client.post(gw.url + "/admin/reload", headers=admin) as resp:
                assert resp.status == 400
                assert "old configuration keeps serving" in (await resp.json())["error"]["message"]
            assert (await post(client, gw.url, {**chat(max_tokens=2), "model": "fresh"}))[0] == 200
            status, body, _ = await in_flight
            assert status == 200 and body["usage"]["completion_tokens"] == 40


def test_sighup_reloads_a_running_fleetgate_serve(tmp_path) -> None:
    with SimServer(sim_config()).run_in_thread() as sim:
        doc = doc_for(sim)
        from tests.support.vllm_server import free_port

        port = free_port()
        doc["gateway"]["port"] = port
        doc["gateway"]["listen"] = "127.0.0.1"
        path = tmp_path / "fleet.yaml"
        _write(path, doc)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from fleetgate.cli import main; main()", "serve", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        try:
            import time
            import urllib.request

            def models() -> list[str]:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
                )
                with urllib.request.urlopen(req, timeout=2) as r:
                    return [m["id"] for m in json.load(r)["data"]]

            deadline = time.monotonic() + 30
            while True:
                try:
                    before = models()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
            assert "hup" not in before
            doc["gateway"]["aliases"] = {"hup": ROUTE}
            _write(path, doc)
            proc.send_signal(signal.SIGHUP)
            while "hup" not in models():
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=10)[0].decode()
        assert "OPEN" not in out and KEY not in out
        assert "configuration reloaded" in out


# -- clients and protocol -----------------------------------------------------------------------


async def test_streaming_forwards_usage_only_when_asked(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        for ask in (False, True):
            body = chat(max_tokens=5, stream=True)
            if ask:
                body["stream_options"] = {"include_usage": True}
            async with client.post(gw.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                text = (await resp.read()).decode()
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            usage = [json.loads(e) for e in events[:-1] if '"usage"' in e]
            with_usage = [u for u in usage if u.get("usage")]
            assert bool(with_usage) == ask
        # TPM was settled on the streamed usage: the lane's bucket is back near full
        metrics = await (await client.get(gw.url + "/metrics")).text()
        assert 'fleetgate_tokens_total{direction="out",lane="tiny-route"}' in metrics


async def test_the_official_openai_client_sync_and_streaming(sim) -> None:
    async with gateway(doc_for(sim)) as gw:

        def use_openai() -> tuple[str, str, int]:
            oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
            reply = oa.chat.completions.create(
                model=ROUTE, messages=[{"role": "user", "content": "hello"}], max_tokens=5
            )
            parts = []
            usage = 0
            for chunk in oa.chat.completions.create(
                model=ROUTE,
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            try:
                oa.chat.completions.create(
                    model=ROUTE, messages=[{"role": "user", "content": "x"}], max_tokens=999
                )
            except openai.BadRequestError as exc:
                refused = str(exc)
            else:
                refused = ""
            return reply.choices[0].message.content or "", "".join(parts) + refused, usage

        content, streamed, usage = await asyncio.to_thread(use_openai)
        assert content and streamed and 1 <= usage <= 5
        assert "max_tokens=999" in streamed


async def test_completions_endpoint_and_models(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        body = {"model": ROUTE, "prompt": "hello world", "max_tokens": 3}
        async with client.post(gw.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["object"] == "text_completion"
        async with client.get(gw.url + "/v1/models") as resp:
            data = {m["id"]: m for m in (await resp.json())["data"]}
        assert data[ROUTE]["max_model_len"] == 512 and data[ROUTE]["max_input_tokens"] == 100


async def test_tokenize_answers_the_backends_count_under_the_public_name(sim, client) -> None:
    async def tokenize(session: aiohttp.ClientSession, url: str, body: Any, **kw: Any):
        async with session.post(url + "/tokenize", json=body, **kw) as resp:
            return resp.status, await resp.json(), resp.headers

    async with gateway(doc_for(sim)) as gw, aiohttp.ClientSession() as anon:
        messages = [{"role": "user", "content": words(37)}]
        for text in ({"messages": messages}, {"prompt": words(9)}):
            status, via, _ = await tokenize(client, gw.url, {"model": ROUTE, **text})
            assert status == 200, via
            _, direct, _ = await tokenize(anon, sim.url, {"model": "tiny", **text})
            assert via == direct
        assert via["count"] == 9 + 1  # <s> and the words
        _, chat_count, _ = await tokenize(client, gw.url, {"model": ROUTE, "messages": messages})
        assert chat_count["count"] == 37 + TEMPLATE and chat_count["max_model_len"] == 512

        status, body, _ = await tokenize(anon, gw.url, {"model": ROUTE, "messages": messages})
        assert_error(status, body, 401, "missing")
        limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
        body_in = {"model": ROUTE, "messages": messages}
        status, body, _ = await tokenize(anon, gw.url, body_in, headers=limited)
        assert_error(status, body, 403, ROUTE)
        status, body, _ = await tokenize(client, gw.url, {"model": "nope", "messages": messages})
        assert_error(status, body, 404, "nope", ROUTE)
        status, body, _ = await tokenize(client, gw.url, {"model": ROUTE, "messages": "hi"})
        assert_error(status, body, 400, "messages")
        status, body, _ = await tokenize(client, gw.url, {"model": ROUTE})
        assert_error(status, body, 400, "prompt")

        sim.set_faults("dead")
        await eventually(lambda: not gw.gateway.upstream.healthy("d1"))
        status, body, headers = await tokenize(client, gw.url, body_in)
        assert_error(status, body, 503, "down")
        assert int(headers["Retry-After"]) >= 1
        assert (await post(client, gw.url, chat(max_tokens=2)))[0] == 503
        sim.set_faults("ok")
        await eventually(lambda: gw.gateway.upstream.healthy("d1"))
        assert (await post(client, gw.url, chat(max_tokens=2)))[0] == 200
        async with client.get(gw.url + "/metrics") as resp:
            scraped = await resp.text()
        # counts asked for and completions served are told apart
        total = "fleetgate_requests_total{endpoint="
        assert f'{total}"tokenize",model="{ROUTE}",reason="",status="200"}} 3.0' in scraped
        assert f'{total}"chat",model="{ROUTE}",reason="",status="200"}} 1.0' in scraped
        assert f'{total}"chat",model="{ROUTE}",reason="unavailable",status="503"}} 1.0' in scraped


async def test_every_deployment_down_says_so_the_same_way_before_and_in_the_queue(client) -> None:
    gateway_kw = {"health": {"interval_s": 7, "unhealthy_after": 1}}
    async with SimServer(sim_config(decode_tps=50.0, reply_tokens=None)) as sim:
        doc = doc_for(sim, concurrency=1, queue_depth=4, queue_wait_s=60, gateway_kw=gateway_kw)
        async with gateway(doc) as gw:
            hog = asyncio.create_task(post(client, gw.url, chat(max_tokens=50)))
            await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 1)
            queued = asyncio.create_task(post(client, gw.url, chat(max_tokens=2)))
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
            gw.gateway.upstream.record("d1", False)  # what a failed health check does
            from_queue = await queued
            before_queue = await post(client, gw.url, chat(max_tokens=2))
            for status, body, headers in (from_queue, before_queue):
                assert_error(status, body, 503, f"every deployment of {ROUTE!r} is down (d1)")
                assert "every 7 s" in body["error"]["message"]
                assert headers["Retry-After"] == "7"
            assert from_queue[1] == before_queue[1]
            hog.cancel()
            await asyncio.gather(hog, return_exceptions=True)


async def test_admin_endpoints_disabled_is_403_admin_disabled(sim, client) -> None:
    async with gateway(doc_for(sim)) as gw:
        async with client.post(gw.url + "/admin/reload") as resp:
            body = await resp.json()
        assert_error(resp.status, body, 403, "admin_key")
        assert body["error"]["code"] == "admin_disabled"


async def test_redis_backed_replicas_share_rpm(sim, client) -> None:
    import uuid

    route = f"shared-{uuid.uuid4().hex[:8]}"  # fresh Redis keys for this run
    doc = doc_for(sim, gateway_kw={"redis_url": "redis://127.0.0.1:6379/0"}, rpm=2)
    doc["gateway"]["routes"][route] = doc["gateway"]["routes"].pop(ROUTE)
    async with gateway(doc) as one, gateway(doc) as two:
        body = {**chat(max_tokens=2), "model": route}
        assert (await post(client, one.url, body))[0] == 200
        assert (await post(client, two.url, body))[0] == 200
        status, payload, _headers = await post(client, one.url, body)
        assert_error(status, payload, 429, "rpm is 2")
