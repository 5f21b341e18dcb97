"""The GPU memory planner: will a deployment fit, and what is the largest context that does."""

from fleetgate.plan.display import memory_bar, memory_split
from fleetgate.plan.fleetplan import fleet_memory, plan_fleet, plan_input, plan_problems
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

__all__ = [
    "BLOCK_SIZE",
    "DeploymentPlan",
    "KvOption",
    "PlanInput",
    "activation_bytes",
    "cuda_graph_bytes",
    "fleet_memory",
    "kv_bytes_per_token",
    "memory_bar",
    "memory_split",
    "plan_deployment",
    "plan_fleet",
    "plan_input",
    "plan_problems",
    "weight_bytes",
]
