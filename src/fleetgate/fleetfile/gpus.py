"""The bundled GPU catalog.

Memory is what the CUDA runtime reports as total (``torch.cuda.mem_get_info``), which is less
than the number on the box: vLLM's ``gpu_memory_utilization`` is a fraction of this figure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Architecture = Literal["turing", "ampere", "ada", "hopper", "blackwell"]

# Architectures whose attention backends ship an fp8 (e4m3) KV cache path that is stable.
FP8_KV_ARCHITECTURES: frozenset[str] = frozenset({"ada", "hopper", "blackwell"})


class GpuModel(BaseModel):
    """One GPU kind: name, memory the runtime reports, architecture, and whether GPUs of this
    kind reach each other's memory directly (NVLink or PCIe peer-to-peer). GeForce drivers
    disable peer-to-peer, so vLLM's custom all-reduce (and its buffers) is off there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_gib: float
    arch: Architecture
    p2p: bool = False


def _gpu(name: str, memory_gib: float, arch: Architecture, p2p: bool = False) -> GpuModel:
    return GpuModel(name=name, memory_gib=memory_gib, arch=arch, p2p=p2p)


GPU_CATALOG: dict[str, GpuModel] = {
    g.name.lower(): g
    for g in (
        _gpu("T4", 14.58, "turing", p2p=True),
        _gpu("RTX 2080 Ti", 10.57, "turing"),
        _gpu("RTX 3060 12GB", 11.76, "ampere"),
        _gpu("RTX 3060 Ti", 7.75, "ampere"),
        _gpu("RTX 3070", 7.75, "ampere"),
        _gpu("RTX 3080", 9.77, "ampere"),
        _gpu("RTX 3080 12GB", 11.76, "ampere"),
        _gpu("RTX 3090", 23.57, "ampere"),
        _gpu("RTX A4000", 15.72, "ampere", p2p=True),
        _gpu("A10G", 22.06, "ampere", p2p=True),
        _gpu("A100-40GB", 39.39, "ampere", p2p=True),
        _gpu("A100-80GB", 79.15, "ampere", p2p=True),
        _gpu("RTX 4060", 7.75, "ada"),
        _gpu("RTX 4060 Ti", 7.75, "ada"),
        _gpu("RTX 4060 Ti 16GB", 15.59, "ada"),
        _gpu("RTX 4070", 11.59, "ada"),
        _gpu("RTX 4070 Ti Super", 15.59, "ada"),
        _gpu("RTX 4080", 15.59, "ada"),
        _gpu("RTX 4090", 23.55, "ada"),
        _gpu("L4", 22.03, "ada", p2p=True),
        _gpu("L40S", 44.39, "ada", p2p=True),
        _gpu("H100", 79.19, "hopper", p2p=True),
        _gpu("H200", 139.8, "hopper", p2p=True),
        _gpu("RTX 5090", 31.36, "blackwell"),
    )
}


def lookup_gpu(name: str) -> GpuModel:
    """Find a GPU by catalog name, case-insensitively; raise KeyError listing the known names."""
    key = " ".join(name.lower().replace("nvidia", "").replace("geforce", "").split())
    if key in GPU_CATALOG:
        return GPU_CATALOG[key]
    known = ", ".join(g.name for g in GPU_CATALOG.values())
    raise KeyError(f"unknown GPU {name!r}; known: {known}; or give memory_gib and arch")
