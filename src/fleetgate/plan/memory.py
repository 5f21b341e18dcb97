"""The GPU memory model, following vLLM's own start-up accounting (V1 engine).

vLLM takes ``total x gpu_memory_utilization`` as its budget, loads the weights, runs a profile
forward pass of ``max_num_batched_tokens`` tokens (and a sampler pass over ``max_num_seqs``
rows of logits), measures memory that torch does not own, estimates CUDA-graph memory unless
eager, and gives what is left to the KV cache in blocks of 16 tokens. This module computes each
term from the model's shapes, so it generalises beyond the logs it was checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleetgate.models import ModelArch, ModelInfo

GIB = 1024**3
BLOCK_SIZE = 16


# vLLM's defaults for the OpenAI API server (engine/arg_utils.py): GPUs of 70 GiB and more get
# larger batches.
def default_max_num_batched_tokens(gpu_memory_gib: float) -> int:
    return 8192 if gpu_memory_gib >= 70 else 2048


def default_max_num_seqs(gpu_memory_gib: float) -> int:
    return 1024 if gpu_memory_gib >= 70 else 256


# Non-torch memory that appears during start-up (cuBLAS/cuDNN workspaces, allocator slack);
# the CUDA context itself exists before vLLM's baseline and lives outside the budget.
NON_TORCH_GIB = 0.2
NON_TORCH_PER_EXTRA_GPU_GIB = 0.35  # NCCL buffers with tensor parallelism
# Activation buffers the profile pass keeps beyond the per-token terms (rotary caches,
# workspace of the attention backend, torch.compile scratch).
ACTIVATION_BASE_GIB = 0.05
# CUDA graphs: vLLM captures one graph per batch size up to min(2 x max_num_seqs, 512); each
# keeps a private pool that grows with the largest captured batch's hidden states.
CUDA_GRAPH_BASE_GIB = 0.03
CUDA_GRAPH_PER_SIZE_GIB = 0.006

# Bits per quantized linear weight, counting the scales and zero points stored beside them
# (AWQ/GPTQ: an fp16 scale and a 4-bit zero per 128 weights).
_LINEAR_BITS = {
    "none": 16.0,
    "awq": 4 + (16 + 4) / 128,
    "gptq": 4 + (16 + 4) / 128,
    "int8": 8 + 16 / 4096,
    "fp8": 8 + 16 / 4096,
    "bitsandbytes": 4 + 8 / 64 + 32 / (64 * 256),
}

KV_DTYPE_BYTES = {"auto": 2, "fp16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class PlanInput:
    """One vLLM server as the planner sees it; ``None`` means vLLM's default."""

    name: str
    model: ModelInfo
    gpu_memory_gib: float
    gpu_name: str = "GPU"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False


@dataclass(frozen=True)
class KvOption:
    """What one KV-cache dtype gives on this deployment."""

    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_model_len_fit: int
    max_concurrency: float
    fits: bool


@dataclass(frozen=True)
class DeploymentPlan:
    name: str
    model: str
    gpu: str
    gpu_memory_gib: float
    tensor_parallel_size: int
    gpu_memory_utilization: float
    budget_gib: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    quantization: str
    weights_gib: float
    activation_gib: float
    overhead_gib: float
    available_kv_gib: float
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len_fit: int
    fits: bool
    reasons: list[str] = field(default_factory=list)
    fp16_fallback: KvOption | None = None

    @property
    def headroom_gib(self) -> float:
        return self.gpu_memory_gib - self.budget_gib


def weight_bytes(arch: ModelArch, quantization: str) -> int:
    """Weights on the GPUs: quantized linear layers at their bits, the rest at 16 bits.

    Embeddings and lm_head stay 16-bit in AWQ/GPTQ/int8/fp8/bitsandbytes checkpoints.
    """
    linear = arch.linear_params()
    other = arch.param_count() - linear
    return int(linear * _LINEAR_BITS[quantization] / 8 + other * 2)


def kv_bytes_per_token(arch: ModelArch, kv_cache_dtype: str, tensor_parallel_size: int = 1) -> int:
    """KV bytes one token costs on one GPU: K and V, every layer, this GPU's share of KV heads."""
    heads = max(1, math.ceil(arch.num_kv_heads / tensor_parallel_size))
    return 2 * arch.num_layers * heads * arch.head_dim * KV_DTYPE_BYTES[kv_cache_dtype]


def activation_bytes(arch: ModelArch, tokens: int, seqs: int, tp: int = 1) -> int:
    """Peak memory of the profile pass: the largest layer's live tensors for ``tokens`` tokens,
    plus the sampler's float32 logits (and their softmax/sort copies) for ``seqs`` rows."""
    h = arch.hidden_size
    q = arch.num_attention_heads * arch.head_dim // tp
    kv = arch.num_kv_heads * arch.head_dim // tp
    inter = (arch.moe_intermediate_size if arch.num_experts else arch.intermediate_size) // tp
    # residual + normed hidden + attention output (16-bit), qkv projection
    per_token = 2 * (3 * h + q + 2 * kv)
    # MLP: gate_up output (2I) and the activation output (I), 16-bit
    per_token += 2 * 3 * inter
    if arch.num_experts:
        per_token += 2 * h * 2  # MoE permuted hidden states and router outputs
    forward = tokens * per_token
    # lm_head on the last token of each sequence: 16-bit logits, then float32 logits, probs
    # and logprobs, and the sort's values and int64 indices in top-p/top-k.
    vocab = arch.vocab_size
    sampler = min(seqs, tokens) * vocab * (2 + 4 * 3 + 4 + 8)
    return int(forward + sampler + ACTIVATION_BASE_GIB * GIB)


def cuda_graph_bytes(max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """vLLM's CUDA-graph estimate: one graph per capture size up to min(2 x seqs, 512)."""
    largest = min(2 * max_num_seqs, 512, max_num_batched_tokens)
    sizes = [1, 2, 4, *list(range(8, 256 + 1, 8)), *list(range(272, 512 + 1, 16))]
    count = sum(1 for s in sizes if s <= largest)
    return int((CUDA_GRAPH_BASE_GIB + CUDA_GRAPH_PER_SIZE_GIB * count) * GIB)


def _kv_option(
    available: float, arch: ModelArch, dtype: str, tp: int, max_model_len: int, seqs: int
) -> KvOption:
    per_token = kv_bytes_per_token(arch, dtype, tp)
    blocks = max(0, int(available // (per_token * BLOCK_SIZE)))
    tokens = blocks * BLOCK_SIZE
    # vLLM keeps one null block; a request needs ceil(len / 16) blocks of the rest.
    usable = max(0, blocks - 1) * BLOCK_SIZE
    fit_len = min(usable, arch.max_position_embeddings)
    concurrency = tokens / max_model_len if max_model_len else 0.0
    return KvOption(
        dtype, per_token, tokens, fit_len, round(concurrency, 2), fits=usable >= max_model_len
    )


def plan_deployment(spec: PlanInput) -> DeploymentPlan:
    """Predict what vLLM will log at start-up for one server, and whether it starts."""
    arch = spec.model.arch
    tp = spec.tensor_parallel_size
    quant = spec.quantization or spec.model.quantization
    max_model_len = spec.max_model_len or arch.max_position_embeddings
    seqs = spec.max_num_seqs or default_max_num_seqs(spec.gpu_memory_gib)
    batched = spec.max_num_batched_tokens or max(
        default_max_num_batched_tokens(spec.gpu_memory_gib), seqs
    )

    budget = spec.gpu_memory_gib * spec.gpu_memory_utilization
    weights = (spec.model.weight_bytes or weight_bytes(arch, quant)) / tp / GIB
    activation = activation_bytes(arch, batched, seqs, tp) / GIB
    overhead = NON_TORCH_GIB + NON_TORCH_PER_EXTRA_GPU_GIB * (tp > 1)
    if not spec.enforce_eager:
        overhead += cuda_graph_bytes(seqs, batched) / GIB
    available = budget - weights - activation - overhead

    chosen = _kv_option(max(available, 0) * GIB, arch, spec.kv_cache_dtype, tp, max_model_len, seqs)
    reasons = []
    if available <= 0:
        reasons.append(
            f"no memory left for the KV cache: weights {weights:.2f} + activation "
            f"{activation:.2f} + overhead {overhead:.2f} GiB exceed the budget {budget:.2f} GiB "
            f"({spec.gpu_memory_utilization} x {spec.gpu_memory_gib:.2f} GiB)"
        )
    elif not chosen.fits:
        reasons.append(
            f"max_model_len {max_model_len} needs {max_model_len} KV tokens; "
            f"{chosen.max_model_len_fit} fit (the estimated maximum model length vLLM reports)"
        )
    if max_model_len > arch.max_position_embeddings:
        reasons.append(
            f"max_model_len {max_model_len} exceeds the model's max_position_embeddings "
            f"{arch.max_position_embeddings}"
        )
    fallback = None
    if chosen.kv_bytes_per_token < kv_bytes_per_token(arch, "auto", tp):
        fallback = _kv_option(max(available, 0) * GIB, arch, "auto", tp, max_model_len, seqs)

    return DeploymentPlan(
        name=spec.name,
        model=arch.name,
        gpu=spec.gpu_name,
        gpu_memory_gib=spec.gpu_memory_gib,
        tensor_parallel_size=tp,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        budget_gib=round(budget, 3),
        max_model_len=max_model_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        kv_cache_dtype=spec.kv_cache_dtype,
        quantization=quant,
        weights_gib=round(weights, 3),
        activation_gib=round(activation, 3),
        overhead_gib=round(overhead, 3),
        available_kv_gib=round(available, 3),
        kv_bytes_per_token=chosen.kv_bytes_per_token,
        kv_cache_tokens=chosen.kv_cache_tokens,
        max_concurrency=chosen.max_concurrency,
        max_model_len_fit=chosen.max_model_len_fit,
        fits=not reasons,
        reasons=reasons,
        fp16_fallback=fallback,
    )
