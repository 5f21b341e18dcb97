"""The fleet file: schema, loading, cross checks, and every fact derived from it (public model
names and their limits, slots, URLs, ``${VAR}`` references)."""

from fleetgate.fleetfile.crosscheck import check_fleet, require_gateway, require_valid
from fleetgate.fleetfile.envrefs import env_refs, has_env_refs, lone_env_ref
from fleetgate.fleetfile.gpus import GPU_CATALOG, GpuModel, lookup_gpu
from fleetgate.fleetfile.load import FleetError, LoadedFleet, Problem, load_fleet, parse_fleet
from fleetgate.fleetfile.ondemand import GpuKey, gpu_sharing, gpus_of, has_on_demand, neighbours
from fleetgate.fleetfile.routes import (
    DEFAULT_CONCURRENCY,
    PublicModel,
    RouteLimits,
    deployment_slots,
    public_models,
    resolve_alias,
    route_limits,
)
from fleetgate.fleetfile.schema import (
    DEFAULT_LIMITS,
    PERIODS,
    PRIORITY_CLASSES,
    ApiKey,
    Budgets,
    Deployment,
    Fleet,
    Gateway,
    Gpu,
    Host,
    KeySpec,
    Limits,
    Priority,
    Route,
    priority_value,
)
from fleetgate.fleetfile.store import default_key_store, with_key_store
from fleetgate.fleetfile.urls import (
    client_address,
    deployment_url,
    gateway_url,
    http_url,
    reachable,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LIMITS",
    "GPU_CATALOG",
    "PERIODS",
    "PRIORITY_CLASSES",
    "ApiKey",
    "Budgets",
    "Deployment",
    "Fleet",
    "FleetError",
    "Gateway",
    "Gpu",
    "GpuKey",
    "GpuModel",
    "Host",
    "KeySpec",
    "Limits",
    "LoadedFleet",
    "Priority",
    "Problem",
    "PublicModel",
    "Route",
    "RouteLimits",
    "check_fleet",
    "client_address",
    "default_key_store",
    "deployment_slots",
    "deployment_url",
    "env_refs",
    "gateway_url",
    "gpu_sharing",
    "gpus_of",
    "has_env_refs",
    "has_on_demand",
    "http_url",
    "load_fleet",
    "lone_env_ref",
    "lookup_gpu",
    "neighbours",
    "parse_fleet",
    "priority_value",
    "public_models",
    "reachable",
    "require_gateway",
    "require_valid",
    "resolve_alias",
    "route_limits",
    "with_key_store",
]
