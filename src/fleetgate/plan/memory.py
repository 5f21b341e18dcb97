"""The GPU memory model, following vLLM's own start-up accounting, version by version.

vLLM takes ``total x gpu_memory_utilization`` as its budget, loads the weights, runs a profile
forward pass of ``max_num_batched_tokens`` tokens (and a sampler pass over one logits row per
dummy request), measures memory that torch does not own, subtracts its CUDA-graph estimate
where its version and model runner do, and gives what is left to the KV cache in blocks of 16
tokens. This module computes each term from the model's shapes and the version's facts
(:mod:`fleetgate.plan.rules`), so it generalises beyond the logs it was checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleetgate.models import ModelArch, ModelInfo
from fleetgate.plan.rules import (
    DEFAULT_VLLM,
    MemoryRules,
    Runner,
    Version,
    default_batch,
    format_version,
    memory_rules_for,
)
from fleetgate.plan.startup import StartupCheck, startup_check

GIB = 1024**3
MIB = 1024**2
BLOCK_SIZE = 16

# With tensor parallelism on GPUs with peer-to-peer access (NVLink, datacenter PCIe), NCCL and
# vLLM's custom all-reduce keep ~2 GiB per GPU; without it (GeForce) custom all-reduce is off
# and NCCL keeps ~0.25 GiB. Before 0.11 that came out of the KV budget; from 0.11 it is taken
# before vLLM's first memory snapshot, so it only counts in the start-up free-memory check.
NCCL_P2P_GIB = 2.0
NCCL_NO_P2P_GIB = 0.22
# Small buffers the profile pass keeps whatever the batch (rotary caches, attention workspace).
ACTIVATION_BASE_GIB = 0.05
# CUDA graphs: vLLM captures the two largest sizes per mode and extrapolates; the first capture
# holds the largest batch's activations, each further one a little private memory that grows
# with the layers' hidden states (at least 1 MiB, vLLM's floor).
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
    # NVFP4: 4-bit values, an fp8 scale per 16 (and a per-tensor fp32 scale)
    "nvfp4": 4 + 8 / 16,
    # MXFP4 (gpt-oss): 4-bit values, an 8-bit shared exponent per 32; experts only
    "mxfp4": 4 + 8 / 32,
}

KV_DTYPE_BYTES = {"auto": 2, "fp16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


# V0 turned chunked prefill on by itself for contexts longer than this.
V0_CHUNKED_PREFILL_ABOVE = 32768


@dataclass(frozen=True)
class PlanInput:
    """One vLLM server as the planner sees it; ``None`` means vLLM's default."""

    name: str
    model: ModelInfo
    gpu_memory_gib: float
    gpu_name: str = "GPU"
    gpu_p2p: bool = True
    gpu_memory_utilization: float | None = None  # None: the version's default (0.92 from 0.21)
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    vllm_version: Version = DEFAULT_VLLM
    # VLLM_USE_V2_MODEL_RUNNER / VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS; None: the default
    runner: Runner | None = None
    estimate_cudagraphs: bool | None = None
    kv_cache_memory_bytes: int | None = None  # --kv-cache-memory-bytes: bypasses profiling
    gpu_arch: str = ""
    # hybrid models keep a second state page per sequence with prefix caching
    enable_prefix_caching: bool = False
    host_os: str = "linux"  # what else holds the GPU before vLLM starts (start-up check)
    desktop_reserve_gib: float | None = None  # measured by the owner; None: the OS's default


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
    overhead_gib: float  # non-torch memory + the CUDA-graph estimate, where deducted
    available_kv_gib: float
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len_fit: int
    fits: bool
    reasons: list[str] = field(default_factory=list)
    fp16_fallback: KvOption | None = None
    vllm_version: str = format_version(DEFAULT_VLLM)
    model_runner: str = "V1"
    engine: str = ""  # "vLLM 0.24.0, V2 model runner", with a note if planned as another
    non_torch_gib: float = 0.0
    cudagraph_gib: float = 0.0  # vLLM's estimate, deducted or not (see cudagraph_term)
    cudagraph_term: str = "none"
    notes: list[str] = field(default_factory=list)  # what the plan assumes or leaves out
    model_source: str = ""  # where the architecture came from (HF cache, catalog, Hub, file)
    weights_exact: bool = False  # from the safetensors headers, not from the shapes
    inflight_tokens: int = 2048  # tokens a sliding-window layer holds beyond its window
    state_pages: int = 1  # recurrent-state pages per sequence (hybrid models)
    startup: StartupCheck | None = None  # vLLM's free-memory check at start-up
    kv_fits: bool = True  # the memory verdict alone (fits: this and a start-up check that
    # passes or only likely fails, the desktop's share being an estimate)
    compile_scratch_gib: float = 0.0  # cold torch.compile scratch, part of activation_gib
    # CUDA graphs captured AFTER the KV cache is sized, where vLLM does not deduct them: what
    # capture needs, and the room it has (free at start-up minus the budget); None: not
    # checked (deducted, eager, or the start-up check already fails)
    runner_buffers_gib: float = 0.0  # V2 sampler buffers; in overhead_gib where counted
    capture_gib: float = 0.0
    capture_room_gib: float | None = None

    @property
    def capture_short(self) -> bool:
        """The graphs captured after sizing need more than the memory left beyond the budget."""
        return self.capture_room_gib is not None and self.capture_gib > self.capture_room_gib

    @property
    def verdict(self) -> str:
        """One verdict for plan and validate alike."""
        if not self.kv_fits:
            return "does NOT fit"
        if self.startup is not None and not self.startup.passes:
            return "will NOT start" if self.startup.certain else "fits, but will likely NOT start"
        if self.capture_short:
            return "fits, but may die capturing CUDA graphs"
        return "fits"

    def capture_check(self) -> str | None:
        """The graph-capture room as one line, where capture comes out of the headroom."""
        if self.capture_room_gib is None:
            return None
        verdict = "short" if self.capture_short else "enough"
        return (
            f"{verdict}: CUDA graphs (~{self.capture_gib:.2f} GiB) are captured after the KV "
            f"cache fills the budget, from what is free beyond it: ~{self.capture_room_gib:.2f} "
            "GiB (free at start-up, minus the budget and the buffers vLLM keeps outside it)"
        )

    @property
    def headroom_gib(self) -> float:
        return self.gpu_memory_gib - self.budget_gib


def weight_bytes(arch: ModelArch, quantization: str) -> int:
    """Weights on the GPUs: quantized linear layers at their bits, the rest at 16 bits.

    Embeddings and lm_head stay 16-bit in AWQ/GPTQ/int8/fp8/bitsandbytes/NVFP4 checkpoints;
    MXFP4 (gpt-oss) quantizes the routed experts only, attention stays 16-bit.
    """
    bits = _LINEAR_BITS.get(quantization, 16.0)
    quantized = arch.expert_params() if quantization == "mxfp4" else arch.linear_params()
    other = arch.param_count() - quantized
    return int(quantized * bits / 8 + other * 2)


def kv_bytes_per_token(arch: ModelArch, kv_cache_dtype: str, tensor_parallel_size: int = 1) -> int:
    """KV bytes one token costs on one GPU: K and V, every attention layer, this GPU's share of
    KV heads. MLA stores one latent (kv_lora_rank + rope dims) per layer, on every GPU."""
    dtype = KV_DTYPE_BYTES[kv_cache_dtype]
    if arch.mla:
        return arch.kv_layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * dtype
    heads = max(1, math.ceil(arch.num_kv_heads / tensor_parallel_size))
    return 2 * arch.kv_layers * heads * arch.head_dim * dtype


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


def sampler_bytes(arch: ModelArch, tokens: int, seqs: int, rules: MemoryRules) -> int:
    """The sampler pass: one logits row per dummy request (min(tokens, seqs) rows, the full
    vocabulary, not split by tensor parallelism), at the runner's bytes per element."""
    return int(min(seqs, tokens) * arch.vocab_size * rules.sampler_bytes)


def runner_buffer_bytes(arch: ModelArch, seqs: int, rules: MemoryRules) -> int:
    """The V2 runner's persistent sampler buffers: penalty statistics per request slot
    (output bin counts over the vocabulary and the prompt's bit mask, int32)."""
    if rules.runner != "V2":
        return 0
    return seqs * (arch.vocab_size + math.ceil(arch.vocab_size / 32)) * 4


def activation_bytes(
    arch: ModelArch, tokens: int, seqs: int, tp: int = 1, rules: MemoryRules | None = None
) -> int:
    """Peak memory of the profile run: the larger of the forward pass over ``tokens`` tokens and
    the sampler pass, plus fixed buffers."""
    rules = rules or memory_rules_for(DEFAULT_VLLM, arch.architecture)
    sampler = sampler_bytes(arch, tokens, seqs, rules)
    return max(forward_bytes(arch, tokens, tp, rules), sampler) + int(ACTIVATION_BASE_GIB * GIB)


def cuda_graph_sizes(
    max_num_seqs: int,
    max_num_batched_tokens: int,
    rules: MemoryRules | None = None,
    *,
    sm100: bool = False,
) -> list[int]:
    """vLLM's capture sizes: 1, 2, 4, then every 8 to 256, every 16 to the largest, which is
    min(2 x max_num_seqs, 512, max_num_batched_tokens) (1024 instead of 512 on data-centre
    Blackwell from 0.28); max_num_batched_tokens is added when it is the cap and off the grid,
    and from 0.31 max_num_seqs too."""
    rules = rules or memory_rules_for(DEFAULT_VLLM)
    limit = rules.cap_sm100 if sm100 else 512
    largest = min(2 * max_num_seqs, limit, max_num_batched_tokens)
    grid = [1, 2, 4, *range(8, 257, 8), *range(272, 1025, 16)]
    sizes = [s for s in grid if s <= largest]
    if largest == max_num_batched_tokens and largest not in sizes:
        sizes.append(largest)
    if rules.capture_max_num_seqs and max_num_seqs <= largest and max_num_seqs not in sizes:
        sizes.append(max_num_seqs)
    return sorted(sizes)


def cuda_graph_bytes(
    arch: ModelArch,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    tp: int = 1,
    rules: MemoryRules | None = None,
    *,
    sm100: bool = False,
) -> int:
    """vLLM's CUDA-graph estimate: per mode (PIECEWISE for every capture size, FULL for the
    decode sizes up to ``max_num_seqs``) it captures the two largest graphs and takes
    first + second x (graphs - 1), the larger first capture counted once. The first holds the
    largest batch's activations; each further graph a little private memory."""
    rules = rules or memory_rules_for(DEFAULT_VLLM, arch.architecture)
    sizes = cuda_graph_sizes(max_num_seqs, max_num_batched_tokens, rules, sm100=sm100)
    if not sizes:
        return 0
    piecewise = len(sizes)
    full = sum(1 for s in sizes if s <= max_num_seqs)
    per_graph = CUDA_GRAPH_BYTES_PER_GRAPH + (
        CUDA_GRAPH_BYTES_PER_LAYER_HIDDEN * arch.num_layers * arch.hidden_size // tp
    )
    further = (piecewise - 1) + max(0, full - 1)
    return forward_bytes(arch, sizes[-1], tp, rules) + further * per_graph


def kv_bytes_for_request(
    arch: ModelArch,
    length: int,
    dtype: str,
    tp: int = 1,
    chunk: int = 2048,
    state_pages: int = 1,
) -> int:
    """KV bytes one request of ``length`` tokens holds, in whole 16-token blocks.

    Full-attention layers keep every token; sliding-window layers keep the window plus the
    tokens in flight (``chunk``), as vLLM's hybrid allocator frees blocks that fall out of the
    window.
    """
    per_layer_token = kv_bytes_per_token(arch, dtype, tp) // arch.kv_layers
    blocks = math.ceil(length / BLOCK_SIZE)
    window_blocks = blocks
    if arch.sliding_window:
        window_blocks = min(blocks, math.ceil((arch.sliding_window - 1 + chunk) / BLOCK_SIZE) + 1)
    tokens_held = (
        arch.full_attention_layers * blocks + arch.sliding_window_layers * window_blocks
    ) * BLOCK_SIZE
    # a hybrid model's recurrent layers hold a fixed state per sequence, split by TP: one page,
    # two with prefix caching (the running state and a checkpoint)
    return tokens_held * per_layer_token + state_pages * arch.state_bytes_per_seq // tp


def _kv_option(
    available: float,
    arch: ModelArch,
    dtype: str,
    tp: int,
    max_model_len: int,
    chunk: int,
    state_pages: int = 1,
) -> KvOption:
    per_token = kv_bytes_per_token(arch, dtype, tp)
    # vLLM keeps one block as the null block; the rest is the pool requests draw from.
    pool = max(0, int(available // (per_token * BLOCK_SIZE)) - 1) * per_token * BLOCK_SIZE
    per_request = kv_bytes_for_request(arch, max_model_len, dtype, tp, chunk, state_pages)
    if arch.sliding_window or arch.hybrid:
        # hybrid allocators: vLLM reports tokens as concurrency x max_model_len
        concurrency = pool / per_request if per_request else 0.0
        tokens = int(concurrency * max_model_len)
    else:
        tokens = int(available // (per_token * BLOCK_SIZE)) * BLOCK_SIZE
        concurrency = tokens / max_model_len
    # the largest max_model_len whose one request fits the pool (vLLM's own binary search)
    lo, hi = 0, arch.max_position_embeddings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kv_bytes_for_request(arch, mid, dtype, tp, chunk, state_pages) <= pool:
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


def nccl_gib(spec: PlanInput) -> float:
    """Memory NCCL (and the custom all-reduce, with peer-to-peer) keeps per GPU under TP."""
    if spec.tensor_parallel_size <= 1:
        return 0.0
    return NCCL_P2P_GIB if spec.gpu_p2p else NCCL_NO_P2P_GIB


def plan_rules(spec: PlanInput) -> MemoryRules:
    """The version's facts for this deployment's model (and any runner/env override)."""
    arch = spec.model.arch
    return memory_rules_for(
        spec.vllm_version,
        arch.architecture,
        hybrid=arch.hybrid,
        moe=bool(arch.num_experts),
        runner=spec.runner,
        estimate_cudagraphs=spec.estimate_cudagraphs,
    )


def plan_deployment(spec: PlanInput) -> DeploymentPlan:
    """Predict what vLLM will log at start-up for one server, and whether it starts."""
    arch = spec.model.arch
    tp = spec.tensor_parallel_size
    rules = plan_rules(spec)
    quant = spec.quantization or spec.model.quantization
    util = spec.gpu_memory_utilization or rules.default_utilization
    max_model_len = spec.max_model_len or arch.max_position_embeddings
    default_tokens, default_seqs = default_batch(rules, spec.gpu_memory_gib, spec.gpu_name)
    seqs = spec.max_num_seqs or default_seqs
    if not rules.chunked_prefill and max_model_len <= V0_CHUNKED_PREFILL_ABOVE:
        default_tokens = max(default_tokens, max_model_len)
    batched = spec.max_num_batched_tokens or max(default_tokens, seqs)
    if spec.max_num_batched_tokens is None and rules.chunked_prefill:
        # vLLM clamps the default to what the requests can hold
        batched = max(min(batched, seqs * max_model_len), min(seqs, batched))
    seqs = min(seqs, batched)
    sm100 = any(n in spec.gpu_name.upper() for n in ("B200", "B100", "GB200", "B300"))
    notes: list[str] = list(arch.unmodelled)
    if quant not in _LINEAR_BITS:
        notes.append(f"quantization {quant!r} is not modelled: its weights planned as 16-bit")

    budget = spec.gpu_memory_gib * util
    weights = (spec.model.weight_bytes or weight_bytes(arch, quant)) / tp / GIB
    activation = activation_bytes(arch, batched, seqs, tp, rules) / GIB
    compile_scratch = 0.0 if spec.enforce_eager else rules.compile_scratch_gib
    if compile_scratch:
        activation += compile_scratch
        notes.append(
            f"activation includes {compile_scratch:.2f} GiB of cold torch.compile scratch: the "
            "profile run is the model's first compiled call (a container without a warm "
            "~/.cache/vllm pays it at every start)"
        )
    non_torch = rules.non_torch_gib
    if rules.nccl_in_budget:
        non_torch += nccl_gib(spec)
    graph_estimate = 0.0
    if not spec.enforce_eager and rules.graphs != "none":
        graph_estimate = cuda_graph_bytes(arch, seqs, batched, tp, rules, sm100=sm100) / GIB
    deducted = graph_estimate if rules.graphs_deducted and not spec.enforce_eager else 0.0
    # graphs vLLM captures after sizing without deducting them come out of the headroom
    capture = graph_estimate if not rules.graphs_deducted else 0.0
    if rules.graphs == "zero (V2 runner)" and not spec.enforce_eager:
        graph_estimate = 0.0
        notes.append(
            "the V2 model runner does not estimate CUDA graphs in this version: they are "
            "captured from the 1 - utilization headroom"
        )
    elif rules.graphs == "opt-in" and not spec.enforce_eager:
        notes.append(
            f"CUDA graphs (estimate {graph_estimate:.2f} GiB) come out of the 1 - utilization "
            "headroom: vLLM deducts them only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1"
        )
    buffers = runner_buffer_bytes(arch, seqs, rules) / GIB
    overhead = non_torch + deducted + (buffers if rules.runner_buffers_counted else 0.0)
    if spec.kv_cache_memory_bytes is not None:
        available = spec.kv_cache_memory_bytes / GIB
        notes.append("--kv-cache-memory-bytes: vLLM skips its memory profile and uses it as is")
    else:
        available = budget - weights - activation - overhead

    chunk = batched * rules.sliding_inflight
    kv_gib = max(available, 0) * GIB
    pages = 2 if spec.enable_prefix_caching else 1
    chosen = _kv_option(kv_gib, arch, spec.kv_cache_dtype, tp, max_model_len, chunk, pages)
    reasons = []
    if available <= 0:
        reasons.append(
            f"no memory left for the KV cache: weights {weights:.2f} + activation "
            f"{activation:.2f} + overhead {overhead:.2f} GiB exceed the budget {budget:.2f} GiB "
            f"({util} x {spec.gpu_memory_gib:.2f} GiB)"
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
    kv_fits = not reasons
    startup = startup_check(
        spec.gpu_memory_gib,
        util,
        host_os=spec.host_os,
        desktop_reserve_gib=spec.desktop_reserve_gib,
        nccl_gib=0.0 if rules.nccl_in_budget else nccl_gib(spec),
    )
    refused = not startup.passes and startup.certain
    capture_room = None
    # the KV cache fills the budget; capture has what was free at start-up beyond it (checked
    # when the start-up check passes: a start it refuses never reaches capture)
    if (
        capture > 0
        and startup.passes
        and rules.runner != "V0"
        and spec.kv_cache_memory_bytes is None
    ):
        capture_room = startup.free_gib - budget
        if not rules.runner_buffers_counted:
            capture_room -= buffers  # persistent, yet outside vLLM's account (0.22-0.26)
    fallback = None
    if chosen.kv_bytes_per_token < kv_bytes_per_token(arch, "auto", tp):
        fallback = _kv_option(kv_gib, arch, "auto", tp, max_model_len, chunk, pages)

    return DeploymentPlan(
        name=spec.name,
        model=arch.name,
        gpu=spec.gpu_name,
        gpu_memory_gib=spec.gpu_memory_gib,
        tensor_parallel_size=tp,
        gpu_memory_utilization=util,
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
        fits=kv_fits and not refused,
        reasons=reasons,
        fp16_fallback=fallback,
        vllm_version=format_version(rules.version),
        model_runner=rules.runner,
        engine=rules.label,
        non_torch_gib=round(non_torch, 3),
        cudagraph_gib=round(graph_estimate, 3),
        cudagraph_term="eager (none)" if spec.enforce_eager else rules.graphs,
        notes=notes,
        model_source=spec.model.source,
        weights_exact=spec.model.weight_bytes is not None,
        inflight_tokens=chunk,
        state_pages=pages,
        startup=startup,
        kv_fits=kv_fits,
        compile_scratch_gib=round(compile_scratch, 3),
        runner_buffers_gib=round(buffers, 3),
        capture_gib=round(capture, 3),
        capture_room_gib=None if capture_room is None else round(capture_room, 3),
    )
