"""The model endpoints: admission in the documented order, then the upstream round trip.

Order: API key (401/403) -> body (413/400) -> model (404) -> a healthy deployment (503) ->
token limits (400) -> RPM/TPM (429) -> a concurrency slot (429 when the queue is full or the
wait runs out) -> upstream (502/504; a backend's 4xx is passed through as it is). The checks
up to the token limits are here; from the reservation on, an
:class:`~fleetgate.gateway.exchange.Exchange` holds the request.

``/tokenize`` takes the same path up to a healthy deployment, takes one request from the lane's
RPM (no TPM, no slot), then asks the backend for its count; counts run at most
:data:`~fleetgate.gateway.upstream.COUNTS_PER_DEPLOYMENT` at once per deployment.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web

from fleetgate.gateway.accesslog import AccessRecord
from fleetgate.gateway.auth import authenticate
from fleetgate.gateway.body import read_body
from fleetgate.gateway.config import KeyConfig, ModelConfig
from fleetgate.gateway.errors import GatewayError, forbidden, not_found, shutting_down
from fleetgate.gateway.exchange import JSON_TYPE, Exchange
from fleetgate.gateway.parse import parse_request, parse_tokenize
from fleetgate.gateway.ratelimit import Quota
from fleetgate.gateway.state import GatewayState
from fleetgate.gateway.tokens import check_tokens

log = logging.getLogger("fleetgate.gateway")


async def completions(request: web.Request, gw: GatewayState, kind: str) -> web.StreamResponse:
    """``/v1/chat/completions`` (``kind`` "chat"), ``/v1/completions`` ("completion") or
    ``/v1/responses`` ("responses"): one admission for all three."""

    async def handle(rec: AccessRecord) -> web.StreamResponse:
        config = gw.config
        key = authenticate(gw.accounts, request)
        rec.key = key.name if key else None
        raw = await read_body(request, config.max_body_bytes, gw.bodies, config.body_timeout_s)
        req = parse_request(kind, raw)
        rec.stream = req.stream
        model = _resolve(gw, key, req.model, rec)
        admitted = await check_tokens(gw.upstream, model, req)
        rec.tokens_in = admitted.prompt_tokens
        return await Exchange(gw, request, rec, model, req, admitted, key).run()

    # the endpoint label, as /metrics says it
    return await _recorded(gw, request, _ENDPOINT_LABELS[kind], handle)


_ENDPOINT_LABELS = {"chat": "chat", "completion": "completions", "responses": "responses"}


async def tokenize(request: web.Request, gw: GatewayState) -> web.StreamResponse:
    """The backend's own token count (and max_model_len) for a prompt under a public name, so
    a client can build a prompt of an exact length: the smoke probe does."""

    async def handle(rec: AccessRecord) -> web.StreamResponse:
        config = gw.config
        key = authenticate(gw.accounts, request)
        rec.key = key.name if key else None
        raw = await read_body(request, config.max_body_bytes, gw.bodies, config.body_timeout_s)
        name, payload = parse_tokenize(raw)
        model = _resolve(gw, key, name, rec)
        # a count asked for is a request like any other: it takes one from the lane's RPM
        await gw.limiter.reserve(Quota(model.lane, model.rpm, None), 0)
        await gw.admission.ensure_serving(
            model.lane, model.route, model.deployments, model.queue_depth, model.load_wait_s
        )
        answer = await gw.upstream.tokenize(model.deployments, payload)
        rec.deployment, rec.tokens_in, rec.status = answer.deployment, answer.count, 200
        return web.Response(body=json.dumps(answer.body).encode(), content_type=JSON_TYPE)

    return await _recorded(gw, request, "tokenize", handle)


async def _recorded(
    gw: GatewayState,
    request: web.Request,
    endpoint: str,
    handle: Callable[[AccessRecord], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Run one request's handling so that every outcome (an answer, a refusal, a client gone)
    ends in one metrics update, one access-log line, and its body's bytes given back."""
    started = perf_counter()
    rec = AccessRecord(endpoint)
    gw.request_started()
    try:
        if gw.draining:
            raise shutting_down()
        return await handle(rec)
    except GatewayError as exc:
        rec.status, rec.reason = exc.status, exc.reason
        return exc.response()
    except (asyncio.CancelledError, ConnectionError):
        rec.status, rec.reason = 499, "client_disconnected"
        raise
    finally:
        gw.request_ended()
        gw.bodies.release(request)
        _finish(gw, rec, started)


def _resolve(gw: GatewayState, key: KeyConfig | None, name: str, rec: AccessRecord) -> ModelConfig:
    """The public model ``name`` if it exists (404), the key may use it (403) and one of its
    deployments is up (503)."""
    config = gw.config
    model = config.models.get(name)
    if model is None:
        # only the names this key may use: a limited key learns nothing of the others
        usable = sorted(n for n, m in config.models.items() if key is None or key.allows(m))
        raise not_found(
            f"the model {name[:200]!r} does not exist on this gateway; "
            f"available: {', '.join(usable) or 'none for this API key'}"
        )
    rec.model, rec.lane = model.name, model.lane
    if key is not None and not key.allows(model):
        raise forbidden(f"the API key {key.name!r} is not allowed to use {model.name!r}")
    gw.admission.require_healthy(model.route, model.deployments)
    return model


def _finish(gw: GatewayState, rec: AccessRecord, started: float) -> None:
    """Metrics, then the access line, which is written even if accounting failed: the
    request itself is already answered and must neither fail nor go unlogged for it."""
    try:
        gw.metrics.requests.labels(
            rec.lane or "", rec.endpoint, str(rec.status), rec.reason or ""
        ).inc()
        counted = rec.endpoint != "tokenize"  # a count asked for is not a token served
        served_in = served_out = 0
        if counted and rec.tokens_in is not None and rec.lane is not None and rec.status == 200:
            served_in, served_out = rec.tokens_in, rec.tokens_out or 0
            gw.metrics.tokens.labels(rec.lane, "in").inc(served_in)
            if served_out:
                gw.metrics.tokens.labels(rec.lane, "out").inc(served_out)
        gw.monitor.keys.record(rec.key, rec.status, served_in, served_out)
        if rec.key is not None and rec.status >= 400 and rec.reason:
            gw.accounts.refused(rec.key, rec.lane or "", rec.reason)
    except Exception:
        log.exception("metrics update failed for a %s request", rec.endpoint)
    finally:
        gw.access_log.write(rec.line(round(perf_counter() - started, 6)))
