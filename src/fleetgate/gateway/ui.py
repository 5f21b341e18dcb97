"""``/ui``: the fleet's live page, behind the admin key.

The key is typed once into a form (a POST body, never a URL) and traded for an HttpOnly,
SameSite=Strict cookie that holds a token derived from it, not the key. The page is static
HTML, CSS and one small hand-written script served from ``static/`` under a Content-Security-
Policy that allows nothing inline; the script polls ``/ui/state`` (the snapshot that
``fleetgate top`` reads too, with the key as a Bearer token). No admin key set: no page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import deque
from html import escape
from pathlib import Path
from time import monotonic
from urllib.parse import parse_qs

from aiohttp import web

from fleetgate.gateway.auth import authenticate_admin
from fleetgate.gateway.config import GatewayConfig, hash_key
from fleetgate.gateway.errors import GatewayError, admin_disabled, unauthorized
from fleetgate.gateway.snapshot import snapshot
from fleetgate.gateway.state import GatewayState

COOKIE = "fleetgate_ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_STATIC = Path(__file__).with_name("static")
_ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css", "icon.svg": "image/svg+xml"}
_MAX_FORM_BYTES = 4096
_SESSION_DAYS = 30


class SignInGuard:
    """At most ``limit`` wrong admin keys a minute, from anyone: past that, sign-ins are
    refused (429) until the oldest failure is a minute old, so the key cannot be guessed fast.
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: deque[float] = deque()

    def retry_after(self) -> float | None:
        now = monotonic()
        while self._failures and self._failures[0] <= now - self.window_s:
            self._failures.popleft()
        if len(self._failures) < self.limit:
            return None
        return self._failures[0] + self.window_s - now

    def failed(self) -> None:
        self._failures.append(monotonic())


SIGN_IN_GUARD = web.AppKey("ui_sign_in_guard", SignInGuard)


def session_token(admin_key_hash: str) -> str:
    """The cookie's value: bound to the admin key, so a new key logs every browser out."""
    return hmac.new(admin_key_hash.encode(), b"fleetgate-ui-session", hashlib.sha256).hexdigest()


def is_admin(config: GatewayConfig, request: web.Request) -> bool:
    """The UI cookie, or the admin key as a Bearer token (``fleetgate top``)."""
    expected = config.admin_key_hash
    if expected is None:
        return False
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and hmac.compare_digest(cookie, session_token(expected)):
        return True
    try:
        authenticate_admin(config, request)
    except GatewayError:
        return False
    return True


def _disabled() -> web.Response:
    return admin_disabled("the /ui page is disabled: set gateway.admin_key").response()


def _html(name: str, status: int = 200, message: str = "") -> web.Response:
    text = (_STATIC / name).read_text(encoding="utf-8").replace("{message}", escape(message))
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={**_HEADERS, "Cache-Control": "no-store"},
    )


async def page(request: web.Request, gw: GatewayState) -> web.Response:
    if gw.config.admin_key_hash is None:
        return _disabled()
    if not is_admin(gw.config, request):
        return _html("login.html", 401)
    return _html("ui.html")


async def login(request: web.Request, gw: GatewayState) -> web.Response:
    expected = gw.config.admin_key_hash
    if expected is None:
        return _disabled()
    body = await request.content.read(_MAX_FORM_BYTES + 1)
    if len(body) > _MAX_FORM_BYTES:
        return _html("login.html", 413, "that form is too large")
    guard = request.app[SIGN_IN_GUARD]
    wait = guard.retry_after()
    if wait is not None:
        seconds = math.ceil(wait)
        resp = _html(
            "login.html",
            429,
            f"too many wrong admin keys ({guard.limit} in {guard.window_s:g} s): "
            f"try again in {seconds} s",
        )
        resp.headers["Retry-After"] = str(seconds)
        return resp
    form = parse_qs(body.decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    if not key or not hmac.compare_digest(hash_key(key), expected):
        guard.failed()
        return _html("login.html", 401, "that is not the admin key")
    resp = web.Response(status=303, headers={**_HEADERS, "Location": "/ui"})
    resp.set_cookie(
        COOKIE,
        session_token(expected),
        path="/ui",
        max_age=_SESSION_DAYS * 86400,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return resp


async def logout(request: web.Request, gw: GatewayState) -> web.Response:
    resp = web.Response(status=303, headers={**_HEADERS, "Location": "/ui"})
    resp.del_cookie(COOKIE, path="/ui")
    return resp


async def state(request: web.Request, gw: GatewayState) -> web.Response:
    if gw.config.admin_key_hash is None:
        return _disabled()
    if not is_admin(gw.config, request):
        return unauthorized("admin key missing or wrong").response()
    return web.Response(
        body=json.dumps(await snapshot(gw)).encode(),
        content_type="application/json",
        headers={**_HEADERS, "Cache-Control": "no-store"},
    )


async def asset(request: web.Request, gw: GatewayState) -> web.Response:
    name = request.match_info["name"]
    kind = _ASSETS.get(name)
    if kind is None or gw.config.admin_key_hash is None:
        return GatewayError(404, f"no such file: {name[:100]}", reason="not_found").response()
    return web.Response(
        body=(_STATIC / name).read_bytes(),
        content_type=kind,
        headers={**_HEADERS, "Cache-Control": "no-cache"},
    )


ENDPOINTS = (
    ("GET", "/ui", page),
    ("POST", "/ui/login", login),
    ("POST", "/ui/logout", logout),
    ("GET", "/ui/state", state),
    ("GET", "/ui/static/{name}", asset),
)
