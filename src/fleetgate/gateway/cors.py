"""CORS: which browser origins may call the gateway (``gateway.cors_origins``; none by default).

A browser sends a preflight ``OPTIONS`` without credentials, so it is answered before any key
check. An origin that is not listed gets no CORS headers at all: the browser then refuses the
answer, and a client outside a browser is not affected either way.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from fleetgate.gateway.config import GatewayConfig

# What a browser script may read from an answer besides the safelisted headers.
_EXPOSED = ", ".join(
    (
        "Retry-After",
        "x-fleetgate-queue-wait-ms",
        "x-fleetgate-served-model",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    )
)
_METHODS = "GET, HEAD, POST, OPTIONS"
_MAX_AGE = "600"


def allowed_origin(config: GatewayConfig, origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if it is not allowed."""
    origins = config.cors_origins
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def cors_middleware(config: Callable[[], GatewayConfig]) -> Middleware:
    """Answer preflights of allowed origins; ``config`` gives the live (reloadable) config."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        allow = allowed_origin(config(), request.headers.get("Origin"))
        if (
            allow is not None
            and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
        ):
            headers = {
                "Access-Control-Allow-Origin": allow,
                "Access-Control-Allow-Methods": _METHODS,
                "Access-Control-Max-Age": _MAX_AGE,
                "Vary": "Origin",
            }
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked
            return web.Response(status=204, headers=headers)
        if allow is not None:
            request["cors_origin"] = allow
        return await handler(request)

    return cors


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer to an allowed origin, streams included, says so."""
    allow = request.get("cors_origin")
    if allow is not None:
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
        response.headers.add("Vary", "Origin")
