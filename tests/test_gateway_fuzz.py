"""Hostile and malformed requests at every endpoint: the gateway answers, and never with a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.gateway import make_fleet, sim_fleet

from fleetgate.gateway import serve
from fleetgate.sim import SimConfig, SimServer

KEY = "sk-fuzz-key-0001"
ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/tokenize",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/admin/reload",
]


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    sim_cfg = SimConfig(model="tiny", max_model_len=256, max_num_seqs=4, decode_tps=5000.0)
    with SimServer(sim_cfg).run_in_thread() as sim:
        doc = sim_fleet(
            {"d1": (sim.port, 256, 4)},
            {
                "tiny": {
                    "deployments": ["d1"],
                    "max_input_tokens": 128,
                    "max_output_tokens": 16,
                    "profiles": {"tiny-burst": {"queue_depth": 4}},
                }
            },
            api_keys=[{"name": "fuzz", "key": KEY}],
            admin_key="admin-fuzz-0002",
            max_body_bytes=8192,
            request_timeout_s=10,
        )
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()
        port: list[int] = []

        async def main() -> None:
            async with serve(make_fleet(doc)) as gw:
                port.append(gw.port)
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10)
        yield port[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["tiny", "tiny-burst", "user", "assistant", "text"]),
)
keys = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "include_usage",
        "n",
        "role",
        "content",
        "type",
        "text",
        "tools",
        "chat_template",
        "temperature",
        "logprobs",
        "echo",
        "stop",
    ]
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(keys | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=25,
)
chatish = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny", "tiny-burst", "nope", ""]) | json_leaf},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "x"]) | json_leaf},
                optional={"content": json_value},
            ),
            max_size=3,
        )
        | json_value,
        "prompt": json_value,
        "max_tokens": st.integers(-5, 400) | json_leaf,
        "stream": st.booleans() | json_leaf,
        "stream_options": json_value,
        "n": st.integers(-1, 3) | json_leaf,
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    chatish.map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda d: json.dumps(d).encode()),
    st.sampled_from(
        [
            b"[" * 5000,
            b'{"model": "tiny", "messages": ' + b"[" * 3000,
            b"\xff\xfe",
            b'{"model": "tiny", "max_tokens": NaN}',
            b"x" * 9000,
        ]
    ),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.sampled_from([f"Bearer {KEY}", "Bearer", "Basic abc", ""])
        | header_text,
        "Content-Type": header_text,
        "x-api-key": header_text,
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
        "Transfer-Encoding": st.sampled_from(["chunked"]),
    },
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(ENDPOINTS)
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
        lambda p: "/" + p
    ),
    body=bodies,
    extra=headers,
)
def test_no_request_gets_a_5xx(
    gateway_port: int, method: str, path: str, body: bytes, extra: dict[str, str]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=20)
    try:
        hdrs: dict[str, Any] = {"Authorization": f"Bearer {KEY}", **extra}
        if hdrs.get("Transfer-Encoding") == "chunked":
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (resp.status, payload[:300])


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
        b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",
    ],
)
def test_broken_http_is_refused_without_a_5xx(gateway_port: int, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gateway_port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:  # closing without an answer is acceptable for garbage
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/tokenize"]),
    body=chatish.map(lambda d: json.dumps(d).encode()),
    extra=headers,
)
def test_no_completion_request_gets_a_5xx(
    gateway_port: int, path: str, body: bytes, extra: dict[str, str]
) -> None:
    test_no_request_gets_a_5xx.hypothesis.inner_test(gateway_port, "POST", path, body, extra)
