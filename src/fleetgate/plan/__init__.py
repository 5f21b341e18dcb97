"""The GPU memory planner: will a deployment fit, and what is the largest context that does."""

from fleetgate.plan.display import memory_bar, memory_split
from fleetgate.plan.fleetplan import (
    fleet_memory,
    fleet_problems,
    plan_fleet,
    plan_input,
    plan_problems,
    planned_kv_tokens,
    residency_problems,
    sleep_ram_gib,
)
from fleetgate.plan.memory import (
    BLOCK_SIZE,
    DeploymentPlan,
    KvOption,
    PlanInput,
    activation_bytes,
    cuda_graph_bytes,
    kv_bytes_per_token,
    plan_deployment,
    weight_bytes,
)
from fleetgate.plan.residency import SLEEP_RESIDUE_GIB, GpuResidency, gpu_residency
from fleetgate.plan.rules import (
    DEFAULT_VLLM,
    NEWEST_MODELLED,
    MemoryRules,
    check_version,
    format_version,
    memory_rules_for,
    parse_vllm_version,
)

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_VLLM",
    "NEWEST_MODELLED",
    "SLEEP_RESIDUE_GIB",
    "DeploymentPlan",
    "GpuResidency",
    "KvOption",
    "MemoryRules",
    "PlanInput",
    "activation_bytes",
    "check_version",
    "cuda_graph_bytes",
    "fleet_memory",
    "fleet_problems",
    "format_version",
    "gpu_residency",
    "kv_bytes_per_token",
    "memory_bar",
    "memory_rules_for",
    "memory_split",
    "parse_vllm_version",
    "plan_deployment",
    "plan_fleet",
    "plan_input",
    "plan_problems",
    "planned_kv_tokens",
    "residency_problems",
    "sleep_ram_gib",
    "weight_bytes",
]
