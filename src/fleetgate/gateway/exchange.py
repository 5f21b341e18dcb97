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
from fleetgate.gateway.accounts import budget_levels
from fleetgate.gateway.admission import ANONYMOUS, SlotPool
from fleetgate.gateway.config import KeyConfig, ModelConfig
from fleetgate.gateway.errors import GatewayError, bad_gateway, gateway_timeout
from fleetgate.gateway.http import ProtocolError, Response
from fleetgate.gateway.keystore import Reservation
from fleetgate.gateway.parse import ParsedRequest
from fleetgate.gateway.ratelimit import Level, Quota, rate_limit_headers, refused_levels
from fleetgate.gateway.state import GatewayState
from fleetgate.gateway.tokens import Admitted
from fleetgate.gateway.upstream import error_message

JSON_TYPE = "application/json"
_ENCODER = json.JSONEncoder(ensure_ascii=False)  # one for every upstream body
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# how long the request waited at the gateway for a slot: a client's TTFT includes it
QUEUE_WAIT_HEADER = "x-fleetgate-queue-wait-ms"
# vLLM serves the OpenAI paths: a request goes upstream under the path it came in on.
_UPSTREAM_PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "responses": "/v1/responses",
}
# The backend's own name for the model; the body's ``model`` says the name the client asked for.
SERVED_MODEL_HEADER = "x-fleetgate-served-model"


class Exchange:
    """A completion request that passed the token checks, on its way through a deployment.

    It is the :class:`~fleetgate.gateway.upstream.SlotHolder` of its upstream send: a retry
    moves ``pool`` in place, so the slot given back at the end is the one really held.
    """

    __slots__ = (
        "_admitted",
        "_gw",
        "_headers",
        "_key",
        "_model",
        "_out",
        "_payload",
        "_quota",
        "_req",
        "_request",
        "_served",
        "_stop_error",
        "_tail",
        "_timeout",
        "pool",
        "record",
        "slots",
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
        key: KeyConfig | None = None,
    ) -> None:
        self._gw = gw
        self._key = key
        self._headers: dict[str, str] = {}  # x-ratelimit-* for every answer
        self._request = request
        self.record = record
        self._model = model
        self._req = req
        self._admitted = admitted
        self._quota = Quota(model.lane, model.rpm, model.tpm)
        self.slots = req.n * req.prompts  # sequences the backend runs for it at once
        self._out: web.StreamResponse | None = None  # the client's stream, once prepared
        self._served: str | None = None  # the served name the cached payload was built for
        self._payload = b""
        self._tail = b"\n"  # the last line written into the stream
        self._timeout: asyncio.Timeout | None = None  # request_timeout_s, once a slot is held
        self._stop_error: GatewayError | None = None  # why stop() ended it

    async def run(self) -> web.StreamResponse:
        """Reserve RPM/TPM and the key's budgets, hold a slot, talk to the backend, settle on
        what was really used. Every answer, refusals included, says the tightest limits."""
        try:
            response = await self._run()
        except GatewayError as exc:
            exc.headers.update(self._headers)
            raise
        if not response.prepared:  # a stream carries them from its start
            response.headers.update(self._headers)
        return response

    async def _run(self) -> web.StreamResponse:
        gw, model, rec, key = self._gw, self._model, self.record, self._key
        admitted, quota = self._admitted, self._quota
        claimant = key.claimant if key is not None else ANONYMOUS
        try:
            levels: list[Level] = await gw.limiter.reserve(quota, admitted.reserved)
        except GatewayError as exc:
            self._headers = rate_limit_headers(refused_levels(quota, exc))
            raise
        self._headers = rate_limit_headers(levels)
        booked: Reservation | None = None
        if key is not None and key.budgets:
            hold_s = model.queue_wait_s + gw.config.request_timeout_s + 60
            try:
                booked = await gw.accounts.reserve(key, model.lane, admitted.reserved, hold_s)
            except BaseException:
                gw.settle_later(quota, admitted.reserved, 0)
                raise
            if booked is not None:
                levels += budget_levels(booked.levels)
                self._headers = rate_limit_headers(levels)
        queued_at = perf_counter()
        try:
            self.pool = await gw.admission.acquire(
                model.lane,
                model.deployments,
                model.queue_depth,
                model.queue_wait_s,
                route=model.route,
                slots=self.slots,
                load_wait_s=model.load_wait_s,
                ordered=model.ordered,
                claimant=claimant,
            )
        except BaseException as exc:
            # A wait that ended without a slot is backpressure too: count it with how it ended.
            outcome = "left" if isinstance(exc, asyncio.CancelledError) else None
            if isinstance(exc, GatewayError) and exc.reason == "queue_timeout":
                outcome = "timed_out"
            if outcome is not None:
                rec.queue_wait_s = waited = perf_counter() - queued_at
                gw.metrics.queue_wait.labels(model.lane, outcome).observe(waited)
            gw.settle_later(quota, admitted.reserved, 0)
            if booked is not None:
                gw.run_later(gw.accounts.release(booked))
            raise
        got_slot = perf_counter()
        rec.queue_wait_s = waited = got_slot - queued_at
        gw.metrics.queue_wait.labels(model.lane, "admitted").observe(waited)
        gw.exchanges.add(self)
        try:
            async with asyncio.timeout(gw.config.request_timeout_s) as self._timeout:
                if self._req.stream:
                    return await self._stream()
                return await self._unary()
        except TimeoutError:
            if self._stop_error is not None:
                error = self._stop_error
            else:
                error = gateway_timeout(
                    f"the backend did not answer within request_timeout_s "
                    f"({gw.config.request_timeout_s:g} s)"
                )
            if self._out is None:
                raise error from None
            # The stream already started: too late for a 504, so say it in the stream and end it.
            rec.reason = error.reason
            await _stream_error(self._out, error, self._tail)
            return self._out
        finally:
            gw.exchanges.discard(self)
            gw.admission.release(
                self.pool, perf_counter() - got_slot, self.slots, claimant=claimant
            )
            gw.settle_later(quota, admitted.reserved, admitted.used)
            if key is not None:
                self._account(key, booked)

    def _account(self, key: KeyConfig, booked: Reservation | None) -> None:
        """Count the request against its key, after the answer: the backend's usage where it
        reported one, the reservation where it answered without; nothing if none answered."""
        gw, admitted, rec = self._gw, self._admitted, self.record
        if not admitted.used:
            if booked is not None:
                gw.run_later(gw.accounts.release(booked))
            return
        prompt = rec.tokens_in if rec.tokens_in is not None else admitted.prompt_tokens
        completion = rec.tokens_out if rec.tokens_out is not None else admitted.used - prompt
        gw.run_later(gw.accounts.settle(booked, key, self._model.lane, prompt, max(0, completion)))

    def stop(self, error: GatewayError) -> None:
        """End the exchange now with ``error`` (the drain deadline passed, its deployment went
        down): the error as the answer, or as an event in a stream that already started, and
        the backend's connection dropped."""
        if self._timeout is not None and self._stop_error is None:
            self._stop_error = error
            self._timeout.reschedule(asyncio.get_running_loop().time())

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
            return await _refuse_upstream(resp, self._gw.config.max_response_bytes)
        try:
            # on cancellation (client gone) it drops the connection
            body = await resp.read(self._gw.config.max_response_bytes)
        except ProtocolError as exc:
            raise bad_gateway(f"the backend dropped the answer: {exc}") from None
        self._gw.metrics.upstream_latency.labels(self.pool.name).observe(perf_counter() - sent)
        admitted.used = admitted.reserved
        try:
            usage = _usage_total(json.loads(body).get("usage"))
        except (ValueError, AttributeError, RecursionError):
            usage = None
        if usage is not None:
            rec.tokens_in, rec.tokens_out = usage
            admitted.used = usage[0] + usage[1]
        rec.status = 200
        return web.Response(
            body=self._renamed(body),
            headers={
                "Content-Type": resp.headers.get("content-type", JSON_TYPE),
                SERVED_MODEL_HEADER: self._served or "",
                **_waited(rec),
            },
        )

    def _renamed(self, data: bytes) -> bytes:
        """``data`` with the backend's model name replaced by the one the client asked for.

        Only JSON structure can hold the bytes ``"model":"<served>"``: inside a JSON string
        every quote is escaped, so generated text is never touched.
        """
        served, asked = self._served, self._model.name
        if served is None or served == asked:
            return data
        for sep in (b":", b": "):
            old = b'"model"' + sep + json.dumps(served).encode()
            if old in data:
                data = data.replace(old, b'"model"' + sep + json.dumps(asked).encode())
        return data

    async def _stream(self) -> web.StreamResponse:
        gw, rec, admitted = self._gw, self.record, self._admitted
        sent = perf_counter()
        resp = await self._open()
        if resp.status != 200:
            rec.status, rec.reason = resp.status, "upstream_refused"
            return await _refuse_upstream(resp, self._gw.config.max_response_bytes)
        out = web.StreamResponse(
            status=200,
            headers={
                **_SSE_HEADERS,
                SERVED_MODEL_HEADER: self._served or "",
                **_waited(rec),
                **self._headers,
            },
        )
        admitted.used = admitted.reserved
        finished = False
        try:
            await out.prepare(self._request)
            self._out = out
            rec.status = 200
            skip_blank = False
            first = True
            responses = self._req.kind == "responses"
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
                    except (ValueError, RecursionError):
                        chunk = None
                    if isinstance(chunk, dict):
                        # chat/completions: a usage chunk; Responses: response.completed
                        response = chunk.get("response")
                        holder = response if isinstance(response, dict) else chunk
                        usage = _usage_total(holder.get("usage"))
                        if usage is not None:
                            rec.tokens_in, rec.tokens_out = usage
                            admitted.used = usage[0] + usage[1]
                            if (
                                not responses
                                and not chunk.get("choices")
                                and not self._req.include_usage
                            ):
                                skip_blank = True
                                continue
                line = self._renamed(line)
                await out.write(line)
                self._tail = line
            finished = True
            await out.write_eof()
        except ProtocolError as exc:
            rec.reason = "upstream_error"
            error = bad_gateway(f"the backend dropped the stream: {exc}")
            await _stream_error(out, error, self._tail)
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
    if req.kind == "responses":
        if admitted.max_tokens is not None:
            body["max_output_tokens"] = admitted.max_tokens
        return _ENCODER.encode(body).encode()
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


# More tokens than any one answer can hold: a usage over it is a broken backend, not a count.
_MAX_USAGE = 1 << 32


def _count(value: object) -> int | None:
    """``value`` if it is a plausible token count (not a bool, a negative or a 400-digit one)."""
    return value if type(value) is int and 0 <= value < _MAX_USAGE else None


def _usage_total(usage: object) -> tuple[int, int] | None:
    """The prompt and completion tokens of a backend's usage (chat/completions or Responses
    names), if both are plausible counts."""
    if not isinstance(usage, dict):
        return None
    p = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    c = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    return (p, c) if p is not None and c is not None else None


async def _refuse_upstream(resp: Response, limit: int) -> web.Response:
    """A non-200 from the backend: its 4xx as it is, anything else as 502."""
    try:
        body = await resp.read(limit)
    except ProtocolError as exc:
        raise bad_gateway(f"the backend answered {resp.status} and then: {exc}") from None
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


async def _stream_error(out: web.StreamResponse, error: GatewayError, tail: bytes) -> None:
    """The error as an event of its own: the event the backend left half-written (``tail``,
    the last line passed on, is not a blank line) is ended first, so it is not appended to."""
    if not tail.endswith(b"\n"):
        end = b"\n\n"
    elif tail.strip():
        end = b"\n"
    else:
        end = b""
    try:
        await out.write(end + b"data: " + json.dumps(error.body()).encode() + b"\n\n")
        await out.write_eof()
    except ConnectionError:
        pass
