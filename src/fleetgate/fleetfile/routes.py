"""Public model names: routes, their profiles and aliases, each with its effective limits,
and the slots each deployment gives the gateway."""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.fleetfile.schema import Fleet, merge_limits

# A deployment that states neither a route concurrency nor max_num_seqs: vLLM's own default
# batch size, so the gateway does not become the bottleneck by accident.
DEFAULT_CONCURRENCY = 256


@dataclass(frozen=True)
class RouteLimits:
    """The complete limits of a route or profile: ``gateway.defaults`` < route < profile,
    merged field by field. The queue and the clamp always have a value."""

    max_input_tokens: int | None
    max_output_tokens: int | None
    tpm: int | None
    rpm: int | None
    concurrency: int | None
    queue_depth: int
    queue_wait_s: float
    load_wait_s: float
    clamp_max_tokens: bool
    routing: str = "least_outstanding"


@dataclass(frozen=True)
class PublicModel:
    """A name clients may send as ``model``, resolved to its route and effective limits.

    ``max_model_len`` is the smallest of its deployments' (None when none states one): what
    every backend behind the name can hold.
    """

    name: str
    route: str
    profile: str | None
    kind: str  # "route" | "profile" | "alias"
    deployments: tuple[str, ...]
    limits: RouteLimits
    max_model_len: int | None


def route_limits(fleet: Fleet, route_name: str, profile: str | None = None) -> RouteLimits:
    """Limits of a route (or one of its profiles): defaults < route < profile.

    A route without ``concurrency`` gets its deployments' smallest ``max_num_seqs``.
    """
    assert fleet.gateway is not None
    route = fleet.gateway.routes[route_name]
    layers = [fleet.gateway.defaults, route]
    if profile is not None:
        layers.append(route.profiles[profile])
    limits = merge_limits(*layers)
    concurrency = limits.concurrency
    if concurrency is None:
        seqs = [
            d.max_num_seqs
            for name in route.deployments
            if (d := fleet.deployments.get(name)) and d.max_num_seqs
        ]
        concurrency = min(seqs) if seqs else None
    # gateway.defaults always carries these (the schema merges it over DEFAULT_LIMITS)
    assert limits.queue_depth is not None and limits.queue_wait_s is not None
    assert limits.load_wait_s is not None
    return RouteLimits(
        max_input_tokens=limits.max_input_tokens,
        max_output_tokens=limits.max_output_tokens,
        tpm=limits.tpm,
        rpm=limits.rpm,
        concurrency=concurrency,
        queue_depth=limits.queue_depth,
        queue_wait_s=limits.queue_wait_s,
        load_wait_s=limits.load_wait_s,
        clamp_max_tokens=bool(limits.clamp_max_tokens),
        routing=route.routing,
    )


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


def _max_model_len(fleet: Fleet, deployments: tuple[str, ...]) -> int | None:
    lens = [n for d in deployments if (n := fleet.deployments[d].max_model_len) is not None]
    return min(lens) if lens else None


def public_models(fleet: Fleet) -> dict[str, PublicModel]:
    """Every name the gateway answers to. Assumes :func:`check_fleet` found no errors."""
    if fleet.gateway is None:
        return {}
    out: dict[str, PublicModel] = {}
    for route_name, route in fleet.gateway.routes.items():
        deps = tuple(route.deployments)
        length = _max_model_len(fleet, deps)
        out[route_name] = PublicModel(
            route_name, route_name, None, "route", deps, route_limits(fleet, route_name), length
        )
        for profile in route.profiles:
            out[profile] = PublicModel(
                profile,
                route_name,
                profile,
                "profile",
                deps,
                route_limits(fleet, route_name, profile),
                length,
            )
    for alias in fleet.gateway.aliases:
        target = out.get(resolve_alias(fleet, alias))
        if target is not None:
            out[alias] = PublicModel(
                alias,
                target.route,
                target.profile,
                "alias",
                target.deployments,
                target.limits,
                target.max_model_len,
            )
    return out


def deployment_slots(fleet: Fleet) -> dict[str, int]:
    """Requests each routed deployment takes at once: the smallest concurrency of the routes
    on it (profiles share their route's slots); a deployment no route limits gets
    :data:`DEFAULT_CONCURRENCY`. Deployments no route uses are not in the map."""
    slots: dict[str, int] = {}
    for public in public_models(fleet).values():
        if public.kind != "route":
            continue
        for name in public.deployments:
            conc = public.limits.concurrency or DEFAULT_CONCURRENCY
            slots[name] = min(slots.get(name, conc), conc)
    return slots
