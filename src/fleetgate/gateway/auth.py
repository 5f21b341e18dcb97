"""Who is calling: the client's API key on the model endpoints, the admin key on ``/admin``.

Keys are compared as digests (see :func:`fleetgate.gateway.config.hash_key`), so a raw key is
never kept, logged or compared as it was sent.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from fleetgate.gateway.accounts import Accounts
from fleetgate.gateway.config import GatewayConfig, KeyConfig, hash_key
from fleetgate.gateway.errors import admin_disabled, unauthorized


def authenticate(accounts: Accounts, request: web.Request) -> KeyConfig | None:
    """The caller's key (the fleet file's or the key store's), or 401. An open gateway (no
    key anywhere) admits everyone.

    The key comes as ``Authorization: Bearer``, or in ``x-api-key`` (Anthropic-style clients)
    or ``api-key`` (Azure OpenAI clients).
    """
    if accounts.open:
        return None
    header = request.headers.get("Authorization")
    token = ""
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            token = ""
    else:
        headers = request.headers
        token = headers.get("x-api-key") or headers.get("api-key") or ""
    token = token.strip()
    if not token:
        raise unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
    key = accounts.find(hash_key(token))
    if key is None:
        raise unauthorized("the API key is not valid")
    return key


def authenticate_admin(config: GatewayConfig, request: web.Request) -> None:
    """Return if the request carries the admin key; 403 when no admin key is configured (the
    endpoints are off), 401 when it is missing or wrong."""
    expected = config.admin_key_hash
    if expected is None:
        raise admin_disabled("admin endpoints are disabled: set gateway.admin_key")
    if not _bearer_is(request, expected):
        raise unauthorized("admin key missing or wrong")


def authenticate_scraper(config: GatewayConfig, request: web.Request) -> None:
    """``/metrics`` and ``/health/ready``: open (for scrapers on a trusted LAN) unless
    ``gateway.metrics_key`` is set; then 401 without it."""
    expected = config.metrics_key_hash
    if expected is not None and not _bearer_is(request, expected):
        raise unauthorized("metrics key missing or wrong: send 'Authorization: Bearer <key>'")


def _bearer_is(request: web.Request, expected_hash: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        hash_key(token.strip()), expected_hash
    )
