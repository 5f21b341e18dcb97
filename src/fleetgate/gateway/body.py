"""Reading a client's request body: bounded in size, in time, and in memory across requests.

The gateway decompresses bodies itself (aiohttp's decompression is turned off): when
aiohttp's decompressor fails at the end of a body, the reader is never told and the request
hangs without an answer. Here a body that does not decompress is a 400 at once, one that
grows past ``max_body_bytes`` after decompression a 413, and one that does not arrive within
``body_timeout_s`` a 408.

:class:`BodyBudget` caps the bytes of bodies held at once, from the first byte read until the
request ends: a burst of large bodies gets 503 instead of the gateway's memory.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from fleetgate.gateway.errors import GatewayError, bad_request, too_large, unavailable

_HELD = web.RequestKey("fleetgate_body_bytes", int)
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class BodyBudget:
    """Bytes of request bodies held by requests in progress, capped at ``cap``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0

    def take(self, request: web.Request, size: int) -> None:
        if self.held + size > self.cap:
            raise unavailable(
                f"the gateway already holds {self.held} bytes of request bodies, and this one "
                f"would go over its limit of {self.cap} bytes (max_buffered_bytes); retry "
                "shortly",
                retry_after=1,
            )
        self.held += size
        request[_HELD] = request.get(_HELD, 0) + size

    def release(self, request: web.Request) -> None:
        """Give back what ``request`` took (safe to call more than once)."""
        size = request.get(_HELD, 0)
        if size:
            self.held -= size
            request[_HELD] = 0


class _Inflater:
    """gzip or deflate; deflate is zlib-wrapped as the RFC says, or raw as some clients send
    it, told apart by the first byte (as aiohttp and browsers do)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._zlib: zlib._Decompress | None = None

    @property
    def done(self) -> bool:
        return self._zlib is not None and self._zlib.eof

    @property
    def overflowed(self) -> bool:
        return self._zlib is not None and bool(self._zlib.unconsumed_tail)

    def feed(self, chunk: bytes, room: int) -> bytes:
        """Up to ``room`` bytes of output for ``chunk``; 400 if it does not decompress."""
        if self._zlib is None:
            wbits = _GZIP_WBITS if self._gzip else zlib.MAX_WBITS
            if not self._gzip and chunk[0] & 0x0F != 8:
                wbits = -zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(wbits)
        try:
            if self._zlib.eof:
                raise zlib.error("data after the end of the compressed stream")
            return self._zlib.decompress(chunk, room)
        except zlib.error as exc:
            raise bad_request(f"the request body does not decompress: {exc}") from None


def _decompressor(request: web.Request) -> _Inflater | None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater(gzip=encoding != "deflate")
    raise GatewayError(
        415,
        f"Content-Encoding {encoding[:40]!r} is not supported: send gzip, deflate or identity",
        reason="unsupported_encoding",
        code="unsupported_content_encoding",
    )


async def read_body(
    request: web.Request,
    limit: int,
    budget: BodyBudget | None = None,
    timeout_s: float | None = None,
) -> bytes:
    """The (decompressed) body, refused with 413 from its Content-Length or as soon as it grows
    past ``limit``, 400 if it does not decompress, 408 if it has not arrived in ``timeout_s``,
    503 if holding it would go over ``budget``."""
    declared = request.content_length
    decompress = _decompressor(request)
    if declared is not None and declared > limit:
        raise too_large(declared, limit)
    body = bytearray()
    content = request.content
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await content.readany():
                if decompress is not None:
                    chunk = decompress.feed(chunk, limit - len(body) + 1)
                    if decompress.overflowed:  # more output than the limit allows
                        raise too_large(limit + 1, limit)
                body += chunk
                if budget is not None:
                    budget.take(request, len(chunk))
                if len(body) > limit:
                    raise too_large(len(body), limit)
        if decompress is not None and not decompress.done:
            raise bad_request("the request body is cut short: its compressed stream has no end")
    except TimeoutError:
        raise GatewayError(
            408,
            f"the request body did not arrive within {timeout_s:g} s (body_timeout_s)",
            reason="body_timeout",
            code="request_timeout",
        ) from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        # a broken chunked framing: the client's fault
        raise bad_request(f"could not read the request body: {exc.__class__.__name__}") from None
    return bytes(body)
