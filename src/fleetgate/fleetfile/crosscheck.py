"""Cross-field checks a schema cannot express: references, ports, limits against vLLM settings."""

from __future__ import annotations

from fleetgate.fleetfile.gpus import FP8_KV_ARCHITECTURES
from fleetgate.fleetfile.load import FleetError, Problem
from fleetgate.fleetfile.routes import resolve_alias, route_limits
from fleetgate.fleetfile.schema import Fleet, Gateway


def check_fleet(fleet: Fleet) -> list[Problem]:
    """Every cross-field error and warning, in file order. Errors have level ``error``."""
    problems: list[Problem] = []
    add = problems.append

    for name, dep in fleet.deployments.items():
        where = f"deployments.{name}"
        host = fleet.hosts.get(dep.host)
        if host is None:
            add(
                Problem(
                    f"{where}.host",
                    f"unknown host {dep.host!r}",
                    f"add it under hosts: or use one of {sorted(fleet.hosts)}",
                )
            )
            continue
        if not host.gpus:
            add(
                Problem(
                    f"hosts.{dep.host}.gpus",
                    f"deployment {name!r} runs here but the host lists no GPU",
                    "add gpus: [RTX 3090] (a catalog name) or [{memory_gib: 24, arch: ampere}]",
                )
            )
        elif dep.tensor_parallel_size > len(host.gpus):
            add(
                Problem(
                    f"{where}.tensor_parallel_size",
                    f"{dep.tensor_parallel_size} GPUs asked, host {dep.host!r} has "
                    f"{len(host.gpus)}",
                    "lower tensor_parallel_size or list more GPUs",
                )
            )
        elif dep.gpu + dep.tensor_parallel_size > len(host.gpus):
            add(
                Problem(
                    f"{where}.gpu",
                    f"GPU {dep.gpu} (and {dep.tensor_parallel_size - 1} after it) asked, host "
                    f"{dep.host!r} has {len(host.gpus)}, numbered from 0",
                    "lower gpu or list more GPUs",
                )
            )
        if dep.kv_cache_dtype.startswith("fp8") and any(
            g.arch not in FP8_KV_ARCHITECTURES for g in host.gpus
        ):
            arch = host.gpus[0].arch
            add(
                Problem(
                    f"{where}.kv_cache_dtype",
                    f"fp8 KV cache on {arch} GPUs is not supported by every attention "
                    "backend and can be unstable",
                    "if vLLM fails or output degrades, set kv_cache_dtype: auto "
                    "(fleetgate plan shows what fp16 costs)",
                    level="warning",
                )
            )

    problems.extend(_check_on_demand(fleet))

    seen: dict[tuple[str, int], str] = {}
    for name, dep in fleet.deployments.items():
        key = (dep.host, dep.port)
        if key in seen:
            add(
                Problem(
                    f"deployments.{name}.port",
                    f"{dep.host}:{dep.port} is already used by deployment {seen[key]!r}",
                    "give each deployment on a host its own port",
                )
            )
        seen[key] = name

    gw = fleet.gateway
    if gw is None:
        return problems
    if gw.host not in fleet.hosts:
        add(
            Problem(
                "gateway.host", f"unknown host {gw.host!r}", f"use one of {sorted(fleet.hosts)}"
            )
        )
    if (gw.host, gw.port) in seen:
        add(
            Problem(
                "gateway.port",
                f"{gw.host}:{gw.port} is deployment {seen[(gw.host, gw.port)]!r}'s port",
                "pick another gateway port",
            )
        )

    names: dict[str, str] = {}
    for route_name, route in gw.routes.items():
        for public in (route_name, *route.profiles):
            if public in names:
                add(
                    Problem(
                        f"gateway.routes.{route_name}",
                        f"name {public!r} is used twice",
                        "route and profile names must be unique",
                    )
                )
            names[public] = route_name
        for dep_name in route.deployments:
            if dep_name not in fleet.deployments:
                add(
                    Problem(
                        f"gateway.routes.{route_name}.deployments",
                        f"unknown deployment {dep_name!r}",
                        f"use one of {sorted(fleet.deployments)}",
                    )
                )
        if any(d not in fleet.deployments for d in route.deployments):
            continue
        for profile in (None, *route.profiles):
            problems.extend(_check_limits(fleet, route_name, profile))

    for alias, target in gw.aliases.items():
        where = f"gateway.aliases.{alias}"
        if alias in names:
            add(Problem(where, f"alias {alias!r} shadows a route or profile", "rename it"))
            continue
        try:
            final = resolve_alias(fleet, alias)
        except ValueError as exc:
            add(Problem(where, str(exc), "make the chain end at a route or profile"))
            continue
        if final not in names:
            add(
                Problem(
                    where,
                    f"alias points at {target!r}, which is no route, profile or alias",
                    f"use one of {sorted(names)}",
                )
            )

    if gw.api_keys:
        for i, api_key in enumerate(gw.api_keys):
            for r in api_key.routes:
                if r != "*" and r not in names and r not in gw.aliases:
                    add(
                        Problem(
                            f"gateway.api_keys.{i}.routes",
                            f"unknown route {r!r}",
                            f"use '*' or one of {sorted(names)}",
                        )
                    )
    return problems


def require_valid(fleet: Fleet, file: str | None = None) -> Fleet:
    """The fleet itself when :func:`check_fleet` finds no error; else raise
    :class:`FleetError` with every error (warnings are left to ``fleetgate validate``)."""
    errors = [p for p in check_fleet(fleet) if p.level == "error"]
    if errors:
        raise FleetError(file, errors)
    return fleet


def require_gateway(fleet: Fleet, file: str | None = None) -> Gateway:
    """The fleet's gateway section; raise :class:`FleetError` when the file has none."""
    if fleet.gateway is None:
        raise FleetError(file, [Problem("gateway", "the fleet file has no gateway section")])
    return fleet.gateway


def _check_on_demand(fleet: Fleet) -> list[Problem]:
    """Hosts' default deployments, wake and suspend settings, and what on-demand implies."""
    out = []
    for name, host in fleet.hosts.items():
        where = f"hosts.{name}"
        if host.default is not None:
            dep = fleet.deployments.get(host.default)
            if dep is None or dep.host != name:
                here = sorted(d for d, x in fleet.deployments.items() if x.host == name)
                out.append(
                    Problem(
                        f"{where}.default",
                        f"{host.default!r} is not a deployment on host {name!r}",
                        f"use one of {here}" if here else "remove default",
                    )
                )
            elif not dep.on_demand:
                out.append(
                    Problem(
                        f"{where}.default",
                        f"{host.default!r} is always on (not on_demand): there is nothing to "
                        "return to",
                        "set on_demand: true on it, or remove default",
                        level="warning",
                    )
                )
        if host.suspend_after_idle_s is not None and host.wake is None:
            out.append(
                Problem(
                    f"{where}.suspend_after_idle_s",
                    "a suspended host without wake: settings can never be woken by the gateway",
                    "add wake: {mac: ..., address: ...} or remove suspend_after_idle_s",
                )
            )
        if host.suspend_after_idle_s is not None and any(
            d.host == name and not d.on_demand for d in fleet.deployments.values()
        ):
            out.append(
                Problem(
                    f"{where}.suspend_after_idle_s",
                    "the host runs always-on deployments: suspending it takes them down",
                    "make its deployments on_demand, or remove suspend_after_idle_s",
                )
            )
    for name, dep in fleet.deployments.items():
        runs_on = fleet.hosts.get(dep.host)
        if runs_on is not None and runs_on.wake is not None and not dep.on_demand:
            out.append(
                Problem(
                    f"deployments.{name}.on_demand",
                    f"host {dep.host!r} may be asleep (it has wake:), but {name!r} is not "
                    "on_demand: the gateway will count it down instead of waking the host",
                    "set on_demand: true",
                    level="warning",
                )
            )
    return out


def _check_limits(fleet: Fleet, route_name: str, profile: str | None) -> list[Problem]:
    route = fleet.gateway.routes[route_name]  # type: ignore[union-attr]
    where = f"gateway.routes.{route_name}" + (f".profiles.{profile}" if profile else "")
    limits = route_limits(fleet, route_name, profile)
    out = []
    for dep_name in route.deployments:
        dep = fleet.deployments[dep_name]
        max_in, max_out = limits.max_input_tokens, limits.max_output_tokens
        if dep.max_model_len and max_in and max_out:
            total = max_in + max_out
            if total > dep.max_model_len:
                out.append(
                    Problem(
                        f"{where}.max_input_tokens",
                        f"max_input_tokens {max_in} + max_output_tokens "
                        f"{max_out} = {total} exceeds deployment {dep_name!r}'s "
                        f"max_model_len {dep.max_model_len}",
                        f"lower max_input_tokens to {dep.max_model_len - max_out} "
                        "or raise the deployment's max_model_len",
                    )
                )
        elif dep.max_model_len and (one := max_in or max_out) and one > dep.max_model_len:
            field = "max_input_tokens" if max_in else "max_output_tokens"
            out.append(
                Problem(
                    f"{where}.{field}",
                    f"{field} {one} exceeds deployment {dep_name!r}'s "
                    f"max_model_len {dep.max_model_len}",
                    f"lower {field} below {dep.max_model_len} "
                    "or raise the deployment's max_model_len",
                )
            )
        if dep.max_num_seqs and limits.concurrency and limits.concurrency > dep.max_num_seqs:
            out.append(
                Problem(
                    f"{where}.concurrency",
                    f"concurrency {limits.concurrency} exceeds deployment {dep_name!r}'s "
                    f"max_num_seqs {dep.max_num_seqs}: the excess would queue inside vLLM, "
                    "unbounded",
                    f"lower concurrency to {dep.max_num_seqs} or raise max_num_seqs",
                )
            )
    return out
