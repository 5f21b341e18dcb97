"""The probes against the simulator (bare, like a vLLM) and through a local gateway."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
from tests.support.gateway import make_fleet, sim_fleet
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.fleetfile import load_fleet, parse_fleet
from fleetgate.gateway import serve
from fleetgate.local import local_fleet
from fleetgate.probes import (
    ApiClient,
    BurstConfig,
    PromptFitError,
    fit_prompt,
    run_burst,
    run_smoke,
    target_from_fleet,
    target_from_url,
)
from fleetgate.probes.html import burst_html
from fleetgate.probes.stats import percentile, summarize
from fleetgate.probes.targets import ModelUnderTest, ProbeBackend, Target
from fleetgate.sim import SimConfig, SimServer

HOMELAB = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"
runner = CliRunner()


# -- building a prompt of an exact length -------------------------------------------------------


def _counter(template: int, per_unit: int):
    async def count(messages: list[dict[str, str]]) -> int:
        text = messages[0]["content"]
        units = text.count(" hello")
        rest = text.replace(" hello", "")
        return template + per_unit * units + len(rest)

    return count


@pytest.mark.parametrize("per_unit", [1, 2, 3])
@pytest.mark.parametrize("target", [20, 21, 999, 14000, 14001])
async def test_fit_prompt_lands_exactly(per_unit: int, target: int) -> None:
    count = _counter(17, per_unit)
    messages, got = await fit_prompt(count, target)
    assert got == target
    assert await count(messages) == target


async def test_fit_prompt_refuses_a_target_below_the_template() -> None:
    with pytest.raises(PromptFitError, match="chat template alone"):
        await fit_prompt(_counter(40, 1), 10)


async def test_fit_prompt_with_the_sim_tokenizer_counts_what_the_sim_counts() -> None:
    config = SimConfig(model="m", max_model_len=4096, max_num_seqs=2)
    async with SimServer(config) as sim:
        target = await target_from_url(sim.url)
        report = await run_smoke(target)
    by_check = {c.check: c for c in report.checks}
    # a bare vLLM: its input limit is max_model_len - 1 (with one output token)
    assert by_check["exact input"].ok, by_check["exact input"]
    assert "4095 in" in by_check["exact input"].expected
    assert by_check["input + 1"].ok, by_check["input + 1"]
    assert by_check["max_tokens + 1"].ok
    assert report.ok


def test_percentiles() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    s = summarize([0.1] * 99 + [10.0])
    assert s["count"] == 100 and s["p50"] == pytest.approx(0.1) and s["max"] == 10.0
    assert summarize([])["p50"] is None


# -- the smoke test through a local gateway -----------------------------------------------------


async def test_smoke_passes_on_the_homelab_fleet_through_the_gateway() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        target = target_from_fleet(running.fleet, url=running.gateway_url, api_key=running.api_key)
        report = await run_smoke(target)
    assert report.ok, report.to_dict()
    names = {c.model for c in report.checks}
    assert names == {"llama31-8b-wintermute", "llama31-8b-wintermute-burst", "qwen2.5-7b-armitage"}
    exact = [c for c in report.checks if c.check == "exact input"]
    assert {c.expected for c in exact} >= {
        "200 for 14000 in + 1024 out",
        "200 for 7000 in + 768 out",
    }
    lens = {c.model: c.got for c in report.checks if c.check == "max_model_len"}
    assert lens["llama31-8b-wintermute"].startswith("16384")


async def test_smoke_by_url_tests_what_smoke_by_fleet_file_tests() -> None:
    """The gateway's /v1/models cards say kind and limits (a ``fleetgate`` object beside
    OpenAI's fields), so the URL alone gives the same models and checks as the fleet file."""
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        url, key = running.gateway_url, running.api_key
        async with ApiClient(url, key) as api:
            listing = (await api.models()).body
        by_file = await run_smoke(target_from_fleet(running.fleet, url=url, api_key=key))
        by_url_target = await target_from_url(url, key)
        by_url = await run_smoke(by_url_target)
    cards = {c["id"]: c for c in listing["data"]}
    burst = cards["llama31-8b-wintermute-burst"]
    assert {"id", "object", "created", "owned_by", "root"} <= set(burst)
    assert burst["fleetgate"]["kind"] == "profile"
    assert burst["fleetgate"]["target"] == "llama31-8b-wintermute"
    assert burst["fleetgate"]["limits"]["queue_depth"] == 64
    assert cards["llama"]["fleetgate"]["kind"] == "alias"
    assert cards["llama"]["fleetgate"]["target"] == "llama31-8b-wintermute"
    assert cards["qwen2.5-7b-armitage"]["fleetgate"]["target"] is None
    assert by_url.ok and by_file.ok, (by_url.to_dict(), by_file.to_dict())
    checks = sorted((c.model, c.check, c.expected) for c in by_url.checks)
    assert checks == sorted((c.model, c.check, c.expected) for c in by_file.checks)
    assert len({c.model for c in by_url.checks}) == 3 and len(checks) == 12
    assert {m.name: m.kind for m in by_url_target.models}["qwen"] == "alias"


async def test_smoke_fails_when_the_backend_runs_another_max_model_len() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        target = target_from_fleet(running.fleet, url=running.gateway_url, api_key=running.api_key)
        # the plan says 16384; pretend the fleet file had planned 32768 for wintermute
        target.models = [
            ModelUnderTest(**{**m.__dict__, "max_model_len": 32768})
            if m.name == "llama31-8b-wintermute"
            else m
            for m in target.models
        ]
        report = await run_smoke(target, ["llama31-8b-wintermute"])
    failed = [c for c in report.checks if c.ok is False]
    assert [c.check for c in failed] == ["max_model_len"]
    assert not report.ok


async def test_smoke_fails_when_the_gateway_lets_one_token_more_through() -> None:
    # A target that claims a lower input limit than the gateway enforces: the "limit + 1"
    # request then succeeds, which the smoke test must call a failure.
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        target = target_from_fleet(running.fleet, url=running.gateway_url, api_key=running.api_key)
        target.models = [
            ModelUnderTest(**{**m.__dict__, "max_input_tokens": 6000})
            for m in target.models
            if m.name == "qwen2.5-7b-armitage"
        ]
        report = await run_smoke(target)
    by_check = {c.check: c for c in report.checks}
    assert by_check["exact input"].ok
    assert by_check["input + 1"].ok is False and by_check["input + 1"].got == "200"


async def test_smoke_by_url_counts_tokens_through_the_gateways_tokenize() -> None:
    # Only the URL and a key: no fleet file names a backend, so every count is the gateway's.
    key = "sk-smoke-url-0001"
    config = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=5000)
    async with SimServer(config) as sim:
        route = {
            "deployments": ["d1"],
            "max_input_tokens": 300,
            "max_output_tokens": 40,
            "profiles": {"tiny-long": {"max_input_tokens": 420, "max_output_tokens": 80}},
        }
        doc = sim_fleet(
            {"d1": (sim.port, 512, 4)},
            {"tiny": route},
            api_keys=[{"name": "smoke", "key": key}],
            aliases={"tiny-alias": "tiny"},
        )
        async with serve(make_fleet(doc)) as gw:
            target = await target_from_url(gw.url, key)
            kinds = {m.name: m.kind for m in target.models}
            assert kinds == {"tiny": "route", "tiny-long": "profile", "tiny-alias": "alias"}
            result = await asyncio.to_thread(
                runner.invoke, app, ["smoke", gw.url, "--api-key", key, "--json"]
            )
            refused = await run_smoke(Target(gw.url, None, target.models))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    checks = {(c["model"], c["check"]): c for c in report["checks"]}
    assert checks[("tiny", "exact input")]["expected"] == "200 for 300 in + 40 out"
    assert checks[("tiny-long", "exact input")]["expected"] == "200 for 420 in + 80 out"
    assert checks[("tiny", "input + 1")]["ok"] is True
    assert checks[("tiny-long", "max_model_len")]["got"] == "512 (via gateway)"
    # without the key the gateway counts nothing: the smoke test fails instead of guessing
    assert not refused.ok
    assert all("401" in c.got for c in refused.checks if c.check == "exact input")


# -- burst ---------------------------------------------------------------------------------------

SMALL_QUEUE = textwrap.dedent(
    """
    version: 1
    hosts:
      box: {address: 127.0.0.1, transport: local, gpus: [RTX 3090]}
    deployments:
      tiny: {host: box, model: meta-llama/Llama-3.1-8B-Instruct, served_model_name: tiny,
             max_model_len: 4096, max_num_seqs: 1}
    gateway:
      host: box
      routes:
        tiny:
          deployments: [tiny]
          max_input_tokens: 3000
          max_output_tokens: 256
          concurrency: 1
          queue_depth: 1
          queue_wait_s: 30
    """
)


async def test_burst_through_the_gateway_counts_streams_and_latencies() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        config = BurstConfig(
            model="llama31-8b-wintermute-burst",
            concurrency=20,
            requests=30,
            stream=True,
            prompt_tokens=(32, 64),
            max_tokens=(8, 24),
        )
        report = await run_burst(running.gateway_url, config, running.api_key)
    s = report.summary()
    assert s["requests"] == 30 and s["failed"] == 0, s
    assert s["by_status"] == {"200": 30}
    assert s["ttft_s"]["count"] == 30 and s["itl_s"]["count"] > 0
    assert all(r.completion_tokens and 1 <= r.completion_tokens <= 24 for r in report.results)
    assert s["output_tokens"] == sum(r.completion_tokens or 0 for r in report.results)
    # the gateway says how long each request queued (2 slots, 20 clients: most of them did),
    # and the client's TTFT, measured from its send, includes that wait
    assert s["queue_wait_s"]["count"] == 30 and s["queue_wait_s"]["max"] > 0
    assert all(r.ttft_s is not None and r.queue_wait_s is not None for r in report.results)
    assert all(r.ttft_s >= r.queue_wait_s for r in report.results)  # type: ignore[operator]
    page = burst_html(report)
    assert page.count("<svg") >= 4 and "http://www.w3.org/2000/svg" in page
    assert "time to first token (includes the gateway queue wait)" in page
    assert "gateway queue wait (x-fleetgate-queue-wait-ms)" in page
    assert "<script" not in page and "src=" not in page  # self-contained: nothing fetched


async def test_burst_retries_429_after_retry_after_and_counts_only_final_failures() -> None:
    fleet = parse_fleet(SMALL_QUEUE).fleet
    async with local_fleet(fleet, gateway_port=0, speed=20) as running:
        base = BurstConfig(model="tiny", concurrency=6, requests=6, max_tokens=(8, 8))
        no_retry = await run_burst(
            running.gateway_url, BurstConfig(**{**base.__dict__, "retry": False})
        )
        retried = await run_burst(running.gateway_url, base)
    s = no_retry.summary()
    # one running, one queued: the other four are refused with 429 and not retried
    assert s["by_status"].get("429", 0) >= 3, s
    assert s["failures_by_reason"] == {"rate_limit_exceeded": s["failed"]}
    assert all(r.attempts == 1 for r in no_retry.results)
    r = retried.summary()
    assert r["failed"] == 0 and r["responses_429"] >= 3, r
    assert r["retried_requests"] >= 3


async def test_burst_is_bounded_by_duration_and_reports_connection_failures() -> None:
    config = BurstConfig(model="m", rate=50, requests=10_000, duration_s=0.5, timeout_s=2)
    report = await run_burst("http://127.0.0.1:9", config)  # nothing listens on port 9
    assert 0 < len(report.results) < 10_000
    assert report.failed == len(report.results)
    assert set(report.summary()["failures_by_reason"]) == {"connection_refused"}


# -- the commands --------------------------------------------------------------------------------


def test_smoke_and_burst_commands_against_a_bare_sim(tmp_path: Path) -> None:
    config = SimConfig(model="m", max_model_len=2048, max_num_seqs=2, decode_tps=2000)
    with SimServer(config).run_in_thread() as sim:
        result = runner.invoke(app, ["smoke", sim.url, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["ok"] is True
        out_json, out_html = tmp_path / "b.json", tmp_path / "b.html"
        result = runner.invoke(
            app,
            [
                "burst",
                sim.url,
                "--model",
                "m",
                "--concurrency",
                "4",
                "--requests",
                "12",
                "--stream",
                "--max-tokens",
                "4-12",
                "--prompt-tokens",
                "10-40",
                "--json",
                str(out_json),
                "--html",
                str(out_html),
                "--max-errors",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "12 requests" in result.output
        data = json.loads(out_json.read_text())
        assert data["summary"]["succeeded"] == 12 and len(data["results"]) == 12
        assert "<svg" in out_html.read_text()
        # --max-errors is a gate: every request fails when the sim crashes them all
        sim.set_faults(mode="dead")
        result = runner.invoke(
            app, ["burst", sim.url, "--model", "m", "--requests", "3", "--max-errors", "1"]
        )
        assert result.exit_code == 1
        assert "3 failed requests, more than --max-errors 1" in result.output


def test_smoke_command_exits_1_on_failure() -> None:
    config = SimConfig(model="m", max_model_len=2048, max_num_seqs=2)
    with SimServer(config).run_in_thread() as sim:
        fleet = textwrap.dedent(
            f"""
            version: 1
            hosts: {{box: {{address: 127.0.0.1, transport: local, gpus: [RTX 3090]}}}}
            deployments:
              m: {{host: box, port: {sim.port}, model: x, served_model_name: m,
                  max_model_len: 4096}}
            gateway:
              host: box
              port: {sim.port}
              routes: {{m: {{deployments: [m], max_input_tokens: 3000, max_output_tokens: 100}}}}
            """
        )
        # the "gateway" here is the bare sim, which knows 2048 and no route limits
        target = Target(sim.url, None, target_from_fleet(parse_fleet(fleet).fleet).models)
        assert target.models[0].max_model_len == 4096
        report = asyncio.run(run_smoke(target))
    assert not report.ok
    failed = {c.check for c in report.checks if c.ok is False}
    assert {"exact input", "max_model_len"} <= failed


# -- a user's mistakes: one clear line and exit 1, before any load -------------------------------


def test_output_files_that_cannot_be_written_are_refused_before_the_run(tmp_path: Path) -> None:
    # nothing listens at the URL: a refusal must come before the target is even asked
    for option in ("--json", "--html"):
        for bad in (tmp_path / "no" / "dir" / "x.out", tmp_path):
            result = runner.invoke(app, ["burst", "http://127.0.0.1:9", option, str(bad)])
            assert result.exit_code == 2, result.output
            assert "Invalid value for" in result.output and option in result.output
            assert "cannot reach" not in result.output


def test_an_unknown_model_is_named_with_the_ones_served() -> None:
    config = SimConfig(model="m", max_model_len=2048, max_num_seqs=2)
    with SimServer(config).run_in_thread() as sim:
        burst = runner.invoke(app, ["burst", sim.url, "--model", "nosuch", "--requests", "3"])
        smoke = runner.invoke(app, ["smoke", sim.url, "--model", "nosuch"])
    for result in (burst, smoke):
        assert result.exit_code == 1, result.output
        assert "unknown model 'nosuch'" in result.output and "serves: m" in result.output
    assert "final status" not in burst.output


def test_an_unknown_model_of_a_fleet_file_names_the_gateways_models() -> None:
    with SimServer(SimConfig(model="m", max_model_len=2048, max_num_seqs=2)).run_in_thread() as sim:
        result = runner.invoke(
            app, ["burst", str(HOMELAB), "--url", sim.url, "--model", "llama3", "--requests", "2"]
        )
    assert result.exit_code == 1, result.output
    assert "unknown model 'llama3'" in result.output and "serves: m" in result.output


@pytest.mark.parametrize("command", ["smoke", "burst"])
def test_a_missing_fleet_file_is_one_error_without_a_stray_exit_code(
    command: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, [command, str(tmp_path / "nofile.yaml")])
    assert result.exit_code == 1
    assert "nofile.yaml" in result.output
    assert "error: 1" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("where", "fault"),
    [
        (["http://127.0.0.1:9"], "connection_refused"),
        ([str(HOMELAB), "--url", "http://127.0.0.1:9"], "connection_refused"),
        (["http://no-such-host.invalid:80"], "dns_error"),
    ],
)
@pytest.mark.parametrize("command", ["smoke", "burst"])
def test_an_unreachable_gateway_is_one_line_naming_the_reason(
    command: str, where: list[str], fault: str
) -> None:
    result = runner.invoke(app, [command, *where])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot reach http://") and fault in lines[0]
    assert "FAIL" not in result.output


async def test_transport_faults_are_named_once_with_their_detail() -> None:
    async with ApiClient("http://no-such-host.invalid", timeout_s=10) as api:
        dns = await api.models()
    async with ApiClient("http://127.0.0.1:9", timeout_s=10) as api:
        refused = await api.models()
    assert dns.transport_error == "dns_error" and dns.status == 0
    assert refused.transport_error == "connection_refused"
    for reply in (dns, refused):
        assert reply.summary().count(reply.transport_error) == 1
        assert reply.message and reply.message != reply.transport_error


async def test_a_request_can_send_raw_bytes_and_replace_the_clients_key() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    chat = "/v1/chat/completions"
    body = {"model": "qwen2.5-7b-armitage", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        local_fleet(fleet, gateway_port=0, speed=20) as running,
        ApiClient(running.gateway_url, running.api_key, timeout_s=60) as api,
    ):
        malformed = await api.request(
            "POST", chat, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        wrong_key = await api.request(
            "POST", chat, body, headers={"Authorization": "Bearer wrong-key-0000"}
        )
        right_key = await api.request("POST", chat, {**body, "max_tokens": 1})
    assert malformed.status == 400 and "not valid JSON" in malformed.message, malformed.summary()
    assert wrong_key.status == 401, wrong_key.summary()
    assert right_key.status == 200, right_key.summary()


async def test_a_backend_that_cannot_count_says_why_once() -> None:
    model = ModelUnderTest(
        "m",
        max_input_tokens=100,
        max_output_tokens=10,
        backends=(ProbeBackend("dep", "http://127.0.0.1:9", "m", 2048),),
    )
    # neither the gateway's /tokenize nor the backend's answers
    report = await run_smoke(Target("http://127.0.0.1:9", None, [model]))
    (exact,) = [c for c in report.checks if c.check == "exact input"]
    assert "cannot count tokens: connection_refused (" in exact.got
    assert exact.got.count("connection_refused") == 1
