"""The simulator on its own: scheduling, KV accounting, faults, disconnects, determinism."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from fleetgate.local.speed import gpu_like_speed
from fleetgate.sim import SimConfig, SimServer, SimTokenizer

FAST = {"prefill_tps": 1e6, "decode_tps": 2000.0}


def cfg(**kw: Any) -> SimConfig:
    base: dict[str, Any] = {"model": "tiny", "max_model_len": 2048, "max_num_seqs": 4, **FAST}
    return SimConfig(**{**base, **kw})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    events = []
    async with http.post(url, json={**body, "stream": True}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        async for line in resp.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def chat(content: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}


# -- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_round_trips_any_text() -> None:
    tok = SimTokenizer()
    for text in ["hello world", "  Ünïcödé ✓ 123\n\tx", "the quick brown fox", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("the model", add_bos=True) == [1, *tok.encode("the model")]


def test_chat_template_adds_bos_role_end_and_generation_prompt() -> None:
    tok = SimTokenizer()
    content = tok.encode("hello world")
    ids = tok.apply_chat_template([{"role": "user", "content": "hello world"}])
    assert ids == [1, 4, *content, 6, 5]
    assert (
        len(
            tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False)
        )
        == len(tok.apply_chat_template([{"role": "user", "content": "x"}])) - 1
    )


# -- the API ----------------------------------------------------------------------------------


async def test_tokenize_count_is_the_usage_count(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        text = "the quick brown fox jumps over the lazy dog, 42 times!"
        st, tok = await post(http, f"{sim.url}/tokenize", chat(text))
        assert st == 200 and tok["max_model_len"] == 2048 and tok["count"] == len(tok["tokens"])
        st, reply = await post(http, f"{sim.url}/v1/chat/completions", chat(text, max_tokens=3))
        assert reply["usage"]["prompt_tokens"] == tok["count"]
        assert reply["usage"]["completion_tokens"] == 3
        st, tok = await post(http, f"{sim.url}/tokenize", {"model": "tiny", "prompt": text})
        st, reply = await post(
            http, f"{sim.url}/v1/completions", {"model": "tiny", "prompt": text, "max_tokens": 2}
        )
        assert reply["usage"]["prompt_tokens"] == tok["count"]
        st, detok = await post(http, f"{sim.url}/detokenize", {"tokens": tok["tokens"][1:]})
        assert detok == {"prompt": text}


async def test_generated_text_counts_the_tokens_it_reports(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        st, reply = await post(
            http, f"{sim.url}/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 20}
        )
        assert st == 200
        text = reply["choices"][0]["text"]
        _, tok = await post(
            http, f"{sim.url}/tokenize", {"prompt": text, "add_special_tokens": False}
        )
        assert tok["count"] == reply["usage"]["completion_tokens"] == 20


async def test_same_seed_same_text_other_seed_other_text(http: aiohttp.ClientSession) -> None:
    body = chat("tell me", max_tokens=12, temperature=0.7)
    async with SimServer(cfg(seed=7)) as a, SimServer(cfg(seed=7)) as b:
        texts = [
            (await post(http, f"{sim.url}/v1/chat/completions", body))[1]["choices"][0]["message"][
                "content"
            ]
            for sim in (a, a, b)
        ]
        assert texts[0] == texts[1] == texts[2]
        _, other = await post(http, f"{a.url}/v1/chat/completions", {**body, "seed": 8})
        assert other["choices"][0]["message"]["content"] != texts[0]


async def test_limits_at_the_edge_of_the_context(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(max_model_len=64)) as sim:
        url = f"{sim.url}/v1/completions"
        # BOS + n one-token words
        exact = {"model": "tiny", "prompt": " the" * 63}
        st, body = await post(http, url, exact)
        assert st == 400 and body["error"]["param"] == "max_tokens"
        assert "at least 1, got 0" in body["error"]["message"]
        st, body = await post(http, url, {"prompt": " the" * 62, "max_tokens": 50})
        assert st == 200 and body["usage"]["completion_tokens"] == 1  # clamped to the room left
        assert body["choices"][0]["finish_reason"] == "length"
        st, body = await post(http, url, {"prompt": " the" * 64})
        assert st == 400 and body["error"]["param"] == "input_tokens"
        assert "at least 65 input tokens" in body["error"]["message"]
        st, body = await post(http, url, {"prompt": "x", "max_tokens": 65})
        assert st == 400 and body["error"]["message"].startswith("max_tokens=65 cannot be")
        st, body = await post(http, url, {"model": "nope", "prompt": "x"})
        assert st == 404 and body["error"]["type"] == "NotFoundError"


async def test_stop_strings_and_natural_end(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(reply_tokens=10)) as sim:
        url = f"{sim.url}/v1/chat/completions"
        _, full = await post(http, url, chat(max_tokens=30, ignore_eos=True))
        text = full["choices"][0]["message"]["content"]
        assert full["usage"]["completion_tokens"] == 30
        word = text.split()[3]
        _, stopped = await post(http, url, chat(max_tokens=30, ignore_eos=True, stop=[word]))
        choice = stopped["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == word
        assert (
            text.startswith(choice["message"]["content"])
            and word not in choice["message"]["content"]
        )
        _, natural = await post(http, url, chat())  # no max_tokens: runs to its natural end
        assert natural["choices"][0]["finish_reason"] == "stop"
        assert 5 <= natural["usage"]["completion_tokens"] <= 15


async def test_stream_chunks_and_usage(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        events = await sse(
            http,
            f"{sim.url}/v1/chat/completions",
            chat(max_tokens=4, stream_options={"include_usage": True}),
        )
        assert events[-1] == "[DONE]"
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        content = events[1:-2]
        assert len(content) == 4 and content[-1]["choices"][0]["finish_reason"] == "length"
        assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 4


async def test_at_most_max_num_seqs_run_the_rest_wait(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(max_num_seqs=2, decode_tps=200.0)) as sim:
        url = f"{sim.url}/v1/chat/completions"
        tasks = [asyncio.create_task(post(http, url, chat(max_tokens=20))) for _ in range(6)]
        await wait_until(lambda: sim.stats.running + sim.stats.waiting == 6)
        assert sim.stats.running == 2 and sim.stats.waiting == 4
        results = await asyncio.gather(*tasks)
        assert all(st == 200 and r["usage"]["completion_tokens"] == 20 for st, r in results)
        assert sim.stats.max_running_seen == 2
        assert sim.stats.running == sim.stats.waiting == sim.stats.kv_blocks_used == 0


async def test_kv_cache_limits_how_many_run(http: aiohttp.ClientSession) -> None:
    # 20 blocks (320 tokens): one 200-token prompt fits, two do not
    async with SimServer(cfg(max_model_len=256, kv_cache_tokens=320, decode_tps=500.0)) as sim:
        url = f"{sim.url}/v1/completions"
        body = {"prompt": " the" * 199, "max_tokens": 10}
        results = await asyncio.gather(*(post(http, url, body) for _ in range(3)))
        assert [st for st, _ in results] == [200, 200, 200]
        assert sim.stats.max_running_seen == 1


async def test_growth_beyond_the_cache_preempts_and_still_finishes(
    http: aiohttp.ClientSession,
) -> None:
    # 8 blocks; two 40-token prompts start (3 blocks each) and grow to 100 tokens (7 blocks)
    async with SimServer(cfg(max_model_len=128, kv_cache_tokens=128, decode_tps=1000.0)) as sim:
        url = f"{sim.url}/v1/completions"
        body = {"prompt": " the" * 39, "max_tokens": 60, "ignore_eos": True}
        results = await asyncio.gather(*(post(http, url, body) for _ in range(2)))
        assert all(r["usage"]["completion_tokens"] == 60 for _, r in results)
        assert sim.stats.preemptions >= 1
        assert sim.stats.kv_blocks_used == 0


async def test_longer_prompt_waits_longer_for_its_first_token(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(cfg(prefill_tps=2000.0)) as sim:
        firsts: list[str] = []

        async def first_token(name: str, words: int) -> None:
            body = chat(" the" * words, max_tokens=1, stream=True)
            async with http.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
                await resp.content.readline()
                firsts.append(name)

        await asyncio.gather(first_token("long", 1500), first_token("short", 10))
        assert firsts == ["short", "long"]


async def test_a_client_that_leaves_frees_its_sequence(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(max_num_seqs=1, decode_tps=20.0)) as sim:
        url = f"{sim.url}/v1/chat/completions"
        resp = await http.post(url, json=chat(max_tokens=1000, stream=True, ignore_eos=True))
        await resp.content.readline()
        waiting = asyncio.create_task(post(http, url, chat(max_tokens=2)))
        await wait_until(lambda: sim.stats.waiting == 1)
        resp.close()  # drop the connection mid-stream
        st, body = await waiting
        assert st == 200 and body["usage"]["completion_tokens"] == 2
        await wait_until(lambda: sim.stats.running == 0)
        assert sim.stats.aborted == 1


async def test_dead_engine_and_recovery(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        async with http.post(f"{sim.url}/admin/faults", json={"mode": "dead"}) as resp:
            assert (await resp.json())["mode"] == "dead"
        async with http.get(f"{sim.url}/health") as resp:
            assert resp.status == 503
        st, body = await post(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=2))
        assert st == 500 and body["error"]["type"] == "InternalServerError"
        await post(http, f"{sim.url}/admin/faults", {"mode": "ok"})
        async with http.get(f"{sim.url}/health") as resp:
            assert resp.status == 200
        st, _ = await post(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=2))
        assert st == 200


async def test_crash_refuses_connections_until_ok(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(decode_tps=20.0)) as sim:
        stream = asyncio.create_task(
            sse(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=500, ignore_eos=True))
        )
        await wait_until(lambda: sim.stats.running == 1)
        sim.set_faults("crash")
        with pytest.raises(aiohttp.ClientError):
            await stream  # cut mid-stream
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(f"{sim.url}/health")
        sim.set_faults("ok")
        async with http.get(f"{sim.url}/health") as resp:
            assert resp.status == 200


async def test_stall_sends_nothing_until_released(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        sim.set_faults("stall")
        task = asyncio.create_task(post(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=3)))
        await wait_until(lambda: sim.stats.running == 1)
        await asyncio.sleep(0.2)
        assert not task.done() and sim.stats.finished == 0
        sim.set_faults("ok")
        st, body = await task
        assert st == 200 and body["usage"]["completion_tokens"] == 3


async def test_error_rate_fails_that_share(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg()) as sim:
        sim.set_faults(error_rate=1.0)
        st, body = await post(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=2))
        assert st == 500 and body["error"]["code"] == 500
        sim.set_faults(error_rate=0.5)
        statuses = [
            (await post(http, f"{sim.url}/v1/chat/completions", chat(max_tokens=1)))[0]
            for _ in range(40)
        ]
        assert 0 < statuses.count(500) < 40 and set(statuses) == {200, 500}


async def test_metrics_follow_the_engine(http: aiohttp.ClientSession) -> None:
    async with SimServer(cfg(max_num_seqs=1, decode_tps=50.0)) as sim:
        url = f"{sim.url}/v1/chat/completions"
        tasks = [asyncio.create_task(post(http, url, chat(max_tokens=5))) for _ in range(3)]
        await wait_until(lambda: sim.stats.waiting == 2)
        async with http.get(f"{sim.url}/metrics") as resp:
            text = await resp.text()
        labels = 'engine="0",model_name="tiny"'
        assert f"vllm:num_requests_running{{{labels}}} 1.0" in text
        assert f"vllm:num_requests_waiting{{{labels}}} 2.0" in text
        await asyncio.gather(*tasks)
        async with http.get(f"{sim.url}/metrics") as resp:
            text = await resp.text()
        assert f"vllm:generation_tokens_total{{{labels}}} 15.0" in text
        assert f"vllm:time_to_first_token_seconds_count{{{labels}}} 3.0" in text


def test_thread_mode_serves_the_openai_client() -> None:
    with SimServer(cfg()).run_in_thread() as sim:
        client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="none")
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5000
            )
        assert err.value.body["param"] == "max_tokens"  # type: ignore[index]
        sim.set_faults("crash")
        with pytest.raises(openai.APIConnectionError):
            client.with_options(max_retries=0).models.list()
        sim.set_faults("ok")
        assert client.models.list().data[0].id == "tiny"


def test_started_crashed_then_ok() -> None:
    config = cfg()
    config.faults.mode = "crash"
    with SimServer(config).run_in_thread() as sim:
        client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
        sim.set_faults("ok")
        assert client.models.list().data[0].max_model_len == 2048  # type: ignore[attr-defined]


def test_config_refuses_a_context_the_cache_cannot_hold() -> None:
    with pytest.raises(ValueError, match="estimated maximum model length is 992"):
        SimConfig(model="m", max_model_len=4096, max_num_seqs=1, kv_cache_tokens=1000)


def test_gpu_like_speed_is_slower_for_bigger_models() -> None:
    small, big = gpu_like_speed(2.0, 4), gpu_like_speed(14.0, 4)
    assert small.decode_tps > big.decode_tps and small.prefill_tps > big.prefill_tps
    assert big.batch_tps > big.decode_tps


def test_cli_serves_a_fleet_deployment(tmp_path: Any) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from fleetgate.cli import main; main()",
            "sim",
            "examples/homelab/fleet.yaml",
            "--deployment",
            "armitage",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        assert "qwen2.5-7b-armitage" in banner and "max_num_seqs 1" in banner
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            card = json.load(r)["data"][0]
        assert card["id"] == "qwen2.5-7b-armitage" and card["max_model_len"] == 8192
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
