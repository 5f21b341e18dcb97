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


def default_max_num_batched_tokens(gpu_memory_gib: float) -> int:
    """vLLM's API-server default: 8192 on GPUs of 70 GiB and more, 2048 below."""
    return 8192 if gpu_memory_gib >= 70 else 2048


def default_max_num_seqs(gpu_memory_gib: float) -> int:
    return 1024 if gpu_memory_gib >= 70 else 256


@dataclass(frozen=True)
class MemoryRules:
    """How one generation of vLLM accounts for memory at start-up.

    ``chunked_prefill``: the profile pass is ``max_num_batched_tokens`` tokens (V1); without it
    (V0) it is the whole ``max_model_len``. ``sampler_bytes``: bytes per logits element at the
    sampler's peak (float32 logits plus softmax/sort temporaries). ``forward_factor`` scales the
    per-token tensor sizes of one decoder layer to the measured peak. ``graphs_deducted``: since
    v0.21 the CUDA-graph estimate comes out of the budget; before, graphs used the headroom.
    """

    chunked_prefill: bool
    sampler_bytes: float
    forward_factor: float
    graphs_deducted: bool


# V0 turned chunked prefill on by itself for contexts longer than this.
V0_CHUNKED_PREFILL_ABOVE = 32768


def memory_rules_for(version: tuple[int, int]) -> MemoryRules:
    if version < (0, 8):
        return MemoryRules(
            chunked_prefill=False, sampler_bytes=36, forward_factor=0.9, graphs_deducted=False
        )
    return MemoryRules(
        chunked_prefill=True,
        sampler_bytes=15,
        forward_factor=1.17,
        graphs_deducted=version >= (0, 21),
    )


def parse_vllm_version(text: str | None) -> tuple[int, int]:
    """``vllm/vllm-openai:v0.32.0`` or ``0.19.1`` -> (0, 32); unknown -> the current (0, 32)."""
    if text:
        tag = text.rsplit(":", 1)[-1].lstrip("v")
        parts = tag.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    return CURRENT_VLLM


CURRENT_VLLM = (0, 32)

# Memory that appears during start-up outside torch's allocator (cuBLAS workspaces, allocator
# slack); the CUDA context itself exists before vLLM's baseline and lives in the headroom.
NON_TORCH_GIB = 0.25
# With tensor parallelism on GPUs with peer-to-peer access (NVLink, datacenter PCIe), NCCL and
# vLLM's custom all-reduce keep ~2 GiB per GPU; without it (GeForce) custom all-reduce is off.
NON_TORCH_TP_P2P_GIB = 2.05
# Small buffers the profile pass keeps whatever the batch (rotary caches, attention workspace).
ACTIVATION_BASE_GIB = 0.05
# CUDA graphs: one graph per capture size and mode (FULL and PIECEWISE); the first capture holds
# the largest batch's activations, each further one a little private memory that grows with
# the layers' hidden states.
CUDA_GRAPH_BYTES_PER_GRAPH = 1 << 20
CUDA_GRAPH_BYTES_PER_LAYER_HIDDEN = 54

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
    gpu_p2p: bool = True
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    vllm_version: tuple[int, int] = CURRENT_VLLM


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


def forward_bytes(arch: ModelArch, tokens: int, tp: int, rules: MemoryRules) -> int:
    """Peak of the profile forward pass: one decoder layer's live tensors for ``tokens`` tokens."""
    h = arch.hidden_size
    q = arch.num_attention_heads * arch.head_dim // tp
    kv = arch.num_kv_heads * arch.head_dim // tp
    inter = (arch.moe_intermediate_size if arch.num_experts else arch.intermediate_size) // tp
    # residual, normed hidden and attention output, the qkv projection; then the MLP's
    # gate_up output (2 x inter) and activation output (inter); all 16-bit.
    per_token = 2 * (3 * h + q + 2 * kv) + 2 * 3 * inter
    if arch.num_experts:
        per_token += 2 * 2 * h  # MoE permuted hidden states and router outputs
    return int(tokens * per_token * rules.forward_factor)


def activation_bytes(
    arch: ModelArch, tokens: int, seqs: int, tp: int = 1, rules: MemoryRules | None = None
) -> int:
    """Peak memory of the profile run: the larger of the forward pass over ``tokens`` tokens and
    the sampler pass over one logits row per dummy request (min(tokens, seqs) rows, full
    vocabulary, not split by tensor parallelism), plus fixed buffers."""
    rules = rules or memory_rules_for(CURRENT_VLLM)
    sampler = int(min(seqs, tokens) * arch.vocab_size * rules.sampler_bytes)
    return max(forward_bytes(arch, tokens, tp, rules), sampler) + int(ACTIVATION_BASE_GIB * GIB)


def cuda_graph_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """vLLM's capture sizes: 1, 2, 4, then every 8 to 256, every 16 to the largest, which is
    min(2 x max_num_seqs, 512, max_num_batched_tokens)."""
    largest = min(2 * max_num_seqs, 512, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 257, 8), *range(272, 513, 16)]
    return [s for s in sizes if s <= largest]


def cuda_graph_bytes(
    arch: ModelArch,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    tp: int = 1,
    rules: MemoryRules | None = None,
) -> int:
    """The CUDA-graph estimate: the largest batch's activations, plus private memory per graph
    that grows with layers x hidden size. PIECEWISE graphs cover every capture size; FULL
    (uniform decode) graphs only sizes up to ``max_num_seqs``."""
    rules = rules or memory_rules_for(CURRENT_VLLM)
    sizes = cuda_graph_sizes(max_num_seqs, max_num_batched_tokens)
    if not sizes:
        return 0
    graphs = len(sizes) + sum(1 for s in sizes if s <= max_num_seqs)
    per_graph = CUDA_GRAPH_BYTES_PER_GRAPH + (
        CUDA_GRAPH_BYTES_PER_LAYER_HIDDEN * arch.num_layers * arch.hidden_size // tp
    )
    return forward_bytes(arch, sizes[-1], tp, rules) + graphs * per_graph


def kv_bytes_for_request(
    arch: ModelArch, length: int, dtype: str, tp: int = 1, chunk: int = 2048
) -> int:
    """KV bytes one request of ``length`` tokens holds, in whole 16-token blocks.

    Full-attention layers keep every token; sliding-window layers keep the window plus one
    prefill chunk, as vLLM's hybrid allocator frees blocks that fall out of the window.
    """
    per_layer_token = kv_bytes_per_token(arch, dtype, tp) // arch.num_layers
    blocks = math.ceil(length / BLOCK_SIZE)
    window_blocks = blocks
    if arch.sliding_window:
        window_blocks = min(blocks, math.ceil((arch.sliding_window + chunk) / BLOCK_SIZE))
    tokens_held = (
        arch.full_attention_layers * blocks + arch.sliding_window_layers * window_blocks
    ) * BLOCK_SIZE
    return tokens_held * per_layer_token


def _kv_option(
    available: float, arch: ModelArch, dtype: str, tp: int, max_model_len: int, chunk: int
) -> KvOption:
    per_token = kv_bytes_per_token(arch, dtype, tp)
    # vLLM keeps one block as the null block; the rest is the pool requests draw from.
    pool = max(0, int(available // (per_token * BLOCK_SIZE)) - 1) * per_token * BLOCK_SIZE
    per_request = kv_bytes_for_request(arch, max_model_len, dtype, tp, chunk)
    if arch.sliding_window:
        # hybrid models: vLLM reports tokens as concurrency x max_model_len
        concurrency = pool / per_request if per_request else 0.0
        tokens = int(concurrency * max_model_len)
    else:
        tokens = int(available // (per_token * BLOCK_SIZE)) * BLOCK_SIZE
        concurrency = tokens / max_model_len
    # the largest max_model_len whose one request fits the pool (vLLM's own binary search)
    lo, hi = 0, arch.max_position_embeddings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kv_bytes_for_request(arch, mid, dtype, tp, chunk) <= pool:
            lo = mid
        else:
            hi = mid - 1
    return KvOption(
        dtype,
        per_token,
        max(tokens, 0),
        lo,
        round(concurrency, 2),
        fits=per_request <= pool and pool > 0,
    )


def plan_deployment(spec: PlanInput) -> DeploymentPlan:
    """Predict what vLLM will log at start-up for one server, and whether it starts."""
    arch = spec.model.arch
    tp = spec.tensor_parallel_size
    rules = memory_rules_for(spec.vllm_version)
    quant = spec.quantization or spec.model.quantization
    max_model_len = spec.max_model_len or arch.max_position_embeddings
    seqs = spec.max_num_seqs or default_max_num_seqs(spec.gpu_memory_gib)
    default_batch = default_max_num_batched_tokens(spec.gpu_memory_gib)
    if not rules.chunked_prefill and max_model_len <= V0_CHUNKED_PREFILL_ABOVE:
        default_batch = max(default_batch, max_model_len)
    batched = spec.max_num_batched_tokens or max(default_batch, seqs)

    budget = spec.gpu_memory_gib * spec.gpu_memory_utilization
    weights = (spec.model.weight_bytes or weight_bytes(arch, quant)) / tp / GIB
    activation = activation_bytes(arch, batched, seqs, tp, rules) / GIB
    overhead = NON_TORCH_TP_P2P_GIB if tp > 1 and spec.gpu_p2p else NON_TORCH_GIB
    if rules.graphs_deducted and not spec.enforce_eager:
        overhead += cuda_graph_bytes(arch, seqs, batched, tp, rules) / GIB
    available = budget - weights - activation - overhead

    chosen = _kv_option(
        max(available, 0) * GIB, arch, spec.kv_cache_dtype, tp, max_model_len, batched
    )
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
        fallback = _kv_option(max(available, 0) * GIB, arch, "auto", tp, max_model_len, batched)

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
