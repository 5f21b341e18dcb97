"""The aiohttp application: routes, and a server that runs it (in a test or as a service)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from fleetgate.fleetfile import PERIODS, Fleet, KeySpec, http_url, reachable
from fleetgate.gateway import ui
from fleetgate.gateway.auth import authenticate, authenticate_admin, authenticate_scraper
from fleetgate.gateway.config import GatewayConfig, ModelConfig
from fleetgate.gateway.cors import add_cors_headers, cors_middleware
from fleetgate.gateway.errors import GatewayError, bad_request, not_found, unauthorized
from fleetgate.gateway.keystore import KeyStoreError, UsageRow
from fleetgate.gateway.listener import CappedSite, ServerLog
from fleetgate.gateway.metrics import CONTENT_TYPE
from fleetgate.gateway.proxy import completions, tokenize
from fleetgate.gateway.readiness import Readiness
from fleetgate.gateway.state import FleetLoader, GatewayState, ReloadError

log = logging.getLogger("fleetgate.gateway")

GATEWAY = web.AppKey("gateway", GatewayState)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await completions(request, request.app[GATEWAY], "chat")


async def text_completions(request: web.Request) -> web.StreamResponse:
    return await completions(request, request.app[GATEWAY], "completion")


async def responses(request: web.Request) -> web.StreamResponse:
    return await completions(request, request.app[GATEWAY], "responses")


async def tokenize_prompt(request: web.Request) -> web.StreamResponse:
    return await tokenize(request, request.app[GATEWAY])


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        key = authenticate(gw.accounts, request)
    except GatewayError as exc:
        return exc.response()
    data = [model_card(m) for m in gw.config.models.values() if key is None or key.allows(m)]
    return _json({"object": "list", "data": data})


def model_card(m: ModelConfig) -> dict[str, object]:
    """OpenAI's model card, plus a ``fleetgate`` object saying what the name is (a route, a
    profile of one, an alias of one) and the limits it enforces, so a probe given only the URL
    tests what a probe given the fleet file tests."""
    return {
        "id": m.name,
        "object": "model",
        "created": 0,
        "owned_by": "fleetgate",
        "root": m.route,
        "max_model_len": m.max_model_len,
        "max_input_tokens": m.max_input_tokens,
        "max_output_tokens": m.max_output_tokens,
        "fleetgate": {
            "kind": m.kind,
            # a profile's route; an alias's route or profile; a route is its own
            "target": None if m.kind == "route" else m.route if m.kind == "profile" else m.lane,
            "route": m.route,
            "limits": {
                "max_model_len": m.max_model_len,
                "max_input_tokens": m.max_input_tokens,
                "max_output_tokens": m.max_output_tokens,
                "clamp_max_tokens": m.clamp_max_tokens,
                "rpm": m.rpm,
                "tpm": m.tpm,
                "queue_depth": m.queue_depth,
                "queue_wait_s": m.queue_wait_s,
            },
        },
    }


async def get_model(request: web.Request) -> web.Response:
    """One model's card; a name the key may not use is as unknown as a missing one (404)."""
    gw = request.app[GATEWAY]
    name = request.match_info["model"]
    try:
        key = authenticate(gw.accounts, request)
        model = gw.config.models.get(name)
        if model is None or (key is not None and not key.allows(model)):
            raise not_found(f"the model {name[:200]!r} does not exist on this gateway")
    except GatewayError as exc:
        return exc.response()
    return _json(model_card(model))


async def live(request: web.Request) -> web.Response:
    """Liveness: the process answers (``/health`` as vLLM and most proxies answer it)."""
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready while at least one route has a deployment that serves or can be brought up on
    demand; each route's state listed, and each on-demand deployment's lifecycle state."""
    gw = request.app[GATEWAY]
    try:
        authenticate_scraper(gw.config, request)
    except GatewayError as exc:
        return exc.response()
    routes: dict[str, dict[str, list[str]]] = {}
    for m in gw.config.models.values():
        if m.name != m.route:
            continue
        up = [d for d in m.deployments if gw.upstream.serving(d)]
        startable = [d for d in m.deployments if d not in up and gw.admission.any_healthy((d,))]
        routes[m.name] = {
            "up": up,
            "on_demand": startable,
            "down": [d for d in m.deployments if d not in up and d not in startable],
        }
    is_ready = any(r["up"] or r["on_demand"] for r in routes.values())
    body: dict[str, object] = {"ready": is_ready, "routes": routes}
    if gw.readiness is not None:
        body["deployments"] = gw.readiness.status()
    return _json(body, 200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        authenticate_scraper(gw.config, request)
    except GatewayError as exc:
        return exc.response()
    body = gw.metrics.render()
    if gw.readiness is not None:
        body += gw.readiness.metrics_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def admin_reload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        authenticate_admin(gw.config, request)
    except GatewayError as exc:
        return exc.response()
    try:
        config = await gw.reload()
    except ReloadError as exc:
        return GatewayError(
            400,
            f"reload refused, the old configuration keeps serving: {exc}",
            reason="reload_refused",
            code="invalid_fleet",
        ).response()
    return _json({"reloaded": True, "models": sorted(config.models)})


def _usage_json(rows: list[UsageRow], period: str) -> dict[str, object]:
    return {
        "period": period,
        "usage": [
            {
                "key": r.key,
                "route": r.route,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "refusals": r.refusals,
            }
            for r in rows
        ],
    }


async def usage(request: web.Request) -> web.Response:
    """``GET /v1/usage?period=day|week|month[&key=NAME]``: a client key sees its own usage,
    the admin key everyone's."""
    gw = request.app[GATEWAY]
    period = request.query.get("period", "day")
    if period not in PERIODS:
        return bad_request(f"period must be day, week or month, not {period[:20]!r}").response()
    try:
        authenticate_admin(gw.config, request)
        name = request.query.get("key")
    except GatewayError:
        try:
            key = authenticate(gw.accounts, request)
        except GatewayError as exc:
            return exc.response()
        if key is None:
            return unauthorized("usage is per key: send a client key or the admin key").response()
        name = key.name
    return _json(_usage_json(await gw.accounts.usage(period, name), period))


async def _key_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _admin(
    handler: Callable[[GatewayState, web.Request], Awaitable[web.Response]],
) -> Handler:
    """An admin endpoint: the admin key first, store and input errors as 400/404."""

    async def run(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        try:
            authenticate_admin(gw.config, request)
            return await handler(gw, request)
        except GatewayError as exc:
            return exc.response()
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return bad_request(f"invalid key: {detail}").response()
        except KeyStoreError as exc:
            status = 404 if "no key named" in str(exc) else 409
            return GatewayError(status, str(exc), reason="key_store").response()

    return run


async def _list_keys(gw: GatewayState, request: web.Request) -> web.Response:
    fleet = [
        {"name": k.name, "source": "fleet", "routes": sorted(k.routes), "priority": k.priority}
        for k in gw.config.keys.values()
    ]
    stored = [
        {
            "name": k.name,
            "source": "store",
            "routes": list(k.routes),
            "priority": k.priority,
            "max_concurrency": k.max_concurrency,
            "budgets": k.budgets.model_dump(exclude_none=True),
            "keys_valid": len(k.digests),
        }
        for k in await asyncio.to_thread(gw.accounts.store.list_keys)
    ]
    return _json({"keys": fleet + stored})


async def _create_key(gw: GatewayState, request: web.Request) -> web.Response:
    spec = KeySpec.model_validate(await _key_body(request))
    return _json({"name": spec.name, "key": await gw.accounts.create(spec)}, 201)


async def _rotate_key(gw: GatewayState, request: web.Request) -> web.Response:
    body = await _key_body(request)
    grace = body.get("grace_s", 3600)
    if not isinstance(grace, int | float) or grace < 0:
        raise bad_request("grace_s must be a number of seconds, 0 or more", param="grace_s")
    name = request.match_info["name"]
    return _json({"name": name, "key": await gw.accounts.rotate(name, float(grace))})


async def _revoke_key(gw: GatewayState, request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await gw.accounts.revoke(name)
    return _json({"name": name, "revoked": True})


async def fallback(request: web.Request) -> web.Response:
    """Unknown paths and methods get OpenAI-style errors too; ``OPTIONS`` on an endpoint says
    what it allows (a browser's CORS preflight is answered before this, see :mod:`.cors`)."""
    allowed = _METHODS.get(request.path)
    if allowed is None and request.path.startswith("/v1/models/"):
        allowed = ("GET",)
    if allowed is not None and request.method == "OPTIONS":
        return web.Response(status=204, headers={"Allow": ", ".join((*allowed, "OPTIONS"))})
    if allowed is not None:
        return GatewayError(
            405,
            f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}",
            reason="bad_method",
        ).response()
    return GatewayError(
        404, f"no such endpoint: {request.path[:200]}", reason="not_found"
    ).response()


def _with_gateway(
    handler: Callable[[web.Request, GatewayState], Awaitable[web.StreamResponse]],
) -> Handler:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[GATEWAY])

    return bound


# Every endpoint once: the router is built from this table, and the fallback's 405 reads it.
# Each GET endpoint answers HEAD too.
_ENDPOINTS: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/v1/completions", text_completions),
    ("POST", "/v1/responses", responses),
    ("GET", "/v1/models", list_models),
    ("GET", "/v1/models/{model:.+}", get_model),
    ("POST", "/tokenize", tokenize_prompt),
    ("GET", "/health", live),
    ("GET", "/health/live", live),
    ("GET", "/health/ready", ready),
    ("GET", "/metrics", metrics),
    ("POST", "/admin/reload", admin_reload),
    *((method, path, _with_gateway(handler)) for method, path, handler in ui.ENDPOINTS),
    ("GET", "/v1/usage", usage),
    ("GET", "/admin/keys", _admin(_list_keys)),
    ("POST", "/admin/keys", _admin(_create_key)),
    ("POST", "/admin/keys/{name}/rotate", _admin(_rotate_key)),
    ("DELETE", "/admin/keys/{name}", _admin(_revoke_key)),
)
_METHODS: dict[str, tuple[str, ...]] = {}
for _method, _path, _ in _ENDPOINTS:
    if "{" not in _path:
        _METHODS[_path] = (*_METHODS.get(_path, ()), _method)


def create_app(
    fleet: Fleet,
    *,
    loader: FleetLoader | None = None,
    access_stream: TextIO | None = None,
    gpu_memory: Mapping[str, Mapping[str, Any]] | None = None,
    readiness: Readiness | None = None,
) -> web.Application:
    """The gateway for a fleet that passed ``check_fleet``; ``loader`` re-reads it on reload;
    ``readiness`` brings on-demand deployments up (it runs while the gateway does).

    Access lines go to ``access_stream`` if given, else to the ``fleetgate.gateway.access``
    logger (see :mod:`fleetgate.gateway.accesslog`). ``gpu_memory``: the plan's memory split
    per deployment, as plain data, for the /ui page (the gateway does not plan).
    """
    gateway = GatewayState(GatewayConfig.from_fleet(fleet), loader, access_stream, readiness)
    gateway.monitor.gpu_memory = {name: dict(split) for name, split in (gpu_memory or {}).items()}
    # Body size is enforced by the gateway itself (with an OpenAI-style 413), not by aiohttp.
    app = web.Application(client_max_size=0, middlewares=[cors_middleware(lambda: gateway.config)])
    app[GATEWAY] = gateway
    app[ui.SIGN_IN_GUARD] = ui.SignInGuard()
    app.on_response_prepare.append(add_cors_headers)
    for method, path, handler in _ENDPOINTS:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method, path, handler)
    app.router.add_route("*", "/{tail:.*}", fallback)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    return app


@dataclass
class RunningGateway:
    url: str
    port: int
    app: web.Application
    runner: web.AppRunner

    @property
    def gateway(self) -> GatewayState:
        return self.app[GATEWAY]

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting connections, then :meth:`GatewayState.drain` (``timeout_s`` defaults
        to the fleet file's ``drain_timeout_s``)."""
        for site in self.runner.sites:
            await site.stop()
        gw = self.gateway
        await gw.drain(gw.config.drain_timeout_s if timeout_s is None else timeout_s)


@asynccontextmanager
async def serve(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    loader: FleetLoader | None = None,
    access_stream: TextIO | None = None,
    gpu_memory: Mapping[str, Mapping[str, Any]] | None = None,
    shutdown_timeout_s: float = 60.0,
    readiness: Readiness | None = None,
) -> AsyncIterator[RunningGateway]:
    """Run the gateway on this event loop until the block ends (port 0: any free port).

    Handlers are cancelled when their client disconnects: that is what frees a queue place or
    a backend slot, and closes the upstream request, the moment a client goes away. When the
    block ends, handlers still running get ``shutdown_timeout_s`` before they are cancelled
    (:meth:`RunningGateway.drain` first, for a drain with answers).
    """
    app = create_app(
        fleet,
        loader=loader,
        access_stream=access_stream,
        gpu_memory=gpu_memory,
        readiness=readiness,
    )
    gw = app[GATEWAY]
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        logger=ServerLog(lambda kind: gw.metrics.malformed.labels(kind).inc()),
        # the keep-alive timer also closes a connection that has not sent a whole request head
        keepalive_timeout=gw.config.header_timeout_s,
        auto_decompress=False,  # read_body decompresses, and fails a bad body itself
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    try:
        site = CappedSite(
            runner,
            host,
            port,
            max_connections=lambda: gw.config.max_connections,
            on_refused=gw.metrics.connections_refused.inc,
        )
        await site.start()
        bound = runner.addresses[0][1]
        yield RunningGateway(http_url(reachable(host), bound), bound, app, runner)
    finally:
        await runner.cleanup()


def run(
    fleet: Fleet,
    *,
    host: str | None = None,
    port: int | None = None,
    loader: FleetLoader | None = None,
    gpu_memory: Mapping[str, Mapping[str, Any]] | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the fleet file through ``loader``.

    SIGTERM drains: no new connections, requests in progress get ``drain_timeout_s`` to
    finish, then queued ones get 503 and streams an error event. A second SIGTERM (or SIGINT)
    stops at once. The access log goes to stderr, next to the other log lines, written directly.
    """
    with suppress(ImportError):
        import uvloop

        uvloop.install()
    config = GatewayConfig.from_fleet(fleet)
    listen = host or config.listen
    port = config.port if port is None else port

    async def main() -> None:
        stop = asyncio.Event()
        pending: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        async with serve(
            fleet,
            host=listen,
            port=port,
            loader=loader,
            access_stream=sys.stderr,
            gpu_memory=gpu_memory,
            shutdown_timeout_s=1.0,  # after the drain below, nothing should be left running
            readiness=readiness,
        ) as running:
            gw = running.gateway

            def hup() -> None:
                async def reload() -> None:
                    with suppress(ReloadError):
                        await gw.reload()

                pending.add(task := loop.create_task(reload()))
                task.add_done_callback(pending.discard)

            loop.add_signal_handler(signal.SIGHUP, hup)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            log.warning("fleetgate gateway listening on %s:%d", listen, running.port)
            await stop.wait()
            stop.clear()
            log.warning(
                "stopping: draining for up to %g s (signal again to stop at once)",
                gw.config.drain_timeout_s,
            )
            drain = loop.create_task(running.drain())
            again = loop.create_task(stop.wait())
            await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                log.warning("stopping at once")
                drain.cancel()
                await gw.end_all()  # streams still get their error event
            again.cancel()
            await asyncio.gather(drain, again, return_exceptions=True)

    asyncio.run(main())
