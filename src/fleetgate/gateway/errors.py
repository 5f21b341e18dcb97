"""Every refusal the gateway sends: an OpenAI-style error body and its status, in one place.

The ``reason`` of each error is a short stable word used in metrics and the access log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """A refusal: raised anywhere on the request path, turned into a response by the handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.headers: dict[str, str] = {}  # more to send with it (the x-ratelimit-* headers)

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(retry_after_seconds(self.retry_after))
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=headers,
        )


def retry_after_seconds(seconds: float) -> int:
    """Retry-After is whole seconds; never 0, which clients read as 'hammer me now'."""
    if not math.isfinite(seconds):
        return 60
    return max(1, math.ceil(seconds))


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, reason="bad_request", param=param, code=code)


def context_length(message: str, *, param: str = "messages") -> GatewayError:
    return GatewayError(
        400, message, reason="context_length", param=param, code="context_length_exceeded"
    )


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, reason="unauthorized", code="invalid_api_key")


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, reason="forbidden", code="model_not_allowed")


def admin_disabled(message: str) -> GatewayError:
    return GatewayError(403, message, reason="admin_disabled", code="admin_disabled")


def not_found(message: str, *, param: str | None = "model") -> GatewayError:
    return GatewayError(404, message, reason="not_found", param=param, code="model_not_found")


def too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body of {size} bytes is over the gateway's limit of {limit} bytes",
        reason="body_too_large",
        code="request_too_large",
    )


def rate_limited(message: str, *, reason: str, retry_after: float) -> GatewayError:
    return GatewayError(
        429, message, reason=reason, code="rate_limit_exceeded", retry_after=retry_after
    )


def unavailable(message: str, *, retry_after: float) -> GatewayError:
    return GatewayError(
        503, message, reason="unavailable", code="service_unavailable", retry_after=retry_after
    )


def all_down(
    route: str, deployments: Iterable[str], recheck_s: float, *, state: str = "down"
) -> GatewayError:
    """503 for a route with no deployment up; retry once the health checks had another look."""
    return unavailable(
        f"every deployment of {route!r} is {state} ({', '.join(deployments)}); the health "
        f"checks look again every {recheck_s:g} s: retry after {retry_after_seconds(recheck_s)} s",
        retry_after=recheck_s,
    )


def shutting_down() -> GatewayError:
    """The gateway is stopping and its drain deadline passed: retry (on another replica, or on
    this one once it is back)."""
    return GatewayError(
        503,
        "the gateway is shutting down and this request did not finish within its drain "
        "deadline (drain_timeout_s); retry",
        reason="shutting_down",
        code="shutting_down",
        retry_after=1,
    )


def bad_gateway(message: str) -> GatewayError:
    return GatewayError(502, message, reason="upstream_error", code="upstream_error")


def gateway_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, reason="upstream_timeout", code="upstream_timeout")
