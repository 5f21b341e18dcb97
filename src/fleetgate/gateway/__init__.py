"""The OpenAI-compatible gateway: auth, admission, routing, retries, streaming, health, metrics."""

from fleetgate.gateway.app import RunningGateway, create_app, run, serve
from fleetgate.gateway.config import GatewayConfig
from fleetgate.gateway.readiness import Readiness, Refusal, Traffic
from fleetgate.gateway.state import GatewayState, ReloadError

__all__ = [
    "GatewayConfig",
    "GatewayState",
    "Readiness",
    "Refusal",
    "ReloadError",
    "RunningGateway",
    "Traffic",
    "create_app",
    "run",
    "serve",
]
