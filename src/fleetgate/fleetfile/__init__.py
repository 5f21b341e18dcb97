"""The fleet file: schema, loading, cross checks and public model names."""

from fleetgate.fleetfile.crosscheck import check_fleet
from fleetgate.fleetfile.gpus import GPU_CATALOG, GpuModel, lookup_gpu
from fleetgate.fleetfile.load import FleetError, LoadedFleet, Problem, load_fleet, parse_fleet
from fleetgate.fleetfile.routes import PublicModel, public_models, resolve_alias, route_limits
from fleetgate.fleetfile.schema import (
    ApiKey,
    Deployment,
    Fleet,
    Gateway,
    Gpu,
    Host,
    Limits,
    Route,
)

__all__ = [
    "GPU_CATALOG",
    "ApiKey",
    "Deployment",
    "Fleet",
    "FleetError",
    "Gateway",
    "Gpu",
    "GpuModel",
    "Host",
    "Limits",
    "LoadedFleet",
    "Problem",
    "PublicModel",
    "Route",
    "check_fleet",
    "load_fleet",
    "lookup_gpu",
    "parse_fleet",
    "public_models",
    "resolve_alias",
    "route_limits",
]
