"""What one vLLM version does at start-up, and which model runner serves a model in it.

Read from vLLM's own wheels (0.10.2 ... 0.33.0: ``v1/worker/gpu_worker.py``,
``gpu_model_runner.py``, ``v1/worker/gpu/model_runner.py``, ``engine/arg_utils.py``,
``config/vllm.py``). The terms of the memory account change with the version AND the runner,
so each fact below names the version it starts at; :func:`memory_rules_for` is the one place that
turns a version and a model into those facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Version = tuple[int, ...]
Runner = Literal["V0", "V1", "V2"]
GraphTerm = Literal["none", "opt-in", "estimated", "zero (V2 runner)", "measured (V2 runner)"]

# The newest version whose start-up code was read; a newer one is planned as this one.
NEWEST_MODELLED: Version = (0, 33, 0)
# The version of the default pinned image (fleetfile's Deployment.image default).
DEFAULT_VLLM: Version = (0, 32, 0)

# Architectures the V2 model runner serves by default, by the version that added them
# (``DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES``). From 0.26 every dense non-hybrid model, from
# 0.29 every supported model.
_V2_FROM: dict[str, Version] = {
    "Qwen3ForCausalLM": (0, 22),
    "LlamaForCausalLM": (0, 24),
    "MistralForCausalLM": (0, 24),
    "DeepseekV2ForCausalLM": (0, 24),
    "Qwen2MoeForCausalLM": (0, 24),
    "GraniteMoeForCausalLM": (0, 24),
}
_V2_DENSE_FROM: Version = (0, 26)
_V2_ALL_FROM: Version = (0, 29)

# Sampler peak, bytes per logits element (rows x vocabulary), as the profile run leaves it:
# V0 sampled in float32 with its own softmax/sort temporaries; the V1 runner's bf16 logits,
# their float32 copy and the FlashInfer/Triton pass (15); from 0.21 it also warms the
# PyTorch-native path (softmax, exponential noise, the division: 18); the V2 runner's profile
# may skip top-k/top-p and keeps only the logits and their float32 copy (6).
_SAMPLER_BYTES = {"V0": 36.0, "V1": 15.0, "V1-twice": 18.0, "V2": 6.0}

# Cold torch.compile scratch in the V2 runner's profile peak. The profile run is the model's
# first call, so it is where torch.compile traces, compiles and first runs the model
# (``gpu_worker.py``: "a profile run which compiles the model for max_num_batched_tokens";
# the V2 runner's ``execute_model`` only skips CUDA graphs for it, ``need_eager=is_profile``;
# ``--enforce-eager`` sets ``-cc.mode=none`` and removes it). vLLM charges the allocator's peak
# over that call (``allocated_bytes.all.peak`` minus the level before it), so the first run's
# transient allocations count. The V2 runner's own profile buffers are small (its sampler works
# in place; Gumbel sampling is a blockwise Triton kernel), yet its logged peaks on consumer
# cards are ~0.7 GiB above the model's live tensors (0.26: 1.04 GiB measured where the layer
# tensors and logits give 0.37) whatever the model's width (Qwen3-0.6B and Qwen2.5-7B alike).
# The size comes from those logs, not from the source; a warm compile cache (a restart that
# mounts ~/.cache/vllm) does not pay it, but fleetgate's containers start with an empty one.
COLD_COMPILE_SCRATCH_GIB = 0.70
# The V2 runner's sampler keeps penalty statistics for every request slot, allocated after the
# weights are measured and before the profile (``gpu/sample/penalties.py``: output_bin_counts
# [max_num_reqs, vocab] int32 and prompt_bin_mask [max_num_reqs, vocab / 32] int32, "can be
# very large, taking up GBs"). Until 0.26 vLLM's account misses them (neither weights, peak
# nor non-torch): they sit outside the budget. From 0.27 it charges the device-wide drop in
# free memory since its first snapshot (``utils/mem_utils.py`` total_consumed): inside it.
V2_BUFFERS_COUNTED_FROM: Version = (0, 27)


@dataclass(frozen=True)
class MemoryRules:
    """The start-up accounting of one vLLM version for one model."""

    version: Version  # as asked
    modelled: Version  # what the facts are taken from (the newest modelled, if newer)
    runner: Runner
    chunked_prefill: bool  # V1: the profile pass is max_num_batched_tokens; V0: max_model_len
    sampler_bytes: float
    forward_factor: float
    graphs: GraphTerm
    non_torch_gib: float  # memory outside torch's allocator during the profile, one GPU
    nccl_in_budget: bool  # before 0.11 TP buffers came out of the KV budget
    default_utilization: float
    sliding_inflight: int  # mnbt chunks a sliding-window layer holds beyond its window
    cap_sm100: int  # largest CUDA-graph capture size on data-centre Blackwell
    capture_max_num_seqs: bool  # from 0.31 max_num_seqs is captured when off the grid
    compile_scratch_gib: float  # cold torch.compile scratch in the profile peak (V2 runner)
    runner_buffers_counted: bool  # the V2 runner's persistent buffers inside the budget

    @property
    def graphs_deducted(self) -> bool:
        return self.graphs in ("estimated", "measured (V2 runner)")

    @property
    def label(self) -> str:
        """``vLLM 0.24.0, V2 model runner`` (+ a note when planned as the newest modelled)."""
        text = f"vLLM {format_version(self.version)}, {self.runner} model runner"
        if self.modelled != self.version:
            text += f" (newer than the newest modelled; planned as {format_version(self.modelled)})"
        return text


def format_version(version: Version) -> str:
    return ".".join(str(p) for p in version)


def parse_vllm_version(text: str | None) -> Version:
    """``vllm/vllm-openai:v0.32.0``, ``v0.19.1`` or ``0.19`` -> (0, 32, 0) ...; an image
    without a version tag (``latest``, a digest, nothing) -> the default pinned version."""
    if text:
        tag = text.rsplit(":", 1)[-1] if ":" in text.rsplit("/", 1)[-1] else text
        found = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", tag.strip())
        if found:
            return tuple(int(p) for p in found.groups(default="0"))
    return DEFAULT_VLLM


def check_version(text: str) -> Version:
    """A version given by a person: X.Y or X.Y.Z, else ValueError with what is accepted."""
    found = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-]?\w*)*", text.strip())
    if not found:
        raise ValueError(f"not a vLLM version: {text!r} (give X.Y.Z, e.g. 0.24.0)")
    return tuple(int(p) for p in found.groups(default="0"))


def runner_for(version: Version, architecture: str, *, hybrid: bool, moe: bool) -> Runner:
    """Which model runner serves this model by default (``VLLM_USE_V2_MODEL_RUNNER`` unset)."""
    if version < (0, 8):
        return "V0"
    if version >= _V2_ALL_FROM:
        return "V2"
    since = _V2_FROM.get(architecture)
    if since is not None and version >= since:
        return "V2"
    if version >= _V2_DENSE_FROM and not hybrid and not moe:
        return "V2"
    return "V1"


def memory_rules_for(
    version: Version,
    architecture: str = "LlamaForCausalLM",
    *,
    hybrid: bool = False,
    moe: bool = False,
    runner: Runner | None = None,
    estimate_cudagraphs: bool | None = None,
) -> MemoryRules:
    """The facts for ``version`` (planned as the newest modelled when newer).

    ``runner`` forces a model runner (``VLLM_USE_V2_MODEL_RUNNER``); ``estimate_cudagraphs``
    is ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` (None: the version's default).
    """
    modelled = min(version, NEWEST_MODELLED)
    v = modelled
    chosen = runner or runner_for(v, architecture, hybrid=hybrid, moe=moe)
    if chosen == "V0":
        sampler = _SAMPLER_BYTES["V0"]
    elif chosen == "V2":
        sampler = _SAMPLER_BYTES["V2"]
    else:
        sampler = _SAMPLER_BYTES["V1-twice" if v >= (0, 21) else "V1"]

    graphs: GraphTerm
    if v < (0, 18):
        graphs = "none"  # captured after sizing, out of the 1 - util headroom
    elif v < (0, 21):
        graphs = "estimated" if estimate_cudagraphs else "opt-in"
    elif estimate_cudagraphs is False:
        graphs = "opt-in"
    elif chosen == "V2":
        graphs = "measured (V2 runner)" if v >= _V2_ALL_FROM else "zero (V2 runner)"
    else:
        graphs = "estimated"

    return MemoryRules(
        version=tuple(version),
        modelled=tuple(modelled),
        runner=chosen,
        chunked_prefill=chosen != "V0",
        sampler_bytes=sampler,
        forward_factor=0.9 if chosen == "V0" else 1.17,
        graphs=graphs,
        # before PR #11809 (0.7) the non-torch term also counted the allocator's slack
        non_torch_gib=0.35 if v < (0, 7) else 0.03,
        nccl_in_budget=v < (0, 11),
        default_utilization=0.92 if v >= (0, 21) else 0.9,
        sliding_inflight=2 if v >= (0, 26) else 1,
        cap_sm100=1024 if v >= (0, 28) else 512,
        capture_max_num_seqs=v >= (0, 31),
        compile_scratch_gib=COLD_COMPILE_SCRATCH_GIB if chosen == "V2" else 0.0,
        runner_buffers_counted=chosen == "V2" and v >= V2_BUFFERS_COUNTED_FROM,
    )


def default_batch(rules: MemoryRules, gpu_memory_gib: float, gpu_name: str = "") -> tuple[int, int]:
    """vLLM's API-server defaults (``get_batch_defaults``): (max_num_batched_tokens,
    max_num_seqs). 2048/256 under 70 GiB and on any A100; 8192/1024 from 70 GiB; 16384/1024
    from 160 GiB (0.30+)."""
    if gpu_memory_gib >= 70 and "a100" not in gpu_name.lower():
        if gpu_memory_gib >= 160 and rules.modelled >= (0, 30):
            return 16384, 1024
        return 8192, 1024
    return 2048, 256
