"""A fleet rewritten to run on this machine: every host is loopback, every port a free one.

The user's file is never touched; :func:`localize` returns a new validated :class:`Fleet`
whose deployments listen on free loopback ports and whose gateway listens on the chosen port.
API keys whose ``${VAR}`` is unset get a random key for the session, so the README's first
command works before any secret is set up.
"""

from __future__ import annotations

import random
import secrets
import socket
from dataclasses import dataclass, field

from fleetgate.fleetfile import Fleet, has_env_refs, http_url, require_gateway

LOOPBACK = "127.0.0.1"


# Ports handed out by this process: a fleet's servers bind them a little later, so the same one
# must not be handed out twice meanwhile.
_handed_out: set[int] = set()
# Below Linux's ephemeral range (32768-60999), where outgoing connections take their local
# ports: one of them could take a port from that range before our server binds it.
_RANGE = (20000, 32000)


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now, that this process has not handed out before."""
    for _ in range(200):
        port = random.randint(*_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalFleet:
    """The rewritten fleet and what was made up for it."""

    fleet: Fleet
    gateway_port: int
    ports: dict[str, int]  # deployment -> its loopback port
    generated_keys: dict[str, str] = field(default_factory=dict)  # key name -> key

    @property
    def gateway_url(self) -> str:
        return http_url(LOOPBACK, self.gateway_port)

    @property
    def api_key(self) -> str | None:
        """The first key of the fleet (a generated one if its variable was unset)."""
        gw = self.fleet.gateway
        return gw.api_keys[0].key if gw is not None and gw.api_keys else None


def localize(
    fleet: Fleet, *, gateway_port: int | None = None, ports: dict[str, int] | None = None
) -> LocalFleet:
    """A copy of ``fleet`` for this machine (see the module's docstring).

    ``gateway_port`` 0 picks a free port; ``None`` keeps the fleet file's.
    """
    gw = require_gateway(fleet)
    chosen = dict(ports or {})
    for name in fleet.deployments:
        if name not in chosen:
            chosen[name] = free_port()
    port = gw.port if gateway_port is None else gateway_port or free_port()

    hosts = {
        name: host.model_copy(update={"address": LOOPBACK, "transport": "local"})
        for name, host in fleet.hosts.items()
    }
    deployments = {
        name: dep.model_copy(update={"port": chosen[name]})
        for name, dep in fleet.deployments.items()
    }
    generated: dict[str, str] = {}
    keys = []
    for key in gw.api_keys:
        if has_env_refs(key.key):
            generated[key.name] = "fg-" + secrets.token_urlsafe(24)
            key = key.model_copy(update={"key": generated[key.name]})
        keys.append(key)
    admin = gw.admin_key
    if has_env_refs(admin):
        admin = "fg-admin-" + secrets.token_urlsafe(24)
        generated["admin"] = admin
    gateway = gw.model_copy(
        update={"listen": LOOPBACK, "port": port, "api_keys": keys, "admin_key": admin or None}
    )
    local = Fleet.model_validate(
        fleet.model_copy(
            update={"hosts": hosts, "deployments": deployments, "gateway": gateway}
        ).model_dump()
    )
    return LocalFleet(local, port, chosen, generated)
