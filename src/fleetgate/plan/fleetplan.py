"""Planning the deployments of a fleet file: each alone, and those that share a GPU."""

from __future__ import annotations

import math
from typing import Any

from fleetgate.fleetfile import Fleet, Problem, check_fleet
from fleetgate.models import UnknownModelError, load_model_info
from fleetgate.plan.display import memory_split
from fleetgate.plan.memory import DeploymentPlan, PlanInput, plan_deployment
from fleetgate.plan.residency import gpu_residency
from fleetgate.plan.rules import parse_vllm_version


def plan_input(fleet: Fleet, name: str) -> PlanInput:
    """The planner's view of one deployment (raises UnknownModelError for unknown models)."""
    dep = fleet.deployments[name]
    host = fleet.hosts[dep.host]
    gpu = host.gpus[0].model
    info = load_model_info(dep.model, model_dir=dep.model_path)
    return PlanInput(
        name=name,
        model=info,
        gpu_memory_gib=gpu.memory_gib,
        gpu_name=gpu.name,
        gpu_p2p=gpu.p2p,
        gpu_memory_utilization=dep.gpu_memory_utilization,
        max_model_len=dep.max_model_len,
        max_num_seqs=dep.max_num_seqs,
        max_num_batched_tokens=dep.max_num_batched_tokens,
        kv_cache_dtype=dep.kv_cache_dtype,
        quantization=dep.quantization,
        tensor_parallel_size=dep.tensor_parallel_size,
        enforce_eager=dep.enforce_eager,
        vllm_version=parse_vllm_version(dep.image if dep.runtime == "docker" else None),
        gpu_arch=gpu.arch,
        host_os=host.os,
        desktop_reserve_gib=host.desktop_reserve_gib,
        enable_prefix_caching="--enable-prefix-caching" in dep.extra_args,
    )


def plan_fleet(fleet: Fleet) -> list[DeploymentPlan]:
    """A plan for every deployment, in file order."""
    return [plan_deployment(plan_input(fleet, name)) for name in fleet.deployments]


def fleet_memory(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Each plannable deployment's GPU memory split as plain data, for the gateway's page
    (a model the planner does not know is left out rather than guessed)."""
    split = {}
    for name in fleet.deployments:
        try:
            split[name] = memory_split(plan_deployment(plan_input(fleet, name)))
        except UnknownModelError:
            continue
    return split


def planned_kv_tokens(fleet: Fleet) -> dict[str, int]:
    """The KV tokens the plan gives each plannable deployment, as plain data: what a deploy
    records beside what vLLM reports (a model the planner does not know is left out)."""
    planned = {}
    for name in fleet.deployments:
        try:
            planned[name] = plan_deployment(plan_input(fleet, name)).kv_cache_tokens
        except UnknownModelError:
            continue
    return planned


def plan_problems(fleet: Fleet) -> list[Problem]:
    """Deployments that will not start, alone or beside others on their GPU, as fleet-file
    problems with a suggestion each: the memory fit (errors), vLLM's start-up free-memory check
    (an error when the host's reserve is known, a warning when it is the OS's estimate) — the
    verdict ``plan`` prints — and what can never be resident together on a GPU."""
    problems = residency_problems(fleet)
    for name in fleet.deployments:
        where = f"deployments.{name}"
        try:
            plan = plan_deployment(plan_input(fleet, name))
        except UnknownModelError as exc:
            problems.append(Problem(f"{where}.model", str(exc)))
            continue
        if not plan.kv_fits:
            fix = (
                f"lower max_model_len to {plan.max_model_len_fit}"
                if plan.max_model_len_fit
                else ("use a smaller or quantized model")
            )
            if plan.kv_cache_dtype == "auto":
                fix += ", or set kv_cache_dtype: fp8"
            problems.append(
                Problem(
                    f"{where}.max_model_len",
                    "does not fit: " + "; ".join(plan.reasons),
                    fix + ", or raise gpu_memory_utilization",
                )
            )
        check = plan.startup
        if check is not None and not check.passes:
            host = fleet.deployments[name].host
            problems.append(
                Problem(
                    f"{where}.gpu_memory_utilization",
                    "vLLM's start-up free-memory check " + check.describe(),
                    f"lower gpu_memory_utilization to {check.max_utilization}, close what uses "
                    f"the GPU, or set hosts.{host}.desktop_reserve_gib to what it really holds",
                    level="error" if check.certain else "warning",
                )
            )
        if plan.capture_short:
            problems.append(
                Problem(
                    f"{where}.gpu_memory_utilization",
                    "CUDA-graph capture may fail: " + (plan.capture_check() or ""),
                    f"lower gpu_memory_utilization to leave {plan.capture_gib:.2f} GiB beyond "
                    "the budget, or set enforce_eager: true",
                    level="warning",
                )
            )
    return problems


def fleet_problems(fleet: Fleet) -> list[Problem]:
    """Everything ``fleetgate validate`` reports: the cross checks, then (when they pass) whether
    each deployment fits its GPU. ``render`` and ``deploy`` refuse a fleet with an error here,
    so nothing is rendered or installed that ``validate`` would reject."""
    problems = check_fleet(fleet)
    if not any(p.level == "error" for p in problems):
        problems += plan_problems(fleet)
    return problems


def sleep_ram_gib(fleet: Fleet, host: str) -> dict[str, float]:
    """Host RAM each ``swap: sleep`` deployment of ``host`` needs for its weights while asleep
    (all of its tensor-parallel shards); models the planner does not know are left out."""
    out = {}
    for name, dep in fleet.deployments.items():
        if dep.host != host or not dep.on_demand or dep.swap != "sleep":
            continue
        try:
            plan = plan_deployment(plan_input(fleet, name))
        except UnknownModelError:
            continue
        out[name] = plan.weights_gib * dep.tensor_parallel_size
    return out


def residency_problems(fleet: Fleet) -> list[Problem]:
    """Sets that can never fit: always-on deployments over a GPU, an on-demand one that fits
    nowhere beside them, and sleeping weights over the host's RAM."""
    problems = []
    for gpu in gpu_residency(fleet):
        where = f"hosts.{gpu.host}.gpus.{gpu.gpu}"
        room = (
            f"{gpu.room_gib:.2f} GiB ({gpu.memory_gib:.2f} less {gpu.reserve_gib:.2f} held "
            "before vLLM starts)"
        )
        if len(gpu.budgets) > 1 and not gpu.fits(gpu.always_on):
            parts = " + ".join(f"{d} {gpu.budgets[d]:.2f}" for d in gpu.always_on)
            problems.append(
                Problem(
                    where,
                    f"the always-on deployments need {parts} = "
                    f"{gpu.used_gib(gpu.always_on):.2f} GiB together, the GPU has {room}: "
                    "vLLM's start-up check will refuse the last one started",
                    "make some of them on_demand (one runs at a time), lower their "
                    "gpu_memory_utilization, or move one to another GPU",
                )
            )
            continue
        for name in gpu.never_fit():
            beside = gpu.used_gib(gpu.always_on)
            problems.append(
                Problem(
                    f"deployments.{name}.gpu_memory_utilization",
                    f"on-demand {name!r} needs {gpu.budgets[name]:.2f} GiB of GPU "
                    f"{gpu.gpu} on {gpu.host!r}, which has {room} with "
                    f"{beside:.2f} GiB held by the always-on "
                    f"{', '.join(gpu.always_on) or 'none'}: it can never be started",
                    f"lower gpu_memory_utilization to at most "
                    f"{math.floor(max(0.0, gpu.room_gib - beside) / gpu.memory_gib * 100) / 100:g}"
                    ", or make the others on_demand",
                )
            )
    for host_name, host in fleet.hosts.items():
        if host.ram_gib is None:
            continue
        need = sleep_ram_gib(fleet, host_name)
        total = sum(need.values())
        if total > host.ram_gib:
            parts = " + ".join(f"{d} {g:.2f}" for d, g in need.items())
            problems.append(
                Problem(
                    f"hosts.{host_name}.ram_gib",
                    f"sleeping weights need {parts} = {total:.2f} GiB of host RAM when all "
                    f"sleep, the host has {host.ram_gib:g} GiB",
                    "use swap: restart for some, or add RAM",
                )
            )
    return problems
