"""Unit tests for the gateway's parts: config, admission queue, rate limits, parsing, errors."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
from pathlib import Path

import pytest

from fleetgate.fleetfile import load_fleet
from fleetgate.gateway.accesslog import AccessLog
from fleetgate.gateway.admission import MAX_RETRY_AFTER_S, Admission
from fleetgate.gateway.config import GatewayConfig, hash_key
from fleetgate.gateway.errors import GatewayError, too_large
from fleetgate.gateway.parse import parse_request
from fleetgate.gateway.ratelimit import MemoryRateLimiter, Quota, RedisRateLimiter
from fleetgate.gateway.tokens import NFKC_MAX_BYTE_GROWTH, text_token_bound

EXAMPLE = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"


# -- config -------------------------------------------------------------------------------------


def test_config_from_the_homelab_fleet() -> None:
    fleet = load_fleet(EXAMPLE, env={"FLEETGATE_API_KEY": "sk-owner-123456"}).fleet
    cfg = GatewayConfig.from_fleet(fleet)
    burst = cfg.models["llama31-8b-wintermute-burst"]
    plain = cfg.models["llama31-8b-wintermute"]
    alias = cfg.models["llama"]
    assert (plain.queue_depth, plain.queue_wait_s) == (16, 30)
    assert (burst.queue_depth, burst.queue_wait_s) == (64, 180)
    assert burst.lane == "llama31-8b-wintermute-burst" and burst.route == plain.route
    assert burst.max_input_tokens == 14000 and burst.max_model_len == 16384
    assert alias.lane == "llama31-8b-wintermute"
    dep = cfg.deployments["wintermute"]
    assert dep.url == "http://wintermute.lan:8000"
    assert dep.served_model == "llama31-8b-wintermute"
    assert dep.concurrency == 2 and cfg.deployments["armitage"].concurrency == 1
    # keys are kept hashed; an empty admin key means no admin endpoint
    assert hash_key("sk-owner-123456") in cfg.keys
    assert "sk-owner-123456" not in repr(cfg)
    assert cfg.admin_key_hash is None and not cfg.open


# -- admission ----------------------------------------------------------------------------------


async def test_slots_are_handed_out_in_arrival_order_across_lanes() -> None:
    adm = Admission()
    adm.configure({"d": 1})
    first = await adm.acquire("plain", ("d",), 8, 10)
    order: list[str] = []

    async def wait(name: str, lane: str) -> None:
        pool = await adm.acquire(lane, ("d",), 8, 10)
        order.append(name)
        adm.release(pool, 0.01)

    tasks = []
    for i, lane in enumerate(["plain", "burst", "plain", "burst"]):
        tasks.append(asyncio.create_task(wait(f"r{i}", lane)))
        await asyncio.sleep(0)
    assert adm.queued("plain") == 2 and adm.queued("burst") == 2
    adm.release(first, 0.5)
    await asyncio.gather(*tasks)
    assert order == ["r0", "r1", "r2", "r3"]
    assert adm.pools["d"].in_use == 0


async def test_full_queue_and_deadline_give_429_with_retry_after() -> None:
    adm = Admission()
    adm.configure({"d": 1})
    held = await adm.acquire("lane", ("d",), 1, 10)
    adm.pools["d"].service_s = 4.0
    waiter = asyncio.create_task(adm.acquire("lane", ("d",), 1, 0.05))
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as full:
        await adm.acquire("lane", ("d",), 1, 10)
    assert full.value.status == 429 and full.value.reason == "queue_full"
    # a place in the queue frees up when its first waiter gets the slot: in ~4 s
    assert full.value.retry_after == 4
    with pytest.raises(GatewayError) as late:
        await waiter
    assert late.value.status == 429 and late.value.reason == "queue_timeout"
    assert "position 1 (0 ahead)" in late.value.message
    assert "queue_wait_s is 0.05" in late.value.message
    assert adm.queued("lane") == 0
    adm.release(held)


async def test_retry_after_counts_how_long_the_running_requests_have_run() -> None:
    adm = Admission()
    adm.configure({"a": 1, "b": 1})
    held = [await adm.acquire("r", ("a", "b"), 0, 10) for _ in range(2)]
    # nothing has finished yet, but both requests have been running for 6 s
    for pool in adm.pools.values():
        pool.running_since[:] = [t - 6 for t in pool.running_since]
    with pytest.raises(GatewayError) as full:
        await adm.acquire("r", ("a", "b"), 0, 10)
    # first in line, two slots, each ~6 s and counting: a slot per just over 3 s
    assert full.value.retry_after == 4
    assert adm.estimate_wait(("a", "b"), 3) == 10  # position 3 at just over 3 s per slot
    adm.pools["a"].service_s = adm.pools["b"].service_s = 20.0
    assert adm.estimate_wait(("a", "b"), 1) == 10  # recent service times when longer
    adm.pools["a"].running_since[0] -= 10**6
    assert adm.estimate_wait(("a", "b"), 1) == MAX_RETRY_AFTER_S  # bounded
    for pool in held:
        adm.release(pool)
    assert all(not p.running_since for p in adm.pools.values())
    adm.pools["a"].service_s = adm.pools["b"].service_s = None
    assert adm.estimate_wait(("a", "b"), 1) == 1  # nothing known: one second, never 0


async def test_a_released_slot_takes_its_own_start_time_along() -> None:
    adm = Admission()
    adm.configure({"d": 2})
    old = await adm.acquire("r", ("d",), 0, 10)
    adm.pools["d"].running_since[0] -= 30
    new = await adm.acquire("r", ("d",), 0, 10)
    adm.release(new, 0.001)
    # the 30 s one is still running: just over 30 s on one of two slots
    assert adm.estimate_wait(("d",), 1) == 16
    adm.release(old, 30.0)
    assert adm.pools["d"].running_since == []


async def test_all_down_is_one_refusal_with_the_route_and_the_recheck_interval() -> None:
    adm = Admission()
    adm.configure({"a": 1}, recheck_s=7)
    await adm.acquire("r-burst", ("a",), 4, 10, route="r")
    waiter = asyncio.create_task(adm.acquire("r-burst", ("a",), 4, 10, route="r"))
    await asyncio.sleep(0)
    adm.set_healthy("a", False)
    with pytest.raises(GatewayError) as stranded:
        await waiter
    with pytest.raises(GatewayError) as fresh:
        await adm.acquire("r-burst", ("a",), 4, 10, route="r")
    with pytest.raises(GatewayError) as checked:
        adm.require_healthy("r", ("a",))
    for err in (stranded.value, fresh.value, checked.value):
        assert err.status == 503 and err.retry_after == 7
        assert err.message == (
            "every deployment of 'r' is down (a); the health checks look again every 7 s: "
            "retry after 7 s"
        )


async def test_a_cancelled_waiter_leaves_the_queue_and_never_holds_a_slot() -> None:
    adm = Admission()
    adm.configure({"d": 1})
    held = await adm.acquire("lane", ("d",), 4, 10)
    gone = asyncio.create_task(adm.acquire("lane", ("d",), 4, 10))
    stays = asyncio.create_task(adm.acquire("lane", ("d",), 4, 10))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert adm.queued("lane") == 1
    adm.release(held)
    pool = await stays
    assert pool.in_use == 1
    adm.release(pool)
    assert pool.in_use == 0


async def test_least_outstanding_and_health() -> None:
    adm = Admission()
    adm.configure({"a": 2, "b": 2})
    first = await adm.acquire("r", ("a", "b"), 4, 1)
    second = await adm.acquire("r", ("a", "b"), 4, 1)
    assert {first.name, second.name} == {"a", "b"}
    adm.set_healthy("a", False)
    third = await adm.acquire("r", ("a", "b"), 4, 1)
    assert third.name == "b"
    adm.set_healthy("b", False)
    with pytest.raises(GatewayError) as down:
        await adm.acquire("r", ("a", "b"), 4, 1)
    assert down.value.status == 503


async def test_waiters_fail_fast_when_every_deployment_goes_down() -> None:
    adm = Admission()
    adm.configure({"a": 1})
    await adm.acquire("r", ("a",), 4, 10)
    waiter = asyncio.create_task(adm.acquire("r", ("a",), 4, 10))
    await asyncio.sleep(0)
    adm.set_healthy("a", False)
    with pytest.raises(GatewayError) as down:
        await waiter
    assert down.value.status == 503


async def test_reload_raises_capacity_and_wakes_waiters() -> None:
    adm = Admission()
    adm.configure({"a": 1})
    held = await adm.acquire("r", ("a",), 4, 10)
    waiter = asyncio.create_task(adm.acquire("r", ("a",), 4, 10))
    await asyncio.sleep(0)
    adm.configure({"a": 2})
    assert (await waiter) is held
    assert held.in_use == 2


# -- rate limits --------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest):
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    lim = RedisRateLimiter("redis://127.0.0.1:6379/0", prefix=f"fleetgate-test:{uuid.uuid4()}:")
    yield lim
    await lim.close()


async def test_rpm_allows_a_minute_of_requests_then_429(limiter) -> None:
    quota = Quota("r", rpm=3, tpm=None)
    for _ in range(3):
        await limiter.reserve(quota, 10)
    with pytest.raises(GatewayError) as exc:
        await limiter.reserve(quota, 10)
    assert exc.value.status == 429 and exc.value.reason == "rpm"
    assert 0 < exc.value.retry_after <= 20.5  # a third of a minute refills one request
    assert "at least 3 requests were made within the last minute" in exc.value.message
    assert "rpm is 3" in exc.value.message


async def test_tpm_reserves_then_settles_on_real_usage(limiter) -> None:
    quota = Quota("r", rpm=None, tpm=1000)
    await limiter.reserve(quota, 900)
    with pytest.raises(GatewayError) as exc:
        await limiter.reserve(quota, 200)
    assert exc.value.reason == "tpm" and "200 tokens" in exc.value.message
    await limiter.settle(quota, 900, 100)  # the answer used far less than reserved
    await limiter.reserve(quota, 800)
    with pytest.raises(GatewayError):
        await limiter.reserve(quota, 200)


async def test_a_request_bigger_than_a_minute_of_tokens_is_refused(limiter) -> None:
    with pytest.raises(GatewayError) as exc:
        await limiter.reserve(Quota("r", rpm=None, tpm=100), 101)
    # waiting would never help: a 400, not a 429 that SDKs retry forever
    assert exc.value.status == 400 and "lower max_tokens or n" in exc.value.message
    assert exc.value.retry_after is None


async def test_redis_replicas_share_one_allowance() -> None:
    prefix = f"fleetgate-test:{uuid.uuid4()}:"
    one = RedisRateLimiter("redis://127.0.0.1:6379/0", prefix=prefix)
    two = RedisRateLimiter("redis://127.0.0.1:6379/0", prefix=prefix)
    quota = Quota("shared", rpm=2, tpm=None)
    try:
        await one.reserve(quota, 1)
        await two.reserve(quota, 1)
        with pytest.raises(GatewayError):
            await one.reserve(quota, 1)
    finally:
        await one.close()
        await two.close()


# -- parsing and token bounds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": 3, "messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": "9"}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": true}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": NaN}', "JSON"),
        (b"[" * 100000, "JSON"),
    ],
)
def test_malformed_chat_bodies_are_400(raw: bytes, fragment: str) -> None:
    with pytest.raises(GatewayError) as exc:
        parse_request("chat", raw)
    assert exc.value.status == 400 and fragment in exc.value.message


def test_chat_bound_covers_text_and_template() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello world"}]}
    req = parse_request("chat", json.dumps(body).encode())
    assert req.bound is not None and req.bound >= len("hello world") + len("user")
    with_tools = {**body, "tools": [{"type": "function"}]}
    assert parse_request("chat", json.dumps(with_tools).encode()).bound is None
    image = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    }
    assert parse_request("chat", json.dumps(image).encode()).bound is None


def test_text_bound_is_bytes_for_ascii_and_allows_nfkc_growth() -> None:
    assert text_token_bound("abc") == 3
    assert text_token_bound("\ufdfa") == NFKC_MAX_BYTE_GROWTH * 3


def test_completion_prompts() -> None:
    req = parse_request("completion", b'{"model": "m", "prompt": [1, 2, 3]}')
    assert req.bound == 3 and req.token_id_prompt_lengths() == [3]
    batch = parse_request("completion", b'{"model": "m", "prompt": ["a", "bb"]}')
    assert batch.prompts == 2 and len(batch.tokenize_payloads()) == 2
    with pytest.raises(GatewayError):
        parse_request("completion", b'{"model": "m", "prompt": [1, "a"]}')


def test_error_body_is_openai_shaped() -> None:
    err = too_large(5000, 1024)
    body = json.loads(err.response().body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "5000" in body["error"]["message"] and "1024" in body["error"]["message"]
    assert err.response().status == 413


# -- access log ---------------------------------------------------------------------------------


async def test_access_lines_to_a_stream_go_out_together_after_the_loop_turn() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    access.write({"status": 200, "key": "owner"})
    access.write({"status": 429, "key": "owner", "reason": "rpm"})
    assert stream.getvalue() == ""  # collected: one write for both, after this turn
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line, status in zip(lines, (200, 429), strict=True):
        day, clock, name, payload = line.split(" ", 3)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and re.fullmatch(r"[\d:]{8},\d{3}", clock)
        assert name == "fleetgate.gateway.access"
        assert json.loads(payload)["status"] == status
    access.flush()  # nothing pending: writes nothing
    assert len(stream.getvalue().splitlines()) == 2


async def test_access_lines_without_a_stream_are_logger_records(caplog) -> None:
    with caplog.at_level("INFO", logger="fleetgate.gateway.access"):
        AccessLog().write({"status": 200})
    assert json.loads(caplog.records[-1].getMessage()) == {"status": 200}


async def test_a_broken_access_stream_does_not_fail_requests(caplog) -> None:
    stream = io.StringIO()
    stream.close()
    access = AccessLog(stream)
    access.write({"status": 200})
    await asyncio.sleep(0)
    access.write({"status": 200})
    await asyncio.sleep(0)
    errors = [r for r in caplog.records if "access log" in r.getMessage()]
    assert len(errors) == 1  # said once, not once per line
