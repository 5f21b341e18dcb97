"""The gateway's runtime configuration, derived once from a validated fleet.

Everything the hot path needs is resolved here (URLs, effective limits, hashed keys), so a
request never walks the fleet schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fleetgate.fleetfile import (
    ApiKey,
    Fleet,
    deployment_slots,
    deployment_url,
    priority_value,
    public_models,
    require_gateway,
)
from fleetgate.gateway.admission import Claimant


def hash_key(key: str) -> str:
    """Keys are kept and compared as digests, so a raw key never sits in a config dump."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class DeploymentConfig:
    """One backend: where it answers and the model name it serves."""

    name: str
    url: str
    served_model: str
    max_model_len: int | None
    concurrency: int
    host: str = ""
    model: str = ""
    on_demand: bool = False  # brought up by the control layer when a request needs it


@dataclass(frozen=True)
class ModelConfig:
    """A public model name (route, profile or alias) with its effective limits.

    ``lane`` is the route or profile name: aliases share their target's queue and counters.
    """

    name: str
    kind: str  # route | profile | alias
    route: str
    lane: str
    deployments: tuple[str, ...]
    max_model_len: int | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    clamp_max_tokens: bool
    rpm: int | None
    tpm: int | None
    queue_depth: int
    queue_wait_s: float
    load_wait_s: float = 180.0
    ordered: bool = False  # routing: ordered (the first deployment that can serve, in order)


@dataclass(frozen=True)
class KeyConfig:
    """A client key (from the fleet file or the key store): what it may use and spend."""

    name: str
    routes: frozenset[str]
    priority: int = 10
    max_concurrency: int | None = None
    # each budget that is set: (``tokens`` or ``requests``, day|week|month, allowed)
    budgets: tuple[tuple[str, str, int], ...] = ()

    @property
    def claimant(self) -> Claimant:
        return Claimant(self.name, self.priority, self.max_concurrency)

    @classmethod
    def from_fleet(cls, key: ApiKey) -> KeyConfig:
        return cls(
            key.name,
            frozenset(key.routes),
            priority_value(key.priority),
            key.max_concurrency,
            tuple(key.budgets.limits()),
        )

    def allows(self, model: ModelConfig) -> bool:
        """A key lists public names; naming a route or profile also admits its aliases."""
        return "*" in self.routes or model.name in self.routes or model.lane in self.routes


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float
    timeout_s: float
    unhealthy_after: int


@dataclass(frozen=True)
class GatewayConfig:
    listen: str
    port: int
    max_body_bytes: int
    max_buffered_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    drain_timeout_s: float
    retries: int
    request_timeout_s: float
    max_response_bytes: int
    health: HealthConfig
    redis_url: str | None
    admin_key_hash: str | None
    metrics_key_hash: str | None

    cors_origins: frozenset[str] = frozenset()
    store: str | None = None  # the key store: a SQLite path or a PostgreSQL DSN (None: memory)
    timezone: str = "UTC"
    keys: dict[str, KeyConfig] = field(default_factory=dict)  # sha256(key) -> key
    models: dict[str, ModelConfig] = field(default_factory=dict)
    deployments: dict[str, DeploymentConfig] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        """No API key configured: anyone reaching the port may use every route."""
        return not self.keys

    @classmethod
    def from_fleet(cls, fleet: Fleet) -> GatewayConfig:
        """Build from a fleet that passed :func:`fleetgate.fleetfile.require_valid`."""
        gw = require_gateway(fleet)
        models: dict[str, ModelConfig] = {}
        for pm in public_models(fleet).values():
            lim = pm.limits
            models[pm.name] = ModelConfig(
                name=pm.name,
                kind=pm.kind,
                route=pm.route,
                lane=pm.profile or pm.route,
                deployments=pm.deployments,
                max_model_len=pm.max_model_len,
                max_input_tokens=lim.max_input_tokens,
                max_output_tokens=lim.max_output_tokens,
                clamp_max_tokens=lim.clamp_max_tokens,
                rpm=lim.rpm,
                tpm=lim.tpm,
                queue_depth=lim.queue_depth,
                queue_wait_s=lim.queue_wait_s,
                load_wait_s=lim.load_wait_s,
                ordered=lim.routing == "ordered",
            )
        deployments = {}
        for name, slots in deployment_slots(fleet).items():
            dep = fleet.deployments[name]
            deployments[name] = DeploymentConfig(
                name=name,
                url=deployment_url(fleet, name),
                served_model=dep.public_name(name),
                max_model_len=dep.max_model_len,
                concurrency=slots,
                host=dep.host,
                model=dep.model,
                on_demand=dep.on_demand,
            )
        keys = {hash_key(k.key): KeyConfig.from_fleet(k) for k in gw.api_keys}
        return cls(
            listen=gw.listen,
            port=gw.port,
            max_body_bytes=gw.max_body_bytes,
            max_buffered_bytes=gw.max_buffered_bytes,
            header_timeout_s=gw.header_timeout_s,
            body_timeout_s=gw.body_timeout_s,
            max_connections=gw.max_connections,
            drain_timeout_s=gw.drain_timeout_s,
            retries=gw.retries,
            request_timeout_s=gw.request_timeout_s,
            max_response_bytes=gw.max_response_bytes,
            health=HealthConfig(
                gw.health.interval_s, gw.health.timeout_s, gw.health.unhealthy_after
            ),
            redis_url=gw.redis_url,
            admin_key_hash=hash_key(gw.admin_key) if gw.admin_key else None,
            metrics_key_hash=hash_key(gw.metrics_key) if gw.metrics_key else None,
            cors_origins=frozenset(gw.cors_origins),
            store=gw.store,
            timezone=gw.timezone,
            keys=keys,
            models=models,
            deployments=deployments,
        )
