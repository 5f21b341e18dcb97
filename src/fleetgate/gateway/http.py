"""A small HTTP/1.1 client for the gateway's upstream hop, with pooled keep-alive connections.

Why not aiohttp's client: on this hop it costs about 140 µs of CPU per request, most of the
gateway's budget. The backends are known (vLLM or the simulator on a LAN): plain HTTP/1.1,
Content-Length or chunked bodies, no TLS, no redirects, no cookies. That fits in one protocol
class whose parser runs inside ``data_received`` and hands body pieces to the reader.

Errors tell the caller what is safe to retry: :class:`ConnectFailed` (no connection was made)
and :class:`Disconnected` (the server closed before sending a byte of the answer) mean the
request did not start a generation; :class:`ProtocolError` means it may have.
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_HIGH_WATER = 1024 * 1024  # pause reading when this much body is buffered and not consumed


class UpstreamError(Exception):
    """The upstream exchange failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, timed out connecting)."""


class Disconnected(UpstreamError):
    """The server closed the connection before any byte of the response."""


class ProtocolError(UpstreamError):
    """The response was cut short or could not be parsed."""


class ResponseTooLarge(ProtocolError):
    """A buffered body grew past the limit the reader set."""


def _decimal(text: str, what: str) -> int:
    """A non-negative decimal number as HTTP writes it (no sign, no spaces, no underscores)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValueError(f"bad {what} {text[:40]!r}")
    return int(text)


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 15 or text.strip(b"0123456789abcdefABCDEF"):
        raise ValueError(f"bad chunk size {text[:40]!r}")
    return int(text, 16)


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_EOF, _DONE = range(8)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: HttpClient, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._state = _DONE
        self._remaining = 0
        self._got_bytes = False
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.used = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except (ValueError, UnicodeDecodeError) as exc:
            self._fail(ProtocolError(f"malformed response: {exc}"))
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        if self._state == _UNTIL_EOF:
            self._state = _DONE
        elif self._state != _DONE:
            if self._state == _HEAD and not self._got_bytes:
                self._fail(Disconnected("the server closed the connection before answering"))
            else:
                self._fail(ProtocolError("the server closed the connection mid-response"))
        self._wake()

    def pause_writing(self) -> None:  # pragma: no cover - requests are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- parser -------------------------------------------------------------------------------

    def _push(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _parse(self) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ValueError("response head too large")
                    return
                self._head(bytes(buf[:end]))
                del buf[: end + 4]
            elif state == _LENGTH:
                take = min(self._remaining, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DONE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = _chunk_size(bytes(buf[:end]))
                del buf[: end + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._state, self._remaining = _CHUNK_DATA, size
            elif state == _CHUNK_DATA:
                take = min(self._remaining, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._state = _DONE
            elif state == _UNTIL_EOF:
                self._push(bytes(buf))
                buf.clear()
            else:
                raise ValueError("data after the end of the response")

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1") or len(parts[1]) != 3:
            raise ValueError(f"bad status line {lines[0][:100]!r}")
        status = _decimal(parts[1], "status")
        if status < 100 or status == 101:
            raise ValueError(f"unexpected status {status} (no protocol switch was asked for)")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            return  # an interim answer; the real one follows
        self.status, self.headers = status, headers
        self.keep_alive = (
            headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
        )
        if status in (204, 304):
            self._state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._remaining = _decimal(headers["content-length"], "Content-Length")
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _UNTIL_EOF
            self.keep_alive = False

    # -- the reader's side --------------------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def start(self, request: bytes) -> None:
        self.used = True
        self._state = _HEAD
        self._got_bytes = False
        self.status = 0
        assert self.transport is not None
        self.transport.write(request)

    async def head(self) -> None:
        while self._state == _HEAD and self._error is None:
            await self._wait()
        if self.status == 0 and self._error is not None:
            raise self._error

    async def next_piece(self) -> bytes | None:
        while True:
            if self._pieces:
                piece = self._pieces.popleft()
                self._buffered -= len(piece)
                if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                return piece
            if self._state == _DONE:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def finished(self) -> bool:
        return self._state == _DONE and not self._pieces and self._error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """A response whose head has arrived; read the body, then it goes back to the pool."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: HttpClient, conn: _Connection) -> None:
        self._pool, self._conn = pool, conn
        self.status = conn.status
        self.headers = conn.headers

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; over ``limit`` bytes it raises :class:`ResponseTooLarge` (and drops
        the connection) instead of buffering without end."""
        parts = []
        size = 0
        try:
            while (piece := await self._conn.next_piece()) is not None:
                parts.append(piece)
                size += len(piece)
                if limit is not None and size > limit:
                    raise ResponseTooLarge(f"the answer is over {limit} bytes")
        except BaseException:
            self.close()
            raise
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def next_piece(self) -> bytes | None:
        """The next piece of the body as it arrives (chunked framing removed); None at the end."""
        return await self._conn.next_piece()

    def release(self) -> None:
        """Back to the pool if the body was read to the end, else the connection is dropped."""
        conn = self._conn
        if conn.finished and conn.keep_alive and not conn.closed:
            self._pool._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection: the server sees the client go and stops the work."""
        self._conn.close()


class HttpClient:
    """Keep-alive connections per (host, port); one request at a time on each."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._connect_timeout = connect_timeout
        self._prefixes: dict[str, tuple[tuple[str, int], str]] = {}

    def _target(self, base_url: str) -> tuple[tuple[str, int], str]:
        target = self._prefixes.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or parts.hostname is None:
                raise ValueError(f"only http:// upstream URLs are supported, not {base_url!r}")
            port = parts.port or 80
            host_header = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            target = ((parts.hostname, port), f"{host_header}:{port}")
            self._prefixes[base_url] = target
        return target

    async def _connection(self, key: tuple[str, int], *, fresh: bool) -> _Connection:
        idle = None if fresh else self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, key), *key)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}"
            ) from None
        return conn

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> Response:
        """Send a request and wait for the response head. Cancelling drops the connection."""
        key, host = self._target(base_url)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        for fresh in (False, True):
            conn = await self._connection(key, fresh=fresh)
            reused = conn.used
            try:
                conn.start(head + body)
                await conn.head()
            except Disconnected:
                conn.close()
                if reused and not fresh:
                    continue  # the server had closed an idle connection: one more, fresh
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, conn)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
