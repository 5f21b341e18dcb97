"""Derived facts for on-demand deployments: which deployments share a GPU, and who is default.

The planner decides what fits together on a GPU and the control layer acts on it; both take
the grouping from here so that "shares a GPU" means one thing everywhere.
"""

from __future__ import annotations

from fleetgate.fleetfile.schema import Fleet

GpuKey = tuple[str, int]  # (host, GPU index)


def gpus_of(fleet: Fleet, deployment: str) -> tuple[GpuKey, ...]:
    """The GPUs a deployment occupies: ``gpu`` and the ``tensor_parallel_size - 1`` after it."""
    dep = fleet.deployments[deployment]
    return tuple((dep.host, dep.gpu + i) for i in range(dep.tensor_parallel_size))


def gpu_sharing(fleet: Fleet) -> dict[GpuKey, tuple[str, ...]]:
    """Each GPU that runs deployments, with those deployments in file order."""
    out: dict[GpuKey, list[str]] = {}
    for name in fleet.deployments:
        for key in gpus_of(fleet, name):
            out.setdefault(key, []).append(name)
    return {key: tuple(names) for key, names in out.items()}


def neighbours(fleet: Fleet, deployment: str) -> tuple[str, ...]:
    """Deployments that share at least one GPU with ``deployment`` (itself excluded)."""
    sharing = gpu_sharing(fleet)
    seen: dict[str, None] = {}
    for key in gpus_of(fleet, deployment):
        for name in sharing.get(key, ()):
            if name != deployment:
                seen[name] = None
    return tuple(seen)


def has_on_demand(fleet: Fleet) -> bool:
    return any(d.on_demand for d in fleet.deployments.values())
