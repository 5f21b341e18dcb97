"""A simulator configured as one deployment of a fleet file would run on its GPU."""

from __future__ import annotations

from fleetgate.fleetfile import Fleet
from fleetgate.local.speed import gpu_like_speed
from fleetgate.models import UnknownModelError
from fleetgate.plan import plan_deployment, plan_input
from fleetgate.sim.config import SimConfig

# Without a plan (unknown model, no GPU listed): the size of a 7-8B 4-bit model.
_DEFAULT_WEIGHTS_GIB = 5.0


def sim_config_for(fleet: Fleet, name: str, *, speed: float = 1.0, seed: int = 0) -> SimConfig:
    """The deployment's served name and limits, the planner's KV capacity for its GPU, and a
    GPU-like speed for its weight size (times ``speed``), so the simulator refuses, queues and
    streams where the real server would."""
    dep = fleet.deployments[name]
    try:
        plan = plan_deployment(plan_input(fleet, name))
    except (UnknownModelError, IndexError):  # unknown model or a host without a GPU listed
        plan = None
    max_model_len = dep.max_model_len or (plan.max_model_len if plan else 4096)
    max_num_seqs = dep.max_num_seqs or (plan.max_num_seqs if plan else 256)
    gpu = gpu_like_speed(plan.weights_gib if plan else _DEFAULT_WEIGHTS_GIB, max_num_seqs)
    return SimConfig(
        model=dep.public_name(name),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_tokens=plan.kv_cache_tokens if plan else None,
        prefill_tps=gpu.prefill_tps * speed,
        decode_tps=gpu.decode_tps * speed,
        batch_tps=gpu.batch_tps * speed,
        seed=seed,
    )
