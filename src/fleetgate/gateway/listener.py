"""The listening side: how many connections are kept, and what a malformed request logs.

* :class:`CappedSite` accepts at most ``max_connections`` at once; past it, a connection gets a
  503 and is closed at once, so slow or idle clients cannot take every file descriptor.
  (How long a connection may take to send its request head is aiohttp's keep-alive timer,
  set from ``header_timeout_s``: it closes a connection that has no complete request.)
* :class:`ServerLog` is the logger aiohttp's request handler is given. aiohttp logs a request
  it cannot parse at ERROR with the raw header line (an ``Authorization: Bearer ...`` among
  them); here that is one short line with the error's kind only, and a metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger("fleetgate.gateway")
_aiohttp_log = logging.getLogger("aiohttp.server")


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": "the gateway has too many open connections (max_connections); "
                "retry shortly",
                "type": "service_unavailable_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_answer()


class _Refused(asyncio.Protocol):
    """A connection over the cap: told so, and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class CappedSite(web.BaseSite):
    """A TCP site that keeps at most ``max_connections`` connections open at once."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: Callable[[], int],
        on_refused: Callable[[], None],
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._cap = max_connections  # read per connection: a reload may change it
        self._on_refused = on_refused

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def accept() -> asyncio.Protocol:
            if len(server.connections) >= self._cap():
                self._on_refused()
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            accept, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with what a client sent kept out of it."""

    def __init__(self, on_malformed: Callable[[str], None]) -> None:
        super().__init__(_aiohttp_log, {})
        self._on_malformed = on_malformed

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            self.malformed(exc)
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            self.malformed(exc, level=logging.DEBUG)
            return
        super().debug(msg, *args, exc_info=exc_info, **kw)

    def malformed(self, exc: BaseException, level: int = logging.WARNING) -> None:
        """One line naming the kind of error; its message may quote the raw request."""
        kind = exc.__class__.__name__
        self._on_malformed(kind)
        log.log(level, "refused a malformed request: %s", kind)
