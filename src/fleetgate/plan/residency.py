"""Which deployments can be resident together on one GPU, and what sleeping ones cost.

vLLM takes ``gpu_memory_utilization x total`` as its budget and refuses to start when less
than that is free, so deployments fit together on a GPU when their budgets, plus what the host
holds before any vLLM starts (the CUDA context, a desktop: the planner's start-up check), add
up to no more than the GPU. A deployment asleep at level 1 keeps
only its CUDA context and allocator pools on the GPU, and its weights in the host's RAM.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from fleetgate.fleetfile import Fleet
from fleetgate.fleetfile.ondemand import gpu_sharing
from fleetgate.plan.startup import startup_check

# What a vLLM process asleep at level 1 keeps on its GPU: the CUDA context, cuBLAS workspaces
# and what the allocator does not hand back (an estimate; vLLM's docs say "most" is freed).
SLEEP_RESIDUE_GIB = 0.5
# Sets of more on-demand deployments per GPU than this are not enumerated (2^n subsets).
_MAX_ENUMERATED = 12
_EPS = 1e-9


@dataclass(frozen=True)
class GpuResidency:
    """One GPU: its deployments' budgets and the sets of them that can be awake together."""

    host: str
    gpu: int
    memory_gib: float
    reserve_gib: float  # held before vLLM starts: CUDA context, desktop
    budgets: dict[str, float]
    always_on: tuple[str, ...]
    on_demand: tuple[str, ...]

    @property
    def room_gib(self) -> float:
        return self.memory_gib - self.reserve_gib

    def used_gib(self, awake: Iterable[str], asleep: Iterable[str] = ()) -> float:
        return sum(self.budgets[d] for d in awake) + SLEEP_RESIDUE_GIB * len(set(asleep))

    def fits(self, awake: Iterable[str], asleep: Iterable[str] = ()) -> bool:
        """Can ``awake`` run (and ``asleep`` sleep) on this GPU at once?"""
        awake = set(awake)
        return self.used_gib(awake, set(asleep) - awake) <= self.room_gib + _EPS

    def never_fit(self) -> tuple[str, ...]:
        """On-demand deployments that do not fit even alone beside the always-on ones."""
        return tuple(d for d in self.on_demand if not self.fits([*self.always_on, d]))

    def resident_sets(self) -> tuple[tuple[str, ...], ...]:
        """The largest sets of on-demand deployments awake together beside the always-on ones
        (none is a subset of another), in file order; empty when the always-on ones alone do
        not fit."""
        if not self.fits(self.always_on):
            return ()
        names = [d for d in self.on_demand if d not in self.never_fit()]
        if len(names) > _MAX_ENUMERATED:
            return tuple((d,) for d in names)
        fitting = [
            combo
            for size in range(len(names), 0, -1)
            for combo in itertools.combinations(names, size)
            if self.fits([*self.always_on, *combo])
        ]
        maximal = [c for c in fitting if not any(set(c) < set(o) for o in fitting)]
        return tuple(maximal)


def gpu_residency(fleet: Fleet) -> list[GpuResidency]:
    """Every GPU that runs deployments, in the order the fleet names them."""
    out = []
    for (host_name, index), names in gpu_sharing(fleet).items():
        host = fleet.hosts[host_name]
        if index >= len(host.gpus):
            continue  # crosscheck reports it
        memory = host.gpus[index].model.memory_gib
        out.append(
            GpuResidency(
                host=host_name,
                gpu=index,
                memory_gib=memory,
                reserve_gib=startup_check(
                    memory, 0.0, host_os=host.os, desktop_reserve_gib=host.desktop_reserve_gib
                ).held_gib,
                budgets={d: fleet.deployments[d].gpu_memory_utilization * memory for d in names},
                always_on=tuple(d for d in names if not fleet.deployments[d].on_demand),
                on_demand=tuple(d for d in names if fleet.deployments[d].on_demand),
            )
        )
    return out
