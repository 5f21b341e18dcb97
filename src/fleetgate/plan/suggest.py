"""Settings a person can pick from: per KV dtype, the largest context at 1, 2, 4 and 8
sequences, the most sequences at the asked context, what fp16 costs against fp8, and the
highest utilization that passes vLLM's start-up check. Each figure is a full plan, so the
profile's dependence on ``max_num_seqs`` (the sampler pass) is in it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fleetgate.plan.memory import (
    BLOCK_SIZE,
    DeploymentPlan,
    PlanInput,
    kv_bytes_for_request,
    plan_deployment,
)

SEQUENCES = (1, 2, 4, 8)
KV_DTYPES = ("auto", "fp8")


@dataclass(frozen=True)
class DtypeOption:
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_cache_tokens: int  # at the asked settings
    largest_context: dict[int, int]  # sequences -> the largest max_model_len they all fit at
    most_sequences: int  # full-length requests of the asked max_model_len that fit at once


@dataclass(frozen=True)
class Suggestions:
    name: str
    model: str
    gpu: str
    engine: str
    max_model_len: int
    options: list[DtypeOption] = field(default_factory=list)
    fp16_cost_tokens: int = 0  # tokens fp16 (auto) holds fewer than fp8
    max_utilization: float = 0.0  # the highest that passes the start-up check
    tokens_at_max_utilization: int = 0  # KV tokens of the asked dtype at that utilization
    plan: DeploymentPlan | None = None


def _pool(plan: DeploymentPlan) -> int:
    """The bytes requests draw from: whole blocks less vLLM's null block."""
    per_block = plan.kv_bytes_per_token * BLOCK_SIZE
    return max(0, int(max(plan.available_kv_gib, 0) * 1024**3 // per_block) - 1) * per_block


def _largest_context(spec: PlanInput, seqs: int, dtype: str) -> int:
    plan = plan_deployment(replace(spec, max_num_seqs=seqs, kv_cache_dtype=dtype))
    arch = spec.model.arch
    pool = _pool(plan)
    chunk = plan.inflight_tokens
    lo, hi = 0, arch.max_position_embeddings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need = seqs * kv_bytes_for_request(
            arch, mid, dtype, spec.tensor_parallel_size, chunk, plan.state_pages
        )
        lo, hi = (mid, hi) if need <= pool else (lo, mid - 1)
    return lo


def suggest(spec: PlanInput) -> Suggestions:
    """The table for one deployment (the asked settings otherwise as given)."""
    asked = plan_deployment(spec)
    arch = spec.model.arch
    options = []
    for dtype in KV_DTYPES:
        plan = plan_deployment(replace(spec, kv_cache_dtype=dtype))
        per_request = kv_bytes_for_request(
            arch,
            plan.max_model_len,
            dtype,
            spec.tensor_parallel_size,
            plan.inflight_tokens,
            plan.state_pages,
        )
        options.append(
            DtypeOption(
                kv_cache_dtype=dtype,
                kv_bytes_per_token=plan.kv_bytes_per_token,
                kv_cache_tokens=plan.kv_cache_tokens,
                largest_context={n: _largest_context(spec, n, dtype) for n in SEQUENCES},
                most_sequences=_pool(plan) // per_request if per_request else 0,
            )
        )
    by_dtype = {o.kv_cache_dtype: o for o in options}
    check = asked.startup
    best = check.max_utilization if check else asked.gpu_memory_utilization
    at_best = plan_deployment(replace(spec, gpu_memory_utilization=best)) if best > 0 else None
    return Suggestions(
        name=asked.name,
        model=asked.model,
        gpu=asked.gpu,
        engine=asked.engine,
        max_model_len=asked.max_model_len,
        options=options,
        fp16_cost_tokens=by_dtype["fp8"].kv_cache_tokens - by_dtype["auto"].kv_cache_tokens,
        max_utilization=best,
        tokens_at_max_utilization=at_best.kv_cache_tokens if at_best else 0,
        plan=asked,
    )
