"""A minimal, fast vLLM stand-in for benchmarks: canned answers over raw asyncio HTTP/1.1.

It answers /v1/chat/completions and /v1/completions (plain or SSE), /tokenize and /health,
with keep-alive and Content-Length bodies only. It exists so that a benchmark measures the
gateway, not the backend: it does no work beyond parsing the request line and headers.

    python bench/fast_backend.py --port 9101
"""

from __future__ import annotations

import argparse
import asyncio
import json

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench backend."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}},
]
_STREAM = (
    b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in _CHUNKS) + b"data: [DONE]\n\n"
)


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_OK = _response(b"200 OK", _COMPLETION)
_SSE = _response(b"200 OK", _STREAM, b"text/event-stream")
_HEALTH = _response(b"200 OK", b"")
_NOT_FOUND = _response(b"404 Not Found", b'{"error": {"message": "not found"}}')


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(self._answer(head.split(b" ", 2), body))  # type: ignore[union-attr]

    @staticmethod
    def _answer(request_line: list[bytes], body: bytes) -> bytes:
        path = request_line[1] if len(request_line) > 1 else b""
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            return _SSE if b'"stream": true' in body or b'"stream":true' in body else _OK
        if path == b"/tokenize":
            count = max(1, len(body) // 4)
            return _response(b"200 OK", b'{"count": %d, "max_model_len": 8192}' % count)
        if path == b"/health":
            return _HEALTH
        return _NOT_FOUND


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.host, args.port))
