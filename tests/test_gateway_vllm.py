"""The gateway in front of a REAL vLLM (CPU, tiny model): exact input limits and streamed usage."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from tests.support.gateway import make_fleet, sim_fleet

from fleetgate.gateway import serve

pytestmark = pytest.mark.vllm

LIMIT = 300


async def _count(session: aiohttp.ClientSession, url: str, model: str, content: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    async with session.post(url + "/tokenize", json=body) as resp:
        return (await resp.json())["count"]


async def _content_of(session, url: str, model: str, target: int) -> str:
    """A user message whose chat-templated prompt is exactly ``target`` tokens on the backend."""
    words = 10
    for _ in range(40):
        text = " ".join(["hello"] * words)
        count = await _count(session, url, model, text)
        if count == target:
            return text
        if count < target:
            for tail in range(1, 8):
                padded = text + " a" * tail
                if await _count(session, url, model, padded) == target:
                    return padded
        words = max(1, words + (target - count) // 2 or (1 if count < target else -1))
    raise AssertionError(f"could not build a prompt of exactly {target} tokens")


def _doc(vllm: Any, **route: Any) -> dict[str, Any]:
    port = int(vllm.url.rsplit(":", 1)[1])
    doc = sim_fleet(
        {"real": (port, vllm.max_model_len, 4)},
        {"real-route": {"deployments": ["real"], **route}},
    )
    doc["deployments"]["real"]["served_model_name"] = vllm.served_name
    return doc


async def test_exact_input_limit_against_real_vllm(vllm_server) -> None:
    doc = _doc(vllm_server, max_input_tokens=LIMIT, max_output_tokens=8)
    async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
        at_limit = await _content_of(s, vllm_server.url, vllm_server.served_name, LIMIT)
        over = await _content_of(s, vllm_server.url, vllm_server.served_name, LIMIT + 1)
        for content, expected in ((at_limit, 200), (over, 400)):
            body = {
                "model": "real-route",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4,
            }
            async with s.post(gw.url + "/v1/chat/completions", json=body) as resp:
                data = await resp.json()
                assert resp.status == expected, data
            if expected == 200:
                assert data["usage"]["prompt_tokens"] == LIMIT
            else:
                assert data["error"]["code"] == "context_length_exceeded"
                assert f"resulted in {LIMIT + 1} input tokens" in data["error"]["message"]
                assert f"maximum context length is {LIMIT} input tokens" in data["error"]["message"]


async def test_streamed_usage_settles_tpm_against_real_vllm(vllm_server) -> None:
    tpm = 50_000
    doc = _doc(vllm_server, max_input_tokens=1000, max_output_tokens=16, tpm=tpm)
    async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
        body = {
            "model": "real-route",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 16,
            "stream": True,
        }
        started = time.monotonic()
        async with s.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
        elapsed = time.monotonic() - started
        events = [e[6:] for e in text.splitlines() if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        # the client did not ask for usage, so none is forwarded ...
        assert not any(json.loads(e).get("usage") for e in events[:-1])
        # ... but the gateway asked vLLM for it and settled the reservation on it
        line_used = gw.gateway.metrics.tokens.labels("real-route", "out")._value.get()
        prompt = gw.gateway.metrics.tokens.labels("real-route", "in")._value.get()
        assert 1 <= line_used <= 16 and prompt > 0
        level = gw.gateway.limiter._buckets[("real-route", "tpm")][0]  # type: ignore[attr-defined]
        expected = tpm - (prompt + line_used)
        assert expected - 1 <= level <= expected + tpm / 60 * elapsed + 1


async def test_responses_api_through_the_gateway_against_real_vllm(vllm_server) -> None:
    """The openai SDK's Responses API through the gateway to a real vLLM: the gateway's count
    of ``instructions`` + ``input`` is the input_tokens vLLM reports, and a stream's events
    arrive intact, ending in ``response.completed`` with the name the client asked for."""
    import openai

    doc = _doc(vllm_server, max_input_tokens=LIMIT, max_output_tokens=8)
    doc["gateway"]["aliases"] = {"real-alias": "real-route"}
    async with serve(make_fleet(doc)) as gw:
        oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        reply = await oa.responses.create(
            model="real-alias", instructions="be brief", input="hello there", max_output_tokens=4
        )
        assert reply.model == "real-alias" and reply.usage is not None
        body = {
            "model": "real-route",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there"},
            ],
            "add_special_tokens": True,
        }
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/tokenize", json=body) as r:
            assert reply.usage.input_tokens == (await r.json())["count"]
        kinds = []
        async with oa.responses.stream(model="real-route", input="hi", max_output_tokens=4) as st:
            async for event in st:
                kinds.append(event.type)
            final = await st.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert final.usage is not None and final.usage.output_tokens == 4
        with pytest.raises(openai.BadRequestError) as over:
            await oa.responses.create(model="real-route", input="hello " * (LIMIT + 10))
        assert over.value.code == "context_length_exceeded"
        await oa.close()
