"""The completion endpoints: admission in the documented order, then the upstream round trip.

Order: API key (401/403) -> body (413/400) -> model (404) -> a healthy deployment (503) ->
token limits (400) -> RPM/TPM (429) -> a concurrency slot (429 when the queue is full or the
wait runs out) -> upstream (502/504; a backend's 4xx is passed through as it is).

``/tokenize`` takes the same path up to a healthy deployment, then asks it for its count
(no limits, no slot: counting is cheap and admission itself relies on it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from fleetgate.gateway.admission import SlotPool
from fleetgate.gateway.config import GatewayConfig, KeyConfig, ModelConfig, hash_key
from fleetgate.gateway.errors import (
    GatewayError,
    bad_gateway,
    bad_request,
    context_length,
    forbidden,
    gateway_timeout,
    not_found,
    too_large,
    unauthorized,
)
from fleetgate.gateway.http import ProtocolError, Response
from fleetgate.gateway.parse import ParsedRequest, parse_request, parse_tokenize
from fleetgate.gateway.ratelimit import Quota
from fleetgate.gateway.state import GatewayState
from fleetgate.gateway.upstream import error_message

_JSON_TYPE = "application/json"
_ENCODER = json.JSONEncoder(ensure_ascii=False)  # one for every upstream body
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def authenticate(config: GatewayConfig, request: web.Request) -> KeyConfig | None:
    """The caller's key, or 401. An open gateway (no keys configured) admits everyone."""
    if config.open:
        return None
    header = request.headers.get("Authorization")
    token = ""
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            token = ""
    else:
        token = request.headers.get("x-api-key", "")
    token = token.strip()
    if not token:
        raise unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
    key = config.keys.get(hash_key(token))
    if key is None:
        raise unauthorized("the API key is not valid")
    return key


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 from its Content-Length or as soon as it grows past the limit
    (chunked and compressed bodies are counted as they arrive, after decompression)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(declared, limit)
    body = bytearray()
    content = request.content
    try:
        while chunk := await content.readany():
            body += chunk
            if len(body) > limit:
                raise too_large(len(body), limit)
    except (RequestPayloadError, HttpProcessingError) as exc:
        # a broken chunked framing or a body that does not decompress: the client's fault
        raise bad_request(f"could not read the request body: {exc.__class__.__name__}") from None
    return bytes(body)


class _Record:
    """What one request's access-log line says (never the key itself)."""

    __slots__ = (
        "attempts",
        "deployment",
        "endpoint",
        "key",
        "lane",
        "model",
        "queue_wait_s",
        "reason",
        "status",
        "stream",
        "tokens_in",
        "tokens_out",
        "ttft_s",
    )

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.model = self.lane = self.deployment = self.key = self.reason = None
        self.status = 0
        self.queue_wait_s = self.ttft_s = None
        self.tokens_in = self.tokens_out = None
        self.attempts = 0
        self.stream = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class Admitted:
    """A request that passed the token checks: what it reserves and what it may generate."""

    __slots__ = ("max_tokens", "prompt_tokens", "reserved", "used")

    def __init__(self, prompt_tokens: int, max_tokens: int | None, reserved: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.reserved = reserved
        # Settled at the end: nothing if the backend never answered 200, the reservation if it
        # answered without usage, the real usage when it reported one.
        self.used = 0


async def check_tokens(gw: GatewayState, model: ModelConfig, req: ParsedRequest) -> Admitted:
    """Prompt and output limits, counted by the backend unless the byte bound already fits."""
    asked = req.max_tokens
    limit_in, limit_out, context = (
        model.max_input_tokens,
        model.max_output_tokens,
        model.max_model_len,
    )
    bound = req.bound
    needed_out = asked or limit_out or 1
    if asked is not None and limit_out is not None and asked > limit_out:
        needed_out = limit_out if model.clamp_max_tokens else asked
    fits = (
        bound is not None
        and (limit_in is None or bound <= limit_in)
        and (context is None or bound + needed_out <= context)
    )
    if fits:
        prompt = bound
    else:
        lengths = req.token_id_prompt_lengths()
        payloads = req.tokenize_payloads()
        for payload in payloads:
            lengths.append(await gw.upstream.count_tokens(model.deployments, payload))
        prompt = max(lengths)
    param = "messages" if req.kind == "chat" else "prompt"
    if limit_in is not None and prompt > limit_in:
        raise context_length(
            f"the prompt is {prompt} tokens, over the maximum of {limit_in} input tokens "
            f"allowed on {model.name!r}",
            param=param,
        )
    max_tokens = asked
    if asked is not None and limit_out is not None and asked > limit_out:
        if not model.clamp_max_tokens:
            raise bad_request(
                f"max_tokens={asked} is over the maximum of {limit_out} output tokens "
                f"allowed on {model.name!r}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        max_tokens = limit_out
    if context is not None:
        if max_tokens is not None and prompt + max_tokens > context:
            raise context_length(
                f"the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) is "
                f"{prompt + max_tokens} tokens, over the model's context length of {context} "
                "tokens",
                param="max_tokens",
            )
        if max_tokens is None and prompt >= context:
            raise context_length(
                f"the prompt ({prompt} tokens) leaves no room to answer within the model's "
                f"context length of {context} tokens",
                param=param,
            )
    if max_tokens is None and limit_out is not None:
        max_tokens = limit_out if context is None else min(limit_out, context - prompt)
    out = max_tokens if max_tokens is not None else (context - prompt if context else 0)
    reserved = req.prompts * (prompt + req.n * out)
    return Admitted(prompt, max_tokens, reserved)


def upstream_payload(req: ParsedRequest, admitted: Admitted, served_model: str) -> bytes:
    """The client's body for one deployment: its served name, the effective max_tokens, and
    usage always requested on streams (the gateway settles TPM on it)."""
    body = req.body
    body["model"] = served_model
    if admitted.max_tokens is not None:
        if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
            body["max_completion_tokens"] = admitted.max_tokens
            if body.get("max_tokens") is not None:
                body["max_tokens"] = admitted.max_tokens
        else:
            body["max_tokens"] = admitted.max_tokens
    if req.stream:
        options = body.get("stream_options") or {}
        body["stream_options"] = {**options, "include_usage": True}
    return _ENCODER.encode(body).encode()


def _usage_total(usage: object) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(p, int) and isinstance(c, int):
        return p, c
    return None


async def _recorded(
    gw: GatewayState, endpoint: str, handle: Callable[[_Record], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run one request's handling so that every outcome (an answer, a refusal, a client gone)
    ends in one metrics update and one access-log line."""
    started = perf_counter()
    rec = _Record(endpoint)
    try:
        return await handle(rec)
    except GatewayError as exc:
        rec.status, rec.reason = exc.status, exc.reason
        return exc.response()
    except (asyncio.CancelledError, ConnectionError):
        rec.status, rec.reason = 499, "client_disconnected"
        raise
    finally:
        _finish(gw, rec, started)


async def completions(
    request: web.Request, gw: GatewayState, kind: str, path: str
) -> web.StreamResponse:
    async def handle(rec: _Record) -> web.StreamResponse:
        config = gw.config
        key = authenticate(config, request)
        rec.key = key.name if key else None
        raw = await read_body(request, config.max_body_bytes)
        req = parse_request(kind, raw)
        rec.stream = req.stream
        model = _resolve(gw, key, req.model, rec)
        admitted = await check_tokens(gw, model, req)
        rec.tokens_in = admitted.prompt_tokens
        quota = Quota(model.lane, model.rpm, model.tpm)
        await gw.limiter.reserve(quota, admitted.reserved)
        return await _forward(request, gw, model, req, admitted, path, rec, quota)

    # the endpoint label, as /metrics says it
    return await _recorded(gw, "chat" if kind == "chat" else "completions", handle)


async def tokenize(request: web.Request, gw: GatewayState) -> web.StreamResponse:
    """The backend's own token count (and max_model_len) for a prompt under a public name, so
    a client can build a prompt of an exact length: the smoke probe does."""

    async def handle(rec: _Record) -> web.StreamResponse:
        config = gw.config
        key = authenticate(config, request)
        rec.key = key.name if key else None
        raw = await read_body(request, config.max_body_bytes)
        name, payload = parse_tokenize(raw)
        model = _resolve(gw, key, name, rec)
        answer = await gw.upstream.tokenize(model.deployments, payload)
        rec.deployment, rec.tokens_in, rec.status = answer.deployment, answer.count, 200
        return web.Response(body=json.dumps(answer.body).encode(), content_type=_JSON_TYPE)

    return await _recorded(gw, "tokenize", handle)


def _resolve(gw: GatewayState, key: KeyConfig | None, name: str, rec: _Record) -> ModelConfig:
    """The public model ``name`` if it exists (404), the key may use it (403) and one of its
    deployments is up (503)."""
    config = gw.config
    model = config.models.get(name)
    if model is None:
        raise not_found(
            f"the model {name[:200]!r} does not exist on this gateway; "
            f"available: {', '.join(sorted(config.models))}"
        )
    rec.model, rec.lane = model.name, model.lane
    if key is not None and not key.allows(model):
        raise forbidden(f"the API key {key.name!r} is not allowed to use {model.name!r}")
    gw.admission.require_healthy(model.route, model.deployments)
    return model


async def _forward(
    request: web.Request,
    gw: GatewayState,
    model: ModelConfig,
    req: ParsedRequest,
    admitted: Admitted,
    path: str,
    rec: _Record,
    quota: Quota,
) -> web.StreamResponse:
    """Hold a slot, talk to the backend, settle the reservation on what was really used."""
    queued_at = perf_counter()
    try:
        pool = await gw.admission.acquire(
            model.lane, model.deployments, model.queue_depth, model.queue_wait_s, route=model.route
        )
    except BaseException as exc:
        # A wait that ended without a slot is backpressure too: count it with how it ended.
        outcome = "left" if isinstance(exc, asyncio.CancelledError) else None
        if isinstance(exc, GatewayError) and exc.reason == "queue_timeout":
            outcome = "timed_out"
        if outcome is not None:
            rec.queue_wait_s = perf_counter() - queued_at
            gw.metrics.queue_wait.labels(model.lane, outcome).observe(rec.queue_wait_s)
        await gw.limiter.settle(quota, admitted.reserved, 0)
        raise
    got_slot = perf_counter()
    rec.queue_wait_s = got_slot - queued_at
    gw.metrics.queue_wait.labels(model.lane, "admitted").observe(rec.queue_wait_s)
    holder = [pool]
    prepared: list[web.StreamResponse] = []
    try:
        async with asyncio.timeout(gw.config.request_timeout_s):
            if req.stream:
                return await _stream(request, gw, model, req, admitted, path, rec, holder, prepared)
            return await _unary(gw, model, req, admitted, path, rec, holder)
    except TimeoutError:
        error = gateway_timeout(
            f"the backend did not answer within request_timeout_s "
            f"({gw.config.request_timeout_s:g} s)"
        )
        if not prepared:
            raise error from None
        # The stream already started: too late for a 504, so say it in the stream and end it.
        rec.reason = error.reason
        await _stream_error(prepared[0], error)
        return prepared[0]
    finally:
        gw.admission.release(holder[0], perf_counter() - got_slot)
        await gw.limiter.settle(quota, admitted.reserved, admitted.used)


async def _open(
    gw: GatewayState,
    model: ModelConfig,
    req: ParsedRequest,
    admitted: Admitted,
    path: str,
    rec: _Record,
    holder: list[SlotPool],
) -> Response:
    payloads: dict[str, bytes] = {}

    def payload_for(served: str) -> bytes:
        if served not in payloads:
            payloads[served] = upstream_payload(req, admitted, served)
        return payloads[served]

    resp, pool, attempts = await gw.upstream.send(holder[0], model.deployments, path, payload_for)
    holder[0] = pool
    rec.deployment, rec.attempts = pool.name, attempts
    if attempts > 1:
        gw.metrics.retries.labels(pool.name).inc(attempts - 1)
    return resp


async def _refuse_upstream(resp: Response) -> web.Response:
    """A non-200 from the backend: its 4xx as it is, anything else as 502."""
    body = await resp.read()
    if 400 <= resp.status < 500:
        return web.Response(
            status=resp.status,
            body=body,
            headers={"Content-Type": resp.headers.get("content-type", _JSON_TYPE)},
        )
    raise bad_gateway(f"the backend answered {resp.status}: {error_message(body)}")


async def _unary(
    gw: GatewayState,
    model: ModelConfig,
    req: ParsedRequest,
    admitted: Admitted,
    path: str,
    rec: _Record,
    holder: list[SlotPool],
) -> web.StreamResponse:
    sent = perf_counter()
    resp = await _open(gw, model, req, admitted, path, rec, holder)
    if resp.status != 200:
        rec.status, rec.reason = resp.status, "upstream_refused"
        return await _refuse_upstream(resp)
    try:
        body = await resp.read()  # on cancellation (client gone) it drops the connection
    except ProtocolError as exc:
        raise bad_gateway(f"the backend dropped the answer: {exc}") from None
    gw.metrics.upstream_latency.labels(holder[0].name).observe(perf_counter() - sent)
    admitted.used = admitted.reserved
    try:
        usage = _usage_total(json.loads(body).get("usage"))
    except (ValueError, AttributeError):
        usage = None
    if usage is not None:
        rec.tokens_in, rec.tokens_out = usage
        admitted.used = usage[0] + usage[1]
    rec.status = 200
    return web.Response(
        body=body, headers={"Content-Type": resp.headers.get("content-type", _JSON_TYPE)}
    )


async def _stream(
    request: web.Request,
    gw: GatewayState,
    model: ModelConfig,
    req: ParsedRequest,
    admitted: Admitted,
    path: str,
    rec: _Record,
    holder: list[SlotPool],
    prepared: list[web.StreamResponse],
) -> web.StreamResponse:
    sent = perf_counter()
    resp = await _open(gw, model, req, admitted, path, rec, holder)
    if resp.status != 200:
        rec.status, rec.reason = resp.status, "upstream_refused"
        return await _refuse_upstream(resp)
    out = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    admitted.used = admitted.reserved
    finished = False
    try:
        await out.prepare(request)
        prepared.append(out)
        rec.status = 200
        skip_blank = False
        first = True
        async for line in _lines(resp):
            if first:
                first = False
                rec.ttft_s = perf_counter() - sent
                gw.metrics.ttft.labels(holder[0].name).observe(rec.ttft_s)
            if skip_blank:
                skip_blank = False
                if not line.strip():
                    continue
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    chunk = None
                if isinstance(chunk, dict):
                    usage = _usage_total(chunk.get("usage"))
                    if usage is not None:
                        rec.tokens_in, rec.tokens_out = usage
                        admitted.used = usage[0] + usage[1]
                        if not chunk.get("choices") and not req.include_usage:
                            skip_blank = True
                            continue
            await out.write(line)
        finished = True
        await out.write_eof()
    except ProtocolError as exc:
        rec.reason = "upstream_error"
        await _stream_error(out, bad_gateway(f"the backend dropped the stream: {exc}"))
    finally:
        if finished:
            resp.release()
        else:
            resp.close()  # drop the connection so the backend aborts the generation
        gw.metrics.upstream_latency.labels(holder[0].name).observe(perf_counter() - sent)
    return out


async def _lines(resp: Response) -> AsyncIterator[bytes]:
    """The body split after each newline, as SSE is framed."""
    pending = b""
    while (piece := await resp.next_piece()) is not None:
        pending += piece
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            yield pending[start : end + 1]
            start = end + 1
        pending = pending[start:]
    if pending:
        yield pending


async def _stream_error(out: web.StreamResponse, error: GatewayError) -> None:
    try:
        await out.write(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
        await out.write_eof()
    except ConnectionError:
        pass


def _finish(gw: GatewayState, rec: _Record, started: float) -> None:
    gw.metrics.requests.labels(
        rec.lane or "", rec.endpoint, str(rec.status), rec.reason or ""
    ).inc()
    counted = rec.endpoint != "tokenize"  # a count asked for is not a token served
    if counted and rec.tokens_in is not None and rec.lane is not None and rec.status == 200:
        gw.metrics.tokens.labels(rec.lane, "in").inc(rec.tokens_in)
        if rec.tokens_out:
            gw.metrics.tokens.labels(rec.lane, "out").inc(rec.tokens_out)
    line = rec.as_dict()
    line["duration_s"] = round(perf_counter() - started, 6)
    gw.access_log.write(line)
