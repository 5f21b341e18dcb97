"""vLLM's start-up free-memory check, and what a desktop holds before vLLM starts.

vLLM refuses to start unless the FREE memory it sees after creating its CUDA context is at
least ``total x gpu_memory_utilization`` ("Free memory on device ... on startup is less than
desired GPU memory utilization"). What holds the GPU by then counts: the CUDA context itself,
a Windows desktop's compositor and apps, and, from 0.11, NCCL's buffers under tensor
parallelism (taken before vLLM's first snapshot). This is a separate verdict from the KV fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A CUDA context with torch on a Linux GPU (headless; lazy module loading): a bare torch
# process shows ~0.3 GiB in nvidia-smi, and vLLM starts at 0.9764 of a 23.56 GiB A5000.
CUDA_CONTEXT_LINUX_GIB = 0.3
# Under WSL2 (Docker Desktop on Windows) the CUDA context itself takes about 1.3 GiB.
CUDA_CONTEXT_WSL2_GIB = 1.3
# What a Windows desktop's compositor and apps usually hold (0.3-1.5 GiB) when the owner has
# not measured it (``desktop_reserve_gib``): a planning figure, so a failure is "likely".
WINDOWS_DESKTOP_GIB = 1.0


@dataclass(frozen=True)
class StartupCheck:
    total_gib: float
    utilization: float
    needed_free_gib: float  # total x utilization
    held: list[tuple[str, float]] = field(default_factory=list)  # what holds memory before
    certain: bool = True  # False when the desktop's share is the planning default

    @property
    def held_gib(self) -> float:
        return sum(v for _, v in self.held)

    @property
    def free_gib(self) -> float:
        return self.total_gib - self.held_gib

    @property
    def passes(self) -> bool:
        return self.free_gib >= self.needed_free_gib

    @property
    def max_utilization(self) -> float:
        """The highest utilization (two decimals) whose start-up check passes."""
        best = math.floor(round(self.free_gib / self.total_gib * 100, 6)) / 100
        while best > 0 and self.total_gib * best > self.free_gib:  # float rounding
            best = round(best - 0.01, 2)
        return max(0.0, best)

    def describe(self) -> str:
        held = " + ".join(f"{name} {gib:.2f}" for name, gib in self.held) or "nothing"
        verdict = "passes" if self.passes else ("fails" if self.certain else "likely fails")
        text = (
            f"{verdict}: vLLM needs {self.needed_free_gib:.2f} GiB free ({self.utilization} x "
            f"{self.total_gib:.2f} GiB); the host holds {held} = {self.held_gib:.2f} GiB, "
            f"leaving {self.free_gib:.2f}"
        )
        if not self.passes:
            text += f"; highest utilization that passes: {self.max_utilization}"
        return text


def startup_check(
    total_gib: float,
    utilization: float,
    *,
    host_os: str = "linux",
    desktop_reserve_gib: float | None = None,
    nccl_gib: float = 0.0,
) -> StartupCheck:
    """The free-memory check for one GPU of a host running ``host_os``."""
    held: list[tuple[str, float]] = []
    certain = True
    if host_os == "windows":
        held.append(("WSL2 CUDA context", CUDA_CONTEXT_WSL2_GIB))
        if desktop_reserve_gib is None:
            held.append(("Windows desktop (estimate)", WINDOWS_DESKTOP_GIB))
            certain = False
        else:
            held.append(("desktop (desktop_reserve_gib)", desktop_reserve_gib))
    else:
        held.append(("CUDA context", CUDA_CONTEXT_LINUX_GIB))
        if desktop_reserve_gib:
            held.append(("desktop (desktop_reserve_gib)", desktop_reserve_gib))
    if nccl_gib:
        held.append(("NCCL buffers", nccl_gib))
    return StartupCheck(
        total_gib=total_gib,
        utilization=utilization,
        needed_free_gib=total_gib * utilization,
        held=held,
        certain=certain,
    )
