"""One admitted completion's round trip: reservation, slot, backend, answer, settlement.

An :class:`Exchange` owns everything a forwarded request holds, the way a streaming response
owns its stream: the RPM/TPM reservation, the concurrency slot (which a retry may move to
another deployment), the response the client gets (once it is prepared, a failure can only be
told inside the stream) and the access record it fills in. :meth:`Exchange.run` acquires them
in order and gives each back exactly once, however the exchange ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from time import perf_counter

from aiohttp import web

from fleetgate.gateway.accesslog import AccessRecord
from fleetgate.gateway.admission import SlotPool
from fleetgate.gateway.config import ModelConfig
from fleetgate.gateway.errors import GatewayError, bad_gateway, gateway_timeout
from fleetgate.gateway.http import ProtocolError, Response
from fleetgate.gateway.parse import ParsedRequest
from fleetgate.gateway.ratelimit import Quota
from fleetgate.gateway.state import GatewayState
from fleetgate.gateway.tokens import Admitted
from fleetgate.gateway.upstream import error_message

JSON_TYPE = "application/json"
_ENCODER = json.JSONEncoder(ensure_ascii=False)  # one for every upstream body
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# how long the request waited at the gateway for a slot: a client's TTFT includes it
QUEUE_WAIT_HEADER = "x-fleetgate-queue-wait-ms"
# vLLM serves the OpenAI paths: a request goes upstream under the path it came in on.
_UPSTREAM_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


class Exchange:
    """A completion request that passed the token checks, on its way through a deployment.

    It is the :class:`~fleetgate.gateway.upstream.SlotHolder` of its upstream send: a retry
    moves ``pool`` in place, so the slot given back at the end is the one really held.
    """

    __slots__ = (
        "_admitted",
        "_gw",
        "_model",
        "_out",
        "_payload",
        "_quota",
        "_req",
        "_request",
        "_served",
        "pool",
        "record",
    )
    pool: SlotPool  # set once a slot is held; a retry moves it to another deployment's

    def __init__(
        self,
        gw: GatewayState,
        request: web.Request,
        record: AccessRecord,
        model: ModelConfig,
        req: ParsedRequest,
        admitted: Admitted,
    ) -> None:
        self._gw = gw
        self._request = request
        self.record = record
        self._model = model
        self._req = req
        self._admitted = admitted
        self._quota = Quota(model.lane, model.rpm, model.tpm)
        self._out: web.StreamResponse | None = None  # the client's stream, once prepared
        self._served: str | None = None  # the served name the cached payload was built for
        self._payload = b""

    async def run(self) -> web.StreamResponse:
        """Reserve RPM/TPM, hold a slot, talk to the backend, settle on what was really used."""
        gw, model, rec = self._gw, self._model, self.record
        admitted, quota = self._admitted, self._quota
        await gw.limiter.reserve(quota, admitted.reserved)
        queued_at = perf_counter()
        try:
            self.pool = await gw.admission.acquire(
                model.lane,
                model.deployments,
                model.queue_depth,
                model.queue_wait_s,
                route=model.route,
                load_wait_s=model.load_wait_s,
                ordered=model.ordered,
            )
        except BaseException as exc:
            # A wait that ended without a slot is backpressure too: count it with how it ended.
            outcome = "left" if isinstance(exc, asyncio.CancelledError) else None
            if isinstance(exc, GatewayError) and exc.reason == "queue_timeout":
                outcome = "timed_out"
            if outcome is not None:
                rec.queue_wait_s = waited = perf_counter() - queued_at
                gw.metrics.queue_wait.labels(model.lane, outcome).observe(waited)
            await gw.limiter.settle(quota, admitted.reserved, 0)
            raise
        got_slot = perf_counter()
        rec.queue_wait_s = waited = got_slot - queued_at
        gw.metrics.queue_wait.labels(model.lane, "admitted").observe(waited)
        try:
            async with asyncio.timeout(gw.config.request_timeout_s):
                if self._req.stream:
                    return await self._stream()
                return await self._unary()
        except TimeoutError:
            error = gateway_timeout(
                f"the backend did not answer within request_timeout_s "
                f"({gw.config.request_timeout_s:g} s)"
            )
            if self._out is None:
                raise error from None
            # The stream already started: too late for a 504, so say it in the stream and end it.
            rec.reason = error.reason
            await _stream_error(self._out, error)
            return self._out
        finally:
            gw.admission.release(self.pool, perf_counter() - got_slot)
            await gw.limiter.settle(quota, admitted.reserved, admitted.used)

    def payload_for(self, served: str) -> bytes:
        """The upstream body for a deployment's served name (built again only if a retry moves
        to a deployment that serves the model under another name)."""
        if served != self._served:
            self._payload = _upstream_payload(self._req, self._admitted, served)
            self._served = served
        return self._payload

    async def _open(self) -> Response:
        gw, rec = self._gw, self.record
        path = _UPSTREAM_PATHS[self._req.kind]
        resp, attempts = await gw.upstream.send(self, self._model.deployments, path)
        pool = self.pool
        rec.deployment, rec.attempts = pool.name, attempts
        if attempts > 1:
            gw.metrics.retries.labels(pool.name).inc(attempts - 1)
        return resp

    async def _unary(self) -> web.StreamResponse:
        rec, admitted = self.record, self._admitted
        sent = perf_counter()
        resp = await self._open()
        if resp.status != 200:
            rec.status, rec.reason = resp.status, "upstream_refused"
            return await _refuse_upstream(resp)
        try:
            body = await resp.read()  # on cancellation (client gone) it drops the connection
        except ProtocolError as exc:
            raise bad_gateway(f"the backend dropped the answer: {exc}") from None
        self._gw.metrics.upstream_latency.labels(self.pool.name).observe(perf_counter() - sent)
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
            body=body,
            headers={"Content-Type": resp.headers.get("content-type", JSON_TYPE), **_waited(rec)},
        )

    async def _stream(self) -> web.StreamResponse:
        gw, rec, admitted = self._gw, self.record, self._admitted
        sent = perf_counter()
        resp = await self._open()
        if resp.status != 200:
            rec.status, rec.reason = resp.status, "upstream_refused"
            return await _refuse_upstream(resp)
        out = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **_waited(rec)})
        admitted.used = admitted.reserved
        finished = False
        try:
            await out.prepare(self._request)
            self._out = out
            rec.status = 200
            skip_blank = False
            first = True
            async for line in _lines(resp):
                if first:
                    first = False
                    rec.ttft_s = ttft = perf_counter() - sent
                    gw.metrics.ttft.labels(self.pool.name).observe(ttft)
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
                            if not chunk.get("choices") and not self._req.include_usage:
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
            gw.metrics.upstream_latency.labels(self.pool.name).observe(perf_counter() - sent)
        return out


def _waited(rec: AccessRecord) -> dict[str, str]:
    wait = rec.queue_wait_s
    return {} if wait is None else {QUEUE_WAIT_HEADER: f"{wait * 1000:.1f}"}


def _upstream_payload(req: ParsedRequest, admitted: Admitted, served_model: str) -> bytes:
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


async def _refuse_upstream(resp: Response) -> web.Response:
    """A non-200 from the backend: its 4xx as it is, anything else as 502."""
    body = await resp.read()
    if 400 <= resp.status < 500:
        return web.Response(
            status=resp.status,
            body=body,
            headers={"Content-Type": resp.headers.get("content-type", JSON_TYPE)},
        )
    raise bad_gateway(f"the backend answered {resp.status}: {error_message(body)}")


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
