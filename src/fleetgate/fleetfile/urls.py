"""Where things answer: every URL derived from the fleet file is built here.

This is the one place an IPv6 address gets its brackets (as in httpx's ``_urlparse``) and a
wildcard listen address becomes one a client can reach.
"""

from __future__ import annotations

from fleetgate.fleetfile.crosscheck import require_gateway
from fleetgate.fleetfile.schema import Fleet

# Listen addresses that mean "every interface": a client cannot connect to them, so it dials
# the loopback address of the same family (or the host's address, see client_address).
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def http_url(address: str, port: int) -> str:
    """``http://address:port`` with an IPv6 literal in brackets (``http://[fd00::2]:8000``)."""
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{port}"


def is_wildcard(address: str) -> bool:
    """Whether a listen address means every interface (``0.0.0.0``, ``::``)."""
    return address in _WILDCARDS


def reachable(address: str) -> str:
    """An address a client can connect to: a wildcard becomes the loopback of its family."""
    return _WILDCARDS.get(address, address)


def client_address(listen: str, host_address: str) -> str:
    """The address a client dials for a server listening on ``listen`` on a host known as
    ``host_address``: a wildcard listen address means the host's own address."""
    return reachable(host_address if is_wildcard(listen) else listen)


def deployment_url(fleet: Fleet, name: str) -> str:
    """Where a deployment's vLLM answers: its host's address and its port."""
    dep = fleet.deployments[name]
    return http_url(reachable(fleet.hosts[dep.host].address), dep.port)


def gateway_url(fleet: Fleet) -> str:
    """Where the fleet's gateway answers clients (its listen address, or its host's address
    when it listens on every interface)."""
    gw = require_gateway(fleet)
    return http_url(client_address(gw.listen, fleet.hosts[gw.host].address), gw.port)
