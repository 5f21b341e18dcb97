"""The gateway against hostile peers: broken backends on loopback that write malformed bytes,
and clients that send what a careless or hostile client sends (issue: hardening)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from tests.support.gateway import eventually, make_fleet, sim_fleet

from fleetgate.gateway import RunningGateway, serve
from fleetgate.sim import SimConfig, SimServer

ROUTE = "r"
_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Answer = Callable[[bytes, bytes], bytes]  # (request line, body) -> raw response bytes


@asynccontextmanager
async def hostile_backend(answer: bytes | Answer, *, hold: bool = False) -> AsyncIterator[int]:
    """A backend that answers /health properly and every POST with ``answer``'s raw bytes;
    ``hold`` keeps the connection open afterwards instead of closing it."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                first = head.split(b"\r\n", 1)[0]
                if first.startswith(b"GET /health"):
                    writer.write(_HEALTH)
                    continue
                writer.write(answer(first, body) if callable(answer) else answer)
                await writer.drain()
                if hold:
                    held.append(writer)
                    return
                writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()


def fleet_doc(port: int, **gateway: Any) -> dict[str, Any]:
    gateway.setdefault("request_timeout_s", 30)
    return sim_fleet({"d1": (port, None, 4)}, {ROUTE: {"deployments": ["d1"]}}, **gateway)


@asynccontextmanager
async def gateway_for(
    port: int, **gateway: Any
) -> AsyncIterator[tuple[RunningGateway, io.StringIO]]:
    log = io.StringIO()
    async with serve(make_fleet(fleet_doc(port, **gateway)), access_stream=log) as gw:
        yield gw, log


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **kw}


async def post(url: str, body: Any, path: str = "/v1/chat/completions") -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data) as resp:
        return resp.status, await resp.read()


def access_lines(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 3)[3]) for line in log.getvalue().splitlines()]


def http(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


OK_BODY = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


# -- a hostile or broken backend cannot make the gateway lie -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", id="bad-status-line"),
        pytest.param(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}", id="bad-status-code"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n{}", id="header-without-colon"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", id="switching-protocols"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", id="negative-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
            id="negative-chunk",
        ),
    ],
)
async def test_a_malformed_answer_is_a_prompt_502(raw: bytes) -> None:
    async with hostile_backend(raw, hold=True) as port, gateway_for(port) as (gw, log):
        status, body = await post(gw.url, chat())
        assert status == 502, body
        assert json.loads(body)["error"]["code"] == "upstream_error"
    assert [line["status"] for line in access_lines(log)] == [502]


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 1},
        {"prompt_tokens": 10**400, "completion_tokens": 1},
    ],
    ids=["negative", "400-digits"],
)
async def test_implausible_usage_never_fails_the_request(usage: dict[str, int]) -> None:
    answer = json.dumps({"object": "chat.completion", "choices": [], "usage": usage}).encode()
    raw = http(f"HTTP/1.1 200 OK\nContent-Length: {len(answer)}", answer)
    async with hostile_backend(raw) as port, gateway_for(port) as (gw, log):
        status, body = await post(gw.url, chat())
        assert status == 200 and body == answer
    (line,) = access_lines(log)
    assert line["status"] == 200 and line["tokens_out"] is None


async def test_a_deeply_nested_answer_is_passed_on_and_logged() -> None:
    answer = b'{"usage": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    raw = http(f"HTTP/1.1 200 OK\nContent-Length: {len(answer)}", answer)
    async with hostile_backend(raw) as port, gateway_for(port) as (gw, log):
        status, body = await post(gw.url, chat())
        assert status == 200 and body == answer
    assert [line["status"] for line in access_lines(log)] == [200]


async def test_a_non_streamed_answer_over_the_cap_is_502() -> None:
    big = b'{"pad": "' + b"x" * 8192 + b'"}'
    raw = http(f"HTTP/1.1 200 OK\nContent-Length: {len(big)}", big)
    async with hostile_backend(raw) as port, gateway_for(port, max_response_bytes=4096) as (gw, _):
        status, body = await post(gw.url, chat())
        assert status == 502 and b"4096" in body
    async with hostile_backend(raw) as port, gateway_for(port, max_response_bytes=9000) as (gw, _):
        assert await post(gw.url, chat()) == (200, big)


async def test_an_error_event_never_lands_inside_a_half_written_event() -> None:
    # the backend dies after a data: line, before the blank line that ends its event
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n'
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    head = "HTTP/1.1 200 OK\nContent-Type: text/event-stream\nTransfer-Encoding: chunked"
    raw = http(head, chunk)
    async with hostile_backend(raw) as port, gateway_for(port) as (gw, _):
        status, body = await post(gw.url, chat(stream=True))
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert events[0] == event.rstrip(b"\n")
    error = json.loads(events[1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_error"


# -- a client fault is never a 5xx -------------------------------------------------------------


@asynccontextmanager
async def sim_gateway(
    route: dict[str, Any] | None = None, **gateway: Any
) -> AsyncIterator[tuple[RunningGateway, io.StringIO]]:
    sim = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, reply_tokens=4)
    log = io.StringIO()
    async with SimServer(sim) as backend:
        routes = {ROUTE: {"deployments": ["d1"], **(route or {})}}
        doc = sim_fleet({"d1": (backend.port, 512, 4)}, routes, **gateway)
        async with serve(make_fleet(doc), access_stream=log) as gw:
            yield gw, log


LONE = b'"\\ud83d"'  # half of an emoji, as a JavaScript client that cut a string sends it


@pytest.mark.parametrize(
    "raw, path, fragment",
    [
        pytest.param(
            b'{"model": "r", "messages": [{"role": "user", "content": ' + LONE + b"}]}",
            "/v1/chat/completions",
            b"surrogate",
            id="surrogate-chat",
        ),
        pytest.param(
            b'{"model": "r", "prompt": "hi", "user": ' + LONE + b"}",
            "/v1/completions",
            b"surrogate",
            id="surrogate-in-an-unread-field",
        ),
        pytest.param(
            b'{"model": "r", "prompt": ' + LONE + b"}", "/tokenize", b"surrogate", id="tokenize"
        ),
        pytest.param(
            b'{"model": "r", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e400}',
            "/v1/chat/completions",
            b"1e400",
            id="a-number-out-of-range",
        ),
        pytest.param(
            b'{"model": "r", "messages": [{"role": "user", "content": "hi"}], '
            b'"max_tokens": 50, "n": 300}',
            "/v1/chat/completions",
            b"lower max_tokens or n",
            id="n-over-a-minute-of-tpm",
        ),
    ],
)
async def test_a_client_fault_is_a_400(raw: bytes, path: str, fragment: bytes) -> None:
    async with sim_gateway({"tpm": 5000}) as (gw, log):
        status, body = await post(gw.url, raw, path)
        assert status == 400, body
        assert fragment in body
    assert [line["status"] for line in access_lines(log)] == [400]


async def test_nesting_around_the_decoder_limit_is_a_400() -> None:
    # Where the decoder gives up depends on the stack the handler runs on: around it, a body
    # the decoder just managed used to fail when encoded again for the backend (500).
    async with sim_gateway() as (gw, log):
        for depth in range(900, 1000, 3):
            raw = b'{"model": "r", "messages": [{"role": "user", "content": "hi"}], "x": '
            status, body = await post(gw.url, raw + b"[" * depth + b"]" * depth + b"}")
            assert status == 400 and b"nested" in body, (depth, body[:200])
        assert await post(gw.url, raw + b"[" * 100 + b"]" * 100 + b"}") == (200, ANY)
    assert {line["status"] for line in access_lines(log)} == {200, 400}


# -- bounded, whatever the peer does ------------------------------------------------------------


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a timing assertion
            return await reader.read()
    finally:
        writer.close()


HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def test_a_client_dribbling_its_headers_is_cut_off() -> None:
    async with sim_gateway(header_timeout_s=0.3) as (gw, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(HEAD.encode())
        try:
            async with asyncio.timeout(30):
                while not reader.at_eof():
                    writer.write(b"X-Slow: 1\r\n")  # never the blank line that ends the head
                    await asyncio.sleep(0.05)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
        finally:
            writer.close()


async def test_connections_past_the_cap_get_503_and_the_rest_are_served() -> None:
    async with sim_gateway(max_connections=3) as (gw, _):
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(3)]
        live = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await raw_exchange(gw.port, live)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"max_connections" in answer
        assert b"fleetgate_connections_refused_total 1.0" in gw.gateway.metrics.render()
        for _, writer in held:
            writer.close()
        # once the held ones are gone (the gateway sees them close soon after), a client is served
        for _ in range(200):
            answer = await raw_exchange(gw.port, live)
            if not answer.startswith(b"HTTP/1.1 503 "):
                break
            await asyncio.sleep(0.02)
        assert answer.startswith(b"HTTP/1.1 200 "), answer


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    async with sim_gateway(body_timeout_s=0.3) as (gw, log):
        answer = await raw_exchange(gw.port, f"{HEAD}Content-Length: 100\r\n\r\n{{".encode())
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body_timeout_s" in answer
    assert [line["status"] for line in access_lines(log)] == [408]


@pytest.mark.parametrize(
    "encoding, body",
    [
        pytest.param("deflate", zlib.compress(json.dumps(chat()).encode())[:-4], id="truncated"),
        pytest.param("deflate", b'{"model": "r"}', id="not-deflate"),
        pytest.param("gzip", b"\x1f\x8b" + b"junk" * 10, id="bad-gzip"),
        pytest.param("br", b"{}", id="unsupported"),
    ],
)
async def test_a_body_that_does_not_decompress_is_answered_at_once(encoding, body) -> None:
    # the head first, the body a moment later: aiohttp's own decompressor then never failed
    # the read of a body that did not decompress, and the request got no answer at all
    head = f"{HEAD}Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    async with sim_gateway() as (gw, log):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body)
        try:
            async with asyncio.timeout(30):
                answer = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
    assert answer.split(b" ", 2)[1] in (b"400", b"415"), answer
    assert [line["status"] for line in access_lines(log)] in ([400], [415])


async def test_compressed_bodies_are_read_and_capped_after_decompression() -> None:
    payload = json.dumps(chat()).encode()
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bodies = {
        "gzip": gzip.compress(payload),
        "deflate": zlib.compress(payload),
        "raw-deflate": raw_deflate.compress(payload) + raw_deflate.flush(),
    }
    async with sim_gateway(max_body_bytes=2048) as (gw, _), aiohttp.ClientSession() as s:
        for name, body in bodies.items():
            encoding = "deflate" if name == "raw-deflate" else name
            headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
            async with s.post(gw.url + "/v1/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200, (name, await r.text())
        bomb = gzip.compress(b" " * 1_000_000)  # a kilobyte that inflates to a megabyte
        headers = {"Content-Encoding": "gzip"}
        async with s.post(gw.url + "/v1/chat/completions", data=bomb, headers=headers) as r:
            assert r.status == 413


async def test_bodies_held_at_once_are_capped() -> None:
    async with sim_gateway(max_buffered_bytes=4000, max_body_bytes=4096) as (gw, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"{HEAD}Content-Length: 3000\r\n\r\n".encode() + b" " * 2500)
        await eventually(lambda: gw.gateway.bodies.held == 2500)
        status, body = await post(gw.url, chat(padding=" " * 1500))
        assert status == 503 and b"max_buffered_bytes" in body
        writer.write(b" " * 500)  # the first body ends (not JSON: 400) and gives its bytes back
        try:
            async with asyncio.timeout(30):
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 400 ")
        finally:
            writer.close()
        await eventually(lambda: gw.gateway.bodies.held == 0)
        assert (await post(gw.url, chat(padding=" " * 1500)))[0] == 200


# -- secrets and exposure ------------------------------------------------------------------------

SECRET = "sk-secret-never-logged-0001"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"Authorization: Bearer {SECRET}\x00x", id="nul"),
        pytest.param(f"Authorization: Bearer {SECRET}\rx", id="bare-cr"),
        pytest.param(f"X-A: 1\r\n Authorization: Bearer {SECRET}", id="obs-fold"),
        pytest.param(f"Authorization: Bearer {SECRET}{'a' * 9000}", id="over-8190-bytes"),
    ],
)
async def test_a_malformed_request_logs_one_short_line_without_its_headers(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with sim_gateway() as (gw, _):
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        request = f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n"
        answer = await raw_exchange(gw.port, request.encode("latin-1"))
        assert answer.split(b" ", 2)[1] == b"400", answer[:100]
        metrics = gw.gateway.metrics.render().decode()
    assert SECRET not in caplog.text
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].getMessage().startswith("refused a malformed request")
    assert lines[0].exc_info is None and len(lines[0].getMessage()) < 100
    assert "fleetgate_malformed_requests_total{" in metrics


OWNER, LIMITED, SCRAPER = "sk-owner-key-0001", "sk-limited-key-0002", "scrape-key-0003"


async def test_a_404_lists_only_the_models_the_key_may_use() -> None:
    keys = [
        {"name": "owner", "key": OWNER},
        {"name": "limited", "key": LIMITED, "routes": ["public-one"]},
    ]
    routes = {"public-one": {"deployments": ["d1"]}, "secret-project": {"deployments": ["d1"]}}
    doc = sim_fleet({"d1": (1, 512, 4)}, routes, api_keys=keys)
    async with serve(make_fleet(doc)) as gw, aiohttp.ClientSession() as s:
        for key, listed, hidden in [
            (LIMITED, "public-one", "secret-project"),
            (OWNER, "secret-project", None),
        ]:
            body = json.dumps(chat(model="nope")).encode()
            headers = {"Authorization": f"Bearer {key}"}
            async with s.post(gw.url + "/v1/chat/completions", data=body, headers=headers) as r:
                message = (await r.json())["error"]["message"]
                assert r.status == 404 and listed in message
                assert hidden is None or hidden not in message


async def test_metrics_and_readiness_are_open_unless_a_metrics_key_is_set() -> None:
    async with hostile_backend(b"") as port:
        doc = fleet_doc(port, api_keys=[{"name": "owner", "key": OWNER}])
        async with serve(make_fleet(doc)) as gw, aiohttp.ClientSession() as s:
            for path in ("/metrics", "/health/ready"):
                async with s.get(gw.url + path) as r:
                    assert r.status in (200, 503), path  # ready may still be probing
        doc["gateway"]["metrics_key"] = SCRAPER
        async with serve(make_fleet(doc)) as gw, aiohttp.ClientSession() as s:
            for path in ("/metrics", "/health/ready"):
                for headers, expected in [
                    ({}, {401}),
                    ({"Authorization": f"Bearer {OWNER}"}, {401}),  # a client key is not it
                    ({"Authorization": f"Bearer {SCRAPER}"}, {200, 503}),
                ]:
                    async with s.get(gw.url + path, headers=headers) as r:
                        assert r.status in expected, (path, headers, r.status)
            async with s.get(gw.url + "/health/live") as r:
                assert r.status == 200  # liveness stays open: it says nothing about the fleet


@asynccontextmanager
async def hung_redis() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that accepts and reads, and never answers: a hung (not dead) Redis.
    Yields its port and a one-element list counting the bytes it was sent."""
    received = [0]
    conns: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while data := await reader.read(65536):
            received[0] += len(data)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        for w in conns:
            w.close()
        server.close()


async def test_a_hung_redis_is_skipped_after_one_timeout_and_limits_stay_local(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fleetgate.gateway")
    sim = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, reply_tokens=4)
    async with hung_redis() as (redis_port, received), SimServer(sim) as backend:
        routes = {ROUTE: {"deployments": ["d1"], "rpm": 3, "tpm": 100_000}}
        doc = sim_fleet(
            {"d1": (backend.port, 512, 4)}, routes, redis_url=f"redis://127.0.0.1:{redis_port}/0"
        )
        async with serve(make_fleet(doc)) as gw:
            assert (await post(gw.url, chat()))[0] == 200  # one call timed out: admitted
            sent = received[0]
            assert sent > 0
            statuses = [(await post(gw.url, chat()))[0] for _ in range(3)]
            metrics = gw.gateway.metrics.render().decode()
    # Redis was not asked again while skipped; this process's own buckets still held rpm 3
    assert received[0] == sent
    assert statuses == [200, 200, 429]
    assert "fleetgate_ratelimit_store_failures_total 1.0" in metrics
    outages = [r for r in caplog.records if "rate limiter store unavailable" in r.getMessage()]
    assert len(outages) == 1


# -- shutdown -------------------------------------------------------------------------------------


async def test_the_drain_deadline_answers_everyone_in_progress() -> None:
    slow = SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=5.0, reply_tokens=None
    )
    async with SimServer(slow) as backend:
        routes = {ROUTE: {"deployments": ["d1"], "concurrency": 2, "queue_wait_s": 600}}
        doc = sim_fleet({"d1": (backend.port, 512, 4)}, routes, drain_timeout_s=0.3)
        async with serve(make_fleet(doc)) as gw, aiohttp.ClientSession() as s:
            url = gw.url + "/v1/chat/completions"
            first_event = asyncio.Event()

            async def stream() -> bytes:
                async with s.post(url, json=chat(stream=True, max_tokens=300)) as r:
                    assert r.status == 200
                    body = b""
                    async for piece in r.content.iter_any():
                        body += piece
                        first_event.set()
                    return body

            async def unary() -> tuple[int, Any]:
                async with s.post(url, json=chat(max_tokens=300)) as r:
                    return r.status, await r.json()

            streaming = asyncio.create_task(stream())
            await first_event.wait()
            running = asyncio.create_task(unary())
            await eventually(lambda: gw.gateway.admission.pools["d1"].in_use == 2)
            queued = asyncio.create_task(unary())
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
            await gw.drain()
            body, ran, waited = await asyncio.gather(streaming, running, queued)
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"data: {") and b'"choices"' in events[0]
    assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "shutting_down"
    for status, answer in (ran, waited):
        assert status == 503 and answer["error"]["code"] == "shutting_down"


def test_the_rendered_gateway_unit_waits_longer_than_the_drain() -> None:
    from fleetgate.render.gateway import gateway_files
    from fleetgate.render.source import Source

    for drain in (30, 100.5):
        doc = sim_fleet({"d1": (8000, 512, 4)}, {ROUTE: {"deployments": ["d1"]}})
        doc["gateway"]["drain_timeout_s"] = drain
        fleet = make_fleet(doc)
        files = gateway_files(Source(fleet=fleet, raw=doc, fleet_file="fleet.yaml"))
        (line,) = [
            ln
            for ln in files["fleetgate-gateway.service"].splitlines()
            if ln.startswith("TimeoutStopSec=")
        ]
        assert int(line.split("=")[1]) > drain


@pytest.mark.parametrize("signals", [1, 2], ids=["drain-deadline", "second-sigterm"])
def test_sigterm_drains_a_running_fleetgate_serve(tmp_path, signals: int) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import yaml
    from tests.support.vllm_server import free_port

    slow = SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=5.0, reply_tokens=None
    )
    with SimServer(slow).run_in_thread() as sim:
        port = free_port()
        # one signal: the 1 s deadline ends the stream; two: the second stops a 600 s drain
        drain = 1 if signals == 1 else 600
        doc = sim_fleet(
            {"d1": (sim.port, 512, 4)},
            {ROUTE: {"deployments": ["d1"]}},
            drain_timeout_s=drain,
        )
        doc["gateway"].update(port=port, listen="127.0.0.1")
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from fleetgate.cli import main; main()", "serve", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps(chat(stream=True, max_tokens=300)).encode(),
                headers={"Content-Type": "application/json"},
            )
            for _ in range(300):
                try:
                    answer = urllib.request.urlopen(request, timeout=60)
                    break
                except OSError:
                    assert proc.poll() is None
                    time.sleep(0.1)
            first = answer.readline()
            assert first.startswith(b"data: {")
            for _ in range(signals):
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
            rest = answer.read()
            out = proc.communicate(timeout=30)[0].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out
    assert "draining for up to" in out
    assert b'"code": "shutting_down"' in rest  # the stream was ended with an error event
    if signals == 2:
        assert "stopping at once" in out


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_requests_on_a_deployment_that_goes_down_get_502_at_once(stream: bool) -> None:
    """The backend takes the request and then hangs, health checks included."""
    hung = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if head.startswith(b"GET /health") and not hung.is_set():
                    writer.write(_HEALTH)
                    continue
                if head.startswith(b"POST") and stream:
                    event = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event)
                    )
                hung.set()  # from now on nothing answers, /health included
                await asyncio.Event().wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with gateway_for(port, request_timeout_s=600) as (gw, log):
            async with asyncio.timeout(60):  # a guard: the old code waited 600 s
                status, body = await post(gw.url, chat(stream=stream))
    finally:
        for w in writers:
            w.close()
        server.close()
    if stream:
        assert status == 200 and b"health checks" in body
    else:
        assert status == 502 and b"health checks" in body
    assert [line["status"] for line in access_lines(log)] == [status]


async def test_tokenize_takes_from_the_rpm_and_counting_is_bounded_per_deployment() -> None:
    running = [0, 0]  # /tokenize requests the backend is working on: now, at most

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if head.startswith(b"GET /health"):
                    writer.write(_HEALTH)
                    continue
                running[0] += 1
                running[1] = max(running)
                await asyncio.sleep(0.2)  # a long prompt being tokenized
                running[0] -= 1
                answer = b'{"count": 3, "max_model_len": 512, "tokens": [1, 2, 3]}'
                writer.write(http(f"HTTP/1.1 200 OK\nContent-Length: {len(answer)}", answer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = {"model": ROUTE, "prompt": "hello"}
    try:
        doc = sim_fleet({"d1": (port, None, 4)}, {ROUTE: {"deployments": ["d1"], "rpm": 8}})
        async with serve(make_fleet(doc)) as gw:
            results = await asyncio.gather(*(post(gw.url, body, "/tokenize") for _ in range(8)))
            assert [status for status, _ in results] == [200] * 8
            status, answer = await post(gw.url, body, "/tokenize")
            assert status == 429 and b"rpm" in answer
    finally:
        server.close()
    from fleetgate.gateway.upstream import COUNTS_PER_DEPLOYMENT

    assert running[1] == COUNTS_PER_DEPLOYMENT


async def test_a_request_holds_a_slot_per_sequence_it_runs() -> None:
    def batch(k: int) -> dict[str, Any]:
        return {"model": ROUTE, "prompt": ["hi"] * k, "max_tokens": 5}

    async with hostile_backend(b"", hold=True) as port, gateway_for(port) as (gw, _):
        pool = gw.gateway.admission.pools["d1"]  # 4 slots; the backend never answers
        three = asyncio.create_task(post(gw.url, batch(3), "/v1/completions"))
        await eventually(lambda: pool.in_use == 3)
        two = asyncio.create_task(post(gw.url, batch(2), "/v1/completions"))
        await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
        assert pool.in_use == 3  # 3 + 2 sequences would be over the backend's 4
        status, body = await post(gw.url, batch(5), "/v1/completions")
        assert status == 400 and b"5 sequences" in body
        status, body = await post(gw.url, chat(n=5))
        assert status == 400 and b"5 sequences" in body
        three.cancel()  # its client goes away: its 3 slots free, the queued one gets 2
        await eventually(lambda: pool.in_use == 2 and gw.gateway.admission.queued(ROUTE) == 0)
        two.cancel()
        await eventually(lambda: pool.in_use == 0)
        await asyncio.gather(three, two, return_exceptions=True)


async def test_a_reload_that_renames_a_deployment_keeps_its_slots_and_its_queue() -> None:
    slow = SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=20.0, reply_tokens=None
    )
    async with SimServer(slow) as backend:

        def doc(name: str) -> dict[str, Any]:
            routes = {ROUTE: {"deployments": [name], "concurrency": 1, "queue_wait_s": 120}}
            return sim_fleet({name: (backend.port, 512, 4)}, routes)

        current = {"doc": doc("old")}
        fleet = make_fleet(current["doc"])
        async with serve(fleet, loader=lambda: make_fleet(current["doc"])) as gw:
            running = asyncio.create_task(post(gw.url, chat(max_tokens=20)))
            await eventually(lambda: gw.gateway.admission.pools["old"].in_use == 1)
            queued = asyncio.create_task(post(gw.url, chat(max_tokens=2)))
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
            current["doc"] = doc("new")
            await gw.gateway.reload()
            pools = gw.gateway.admission.pools
            assert set(pools) == {"new"} and pools["new"].in_use == 1  # not 0: no over-admission
            assert gw.gateway.admission.queued(ROUTE) == 1  # still waiting, not failed
            (s1, _), (s2, _) = await asyncio.gather(running, queued)
            assert (s1, s2) == (200, 200)
            assert pools["new"].in_use == 0
