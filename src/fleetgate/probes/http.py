"""A small OpenAI-API client for probing: every answer kept, errors included, never raised.

The official clients hide status codes, headers and stream timing behind exceptions and
retries; a probe needs exactly those, so it talks aiohttp directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import aiohttp

# The gateway's answer says how long the request was queued there for a slot (milliseconds):
# a client's time to first token includes that wait.
QUEUE_WAIT_HEADER = "x-fleetgate-queue-wait-ms"


@dataclass
class Reply:
    """One HTTP exchange. ``status`` 0 means no HTTP answer (connection refused, timeout)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    transport_error: str | None = None  # a short word: connection_refused, dns_error, timeout
    transport_detail: str = ""  # what the OS or aiohttp said, for people

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any]:
        """The OpenAI-style ``error`` object (vLLM's old flat form too), or ``{}``."""
        body = self.body
        if isinstance(body, dict):
            if isinstance(body.get("error"), dict):
                return body["error"]
            if body.get("object") == "error":
                return body
        return {}

    @property
    def error_code(self) -> str:
        """A short word for counting refusals: the error code, else the status, else the fault."""
        if self.transport_error:
            return self.transport_error
        code = self.error.get("code")
        return str(code) if code not in (None, "") else str(self.status)

    @property
    def message(self) -> str:
        return str(self.error.get("message") or self.transport_detail or self.transport_error or "")

    def summary(self) -> str:
        """One line for a person: the fault and its detail, else the status and the message."""
        if self.transport_error:
            detail = self.transport_detail
            return f"{self.transport_error} ({detail})" if detail else self.transport_error
        text = self.message or (self.body if isinstance(self.body, str) else "")
        return f"{self.status} {text[:160]}".strip()

    def header(self, name: str) -> str | None:
        """A header of the answer, by its name in any case."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def queue_wait_s(self) -> float | None:
        """How long a fleetgate gateway queued the request (None from anything else)."""
        value = self.header(QUEUE_WAIT_HEADER)
        try:
            return max(0.0, float(value)) / 1000 if value is not None else None
        except ValueError:
            return None

    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None


@dataclass
class StreamEvent:
    """One SSE ``data:`` payload and when it arrived (seconds since the request was sent)."""

    at_s: float
    data: dict[str, Any]


class ApiClient:
    """Async client for one base URL; use as ``async with ApiClient(url, key) as api``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 600.0,
        connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=self._connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ApiClient as an async context manager")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """One exchange: ``body`` is sent as JSON, or ``content`` as the bytes given (a probe may
        send a malformed body on purpose); ``headers`` add to the client's or replace them (a
        wrong key, say)."""
        started = monotonic()
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                data=content,
                headers=headers,
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                return Reply(resp.status, _decode(raw), dict(resp.headers), monotonic() - started)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return _failed(exc, monotonic() - started)

    async def models(self) -> Reply:
        return await self.request("GET", "/v1/models")

    async def tokenize(self, model: str, messages: list[dict[str, str]]) -> Reply:
        return await self.request("POST", "/tokenize", {"model": model, "messages": messages})

    async def chat(self, body: dict[str, Any], *, timeout_s: float | None = None) -> Reply:
        return await self.request("POST", "/v1/chat/completions", body, timeout_s=timeout_s)

    async def stream_chat(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> tuple[Reply, AsyncIterator[StreamEvent] | None]:
        """Open a streamed chat completion.

        Returns the reply (status and headers; the body too when it is not a stream) and, for a
        200, an iterator of events that must be consumed to the end (it closes the response).
        """
        started = monotonic()
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        try:
            resp = await self.session.post(
                self.base_url + "/v1/chat/completions", json=body, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return _failed(exc, monotonic() - started), None
        reply = Reply(resp.status, None, dict(resp.headers), monotonic() - started)
        if resp.status != 200:
            try:
                reply.body = _decode(await resp.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                reply.transport_error, reply.transport_detail = _fault(exc), _detail(exc)
            finally:
                resp.release()
            return reply, None
        return reply, _events(resp, started)


async def _events(resp: aiohttp.ClientResponse, started: float) -> AsyncIterator[StreamEvent]:
    try:
        async for line in resp.content:
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("data:"):
                continue
            payload = text[5:].strip()
            if payload == "[DONE]":
                return
            try:
                data = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                yield StreamEvent(monotonic() - started, data)
    finally:
        resp.release()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _failed(exc: BaseException, elapsed_s: float) -> Reply:
    return Reply(0, None, {}, elapsed_s, _fault(exc), _detail(exc))


def _fault(exc: BaseException) -> str:
    """A short word for why no HTTP answer came, to count failures by."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(exc.os_error, TimeoutError):
            return "connect_timeout"
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "disconnected"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url"
    return type(exc).__name__


def _detail(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
