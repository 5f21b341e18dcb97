"""Public model names: routes, their profiles and aliases, each with its effective limits."""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.fleetfile.schema import Fleet, Limits

_LIMIT_FIELDS = tuple(Limits.model_fields)


@dataclass(frozen=True)
class PublicModel:
    """A name clients may send as ``model``, resolved to its route and effective limits."""

    name: str
    route: str
    profile: str | None
    kind: str  # "route" | "profile" | "alias"
    deployments: tuple[str, ...]
    limits: Limits


def merge_limits(*layers: Limits) -> Limits:
    """Later layers win field by field where they set a value."""
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update({k: v for k in _LIMIT_FIELDS if (v := getattr(layer, k)) is not None})
    return Limits(**merged)


def route_limits(fleet: Fleet, route_name: str, profile: str | None = None) -> Limits:
    """Limits of a route (or one of its profiles): defaults < route < profile.

    A route without ``concurrency`` gets its deployments' smallest ``max_num_seqs``.
    """
    assert fleet.gateway is not None
    route = fleet.gateway.routes[route_name]
    layers = [fleet.gateway.defaults, route]
    if profile is not None:
        layers.append(route.profiles[profile])
    limits = merge_limits(*layers)
    if limits.concurrency is None:
        seqs = [
            d.max_num_seqs
            for name in route.deployments
            if (d := fleet.deployments.get(name)) and d.max_num_seqs
        ]
        if seqs:
            limits = limits.model_copy(update={"concurrency": min(seqs)})
    return limits


def resolve_alias(fleet: Fleet, name: str) -> str:
    """Follow aliases to a route or profile name; raise ValueError on a cycle or dead end."""
    assert fleet.gateway is not None
    seen = [name]
    while name in fleet.gateway.aliases:
        name = fleet.gateway.aliases[name]
        if name in seen:
            raise ValueError("alias cycle: " + " -> ".join([*seen, name]))
        seen.append(name)
    return name


def public_models(fleet: Fleet) -> dict[str, PublicModel]:
    """Every name the gateway answers to. Assumes :func:`check_fleet` found no errors."""
    if fleet.gateway is None:
        return {}
    out: dict[str, PublicModel] = {}
    for route_name, route in fleet.gateway.routes.items():
        deps = tuple(route.deployments)
        out[route_name] = PublicModel(
            route_name, route_name, None, "route", deps, route_limits(fleet, route_name)
        )
        for profile in route.profiles:
            out[profile] = PublicModel(
                profile,
                route_name,
                profile,
                "profile",
                deps,
                route_limits(fleet, route_name, profile),
            )
    for alias in fleet.gateway.aliases:
        target = out.get(resolve_alias(fleet, alias))
        if target is not None:
            out[alias] = PublicModel(
                alias, target.route, target.profile, "alias", target.deployments, target.limits
            )
    return out
