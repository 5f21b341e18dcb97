"""Reading a real vLLM start-up log (0.6 ... 0.33), and setting the plan beside it.

The log says which deployment it was (version, model, non-default arguments) and what vLLM
measured (weights, KV memory, KV tokens, ...). :func:`read_startup_log` takes those facts; the
planner rebuilds the deployment from them and :func:`compare` lines both up, term by term.
Lines it does not know are ignored; a log without any start-up line is an error.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from fleetgate.kvcache import Drift, kv_cache_line
from fleetgate.models import ModelInfo
from fleetgate.plan.memory import KV_DTYPE_BYTES, DeploymentPlan, PlanInput
from fleetgate.plan.rules import DEFAULT_VLLM, check_version
from fleetgate.plan.startup import CUDA_CONTEXT_LINUX_GIB

# Arguments that change memory in ways the planner does not model: said, never ignored.
_NOT_MODELLED = (
    "speculative_config",
    "cpu_offload_gb",
    "kv_offloading_size",
    "kv_transfer_config",
    "pipeline_parallel_size",
    "data_parallel_size",
    "enable_lora",
    "block_size",
    "calculate_kv_scales",
)
_QUANTIZATIONS = ("awq", "gptq", "int8", "fp8", "bitsandbytes")


class NotAStartupLog(ValueError):
    """The text holds none of vLLM's start-up lines."""


@dataclass
class StartupLog:
    """What one vLLM start-up logged; ``None`` where the log does not say."""

    version: str | None = None
    model: str | None = None
    args: dict[str, Any] = field(default_factory=dict)  # the non-default arguments
    total_gib: float | None = None
    utilization: float | None = None
    weights_gib: float | None = None
    non_torch_gib: float | None = None
    activation_gib: float | None = None
    cudagraph_estimate_gib: float | None = None
    cudagraph_actual_gib: float | None = None
    available_kv_gib: float | None = None
    kv_cache_tokens: int | None = None
    concurrency: float | None = None
    concurrency_len: int | None = None
    max_model_len_fit: int | None = None  # "the estimated maximum model length is N"
    no_cache_memory: bool = False  # "No available memory for the cache blocks"
    free_gib: float | None = None  # "Free memory on device (F/T GiB) on startup ..."
    # the start-up check refused ("... on startup is less than desired ..."); from 0.2x the
    # same words open an informational line of a start that went on
    free_refusal: bool = False
    block_size: int | None = None  # "Setting attention block size to N tokens"
    device: str = "gpu"  # "cpu" for the CPU backend (its KV space is set, not profiled)
    lines: int = 0  # start-up lines recognised

    @property
    def started(self) -> bool | None:
        """Whether vLLM got past sizing its KV cache: False on a logged refusal."""
        if self.no_cache_memory or self.max_model_len_fit is not None or self.free_refusal:
            return False
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens > 0
        return None


_NUM = r"([\d,]+(?:\.\d+)?)"


def _f(text: str) -> float:
    return float(text.replace(",", ""))


def _config_pairs(text: str) -> dict[str, Any]:
    """``key=value, key=value`` of the engine's "with config:" line (values as Python)."""
    out: dict[str, Any] = {}
    for key, value in re.findall(r"(\w+)=('[^']*'|[^,\s]+)", text):
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# ``vllm serve`` flags that are switches (no value follows them)
_SWITCHES = (
    "enforce_eager",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "trust_remote_code",
)


def _command_args(line: str) -> dict[str, Any]:
    """The arguments of a ``vllm serve MODEL --flag value ...`` command posted beside a log
    (issue threads often give the command instead of the "non-default args" line)."""
    try:
        words = shlex.split(line.split("vllm serve", 1)[1])
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if words and not words[0].startswith("-"):
        out["model"] = words.pop(0)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            continue
        key, _, value = word[2:].replace("-", "_").partition("=")
        if not value and key not in _SWITCHES and words and not words[0].startswith("--"):
            value = words.pop(0)
        try:
            out[key] = ast.literal_eval(value) if value else True
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _read_line(log: StartupLog, line: str) -> bool:
    """Take what one line says into ``log``; False when it says nothing known."""
    found = False
    if m := re.search(r"Initializing an? (?:V[01] )?LLM engine \(v(\d+\.\d+\.\d+)", line):
        found, log.version = True, m.group(1)
        cfg = _config_pairs(line.split("with config:", 1)[-1])
        log.model = log.model or cfg.get("model")
        for key, arg in (
            ("max_seq_len", "max_model_len"),
            ("tensor_parallel_size", "tensor_parallel_size"),
            ("quantization", "quantization"),
            ("enforce_eager", "enforce_eager"),
            ("kv_cache_dtype", "kv_cache_dtype"),
        ):
            if key in cfg and cfg[key] not in (None, "None"):
                log.args.setdefault(arg, cfg[key])
    if m := re.search(r"(?:vLLM API server version|█\s+version) v?(\d+\.\d+\.\d+)", line):
        found, log.version = True, log.version or m.group(1)
    if "non-default args:" in line:
        try:
            args = ast.literal_eval(line.split("non-default args:", 1)[1].strip())
        except (ValueError, SyntaxError):
            args = None
        if isinstance(args, dict):
            found = True
            log.args.update(args)
            log.model = args.get("model") or args.get("model_tag") or log.model
    if re.search(r"(?:^|[\s$>])vllm serve \S", line) and "non-default args" not in line:
        args = _command_args(line)
        if args:
            found = True
            for key, value in args.items():  # the logged args line, where there is one, wins
                log.args.setdefault(key, value)
            log.model = log.model or args.get("model")
    if m := re.search(rf"(?:Model loading took|Loading model weights took) {_NUM} G", line):
        found, log.weights_gib = True, _f(m.group(1))
    if m := re.search(rf"total_gpu_memory \({_NUM}GiB\) x gpu_memory_utilization \({_NUM}\)", line):
        found, log.total_gib, log.utilization = True, _f(m.group(1)), _f(m.group(2))
    if m := re.search(rf"total_gpu_memory[= ]+{_NUM}GiB", line):
        found, log.total_gib = True, _f(m.group(1))
        if u := re.search(rf"gpu_memory_utilization[= ]+{_NUM}", line):
            log.utilization = _f(u.group(1))
        if k := re.search(rf"kv_cache_size={_NUM}GiB", line):
            log.available_kv_gib = _f(k.group(1))
        if n := re.search(rf"non_torch_memory={_NUM}GiB", line):
            log.non_torch_gib = _f(n.group(1))
    if "the rest of the memory reserved for KV Cache is" in line:
        found = True
        for pattern, attr in (
            (rf"model weights take {_NUM}GiB", "weights_gib"),
            (rf"non_torch_memory takes {_NUM}GiB", "non_torch_gib"),
            (rf"activation peak memory takes {_NUM}GiB", "activation_gib"),
            (r"reserved for KV Cache is (-?[\d.]+)GiB", "available_kv_gib"),
        ):
            if v := re.search(pattern, line):
                setattr(log, attr, _f(v.group(1)))
    if m := re.search(
        r"(?:Available KV cache memory:|available KV cache memory \()\s*(-?[\d.]+) GiB", line
    ):
        found, log.available_kv_gib = True, _f(m.group(1))
    if m := re.search(r"Explicitly set \(([\d.]+)/([\d.]+)\) GiB for KV cache", line):
        found, log.available_kv_gib, log.total_gib = True, _f(m.group(1)), _f(m.group(2))
        log.device = "cpu"
    if kv := kv_cache_line(line):
        found, (log.kv_cache_tokens, log.device) = True, kv
    if m := re.search(rf"Maximum concurrency for {_NUM} tokens per request: {_NUM}x", line):
        found, log.concurrency_len, log.concurrency = True, int(_f(m.group(1))), _f(m.group(2))
    if m := re.search(rf"Estimated CUDA graph memory: {_NUM} GiB", line):
        found, log.cudagraph_estimate_gib = True, _f(m.group(1))
    if m := re.search(
        rf"CUDA graph pool memory: {_NUM} GiB \(actual\), {_NUM} GiB \(estimated\)", line
    ):
        found, log.cudagraph_actual_gib = True, _f(m.group(1))
        log.cudagraph_estimate_gib = _f(m.group(2))
    if m := re.search(rf"estimated maximum model length is {_NUM}", line):
        found, log.max_model_len_fit = True, int(_f(m.group(1)))
    if m := re.search(rf"stored in KV cache \({_NUM}\)", line):
        found, log.max_model_len_fit = True, int(_f(m.group(1)))
    if "No available memory for the cache blocks" in line:
        found, log.no_cache_memory = True, True
    if m := re.search(rf"Free memory on device[^(]*\({_NUM}/{_NUM} GiB\) on startup", line):
        found, log.free_gib, log.total_gib = True, _f(m.group(1)), _f(m.group(2))
        log.free_refusal = "on startup is less than" in line
    # the informational form (a start that went on): what the profile charged, term by term;
    # 0.27+ gives weights and non-torch as one "consumed memory" figure
    if "Actual usage is" in line:
        for pattern, attr in (
            (rf"Actual usage is {_NUM} GiB for weight,", "weights_gib"),
            (rf"{_NUM} GiB for peak activation", "activation_gib"),
            (rf"{_NUM} GiB for non-torch memory", "non_torch_gib"),
            (rf"{_NUM} GiB for CUDAGraph memory", "cudagraph_actual_gib"),
        ):
            if attr == "weights_gib" and log.weights_gib is not None:
                continue  # "Model loading took" says it to more digits
            if v := re.search(pattern, line):
                found = True
                setattr(log, attr, _f(v.group(1)))
    if m := re.search(rf"desired GPU memory utilization (?:is )?\({_NUM}", line, re.I):
        found, log.utilization = True, _f(m.group(1))
    if m := re.search(r"Setting attention block size to (\d+) tokens", line):
        found, log.block_size = True, int(m.group(1))
    return found


def read_startup_log(text: str) -> StartupLog:
    """The facts of a vLLM start-up log. Raises NotAStartupLog when it has none."""
    log = StartupLog()
    # a posted shell command continues over lines ending in a backslash
    for line in re.sub(r"\\\r?\n", " ", text).splitlines():
        log.lines += _read_line(log, line)
    if log.lines == 0:
        raise NotAStartupLog(
            "no vLLM start-up lines found (looked for the version, 'non-default args', "
            "'Model loading took', 'Available KV cache memory', 'GPU KV cache size', ...)"
        )
    if log.utilization is None and "gpu_memory_utilization" in log.args:
        log.utilization = float(log.args["gpu_memory_utilization"])
    return log


@dataclass(frozen=True)
class Term:
    """One line of the side-by-side table."""

    name: str
    unit: str
    planned: float | None
    logged: float | None

    @property
    def difference(self) -> float | None:
        if self.planned is None or self.logged is None:
            return None
        return self.planned - self.logged

    @property
    def relative(self) -> float | None:
        if self.difference is None or not self.logged:
            return None
        return self.difference / abs(self.logged)


def compare(plan: DeploymentPlan, log: StartupLog) -> list[Term]:
    """Plan and log, term by term; a term the log does not state has ``logged`` None."""
    started = log.started
    return [
        Term("weights", "GiB", plan.weights_gib, log.weights_gib),
        Term("activation peak", "GiB", plan.activation_gib, log.activation_gib),
        Term("non-torch memory", "GiB", plan.non_torch_gib, log.non_torch_gib),
        Term("CUDA graph estimate", "GiB", plan.cudagraph_gib, log.cudagraph_estimate_gib),
        Term("available KV cache", "GiB", plan.available_kv_gib, log.available_kv_gib),
        Term("KV cache tokens", "tokens", plan.kv_cache_tokens, log.kv_cache_tokens),
        Term("max concurrency", "x", plan.max_concurrency, log.concurrency),
        Term(
            "largest max_model_len",
            "tokens",
            plan.max_model_len_fit,
            log.max_model_len_fit,
        ),
        Term("starts", "", float(plan.fits), None if started is None else float(started)),
    ]


def plan_input_from_log(
    log: StartupLog,
    info: ModelInfo,
    *,
    gpu_memory_gib: float,
    gpu_name: str = "GPU",
    gpu_p2p: bool = False,
) -> tuple[PlanInput, list[str]]:
    """The deployment the log describes, and what in it the planner does not model."""
    a = log.args
    version = DEFAULT_VLLM
    if log.version:
        version = check_version(log.version)
    quant = a.get("quantization")
    dtype = str(a.get("kv_cache_dtype") or "auto")
    unmodelled = [f"{k} {a[k]!r}" for k in _NOT_MODELLED if a.get(k) not in (None, 1, False)]
    if quant and quant not in _QUANTIZATIONS:
        unmodelled.append(f"quantization {quant!r} (planned from the checkpoint's own)")
    if dtype not in KV_DTYPE_BYTES:
        unmodelled.append(f"kv_cache_dtype {dtype!r} (planned as auto)")
        dtype = "auto"
    if not log.version:
        unmodelled.append("the log names no vLLM version: planned as the default")
    kv_bytes = a.get("kv_cache_memory_bytes")
    # a logged refusal says what was free: what else held the GPU becomes the host's reserve
    reserve = None
    if log.free_gib is not None and log.total_gib is not None:
        reserve = max(0.0, log.total_gib - log.free_gib - CUDA_CONTEXT_LINUX_GIB)
    spec = PlanInput(
        name=log.model or "from log",
        model=info,
        gpu_memory_gib=gpu_memory_gib,
        gpu_name=gpu_name,
        gpu_p2p=gpu_p2p,
        gpu_memory_utilization=log.utilization,
        max_model_len=int(a.get("max_model_len") or log.concurrency_len or 0) or None,
        max_num_seqs=int(a["max_num_seqs"]) if a.get("max_num_seqs") else None,
        max_num_batched_tokens=(
            int(a["max_num_batched_tokens"]) if a.get("max_num_batched_tokens") else None
        ),
        kv_cache_dtype=dtype,
        quantization=quant if quant in _QUANTIZATIONS else None,
        tensor_parallel_size=int(a.get("tensor_parallel_size") or 1),
        enforce_eager=bool(a.get("enforce_eager")),
        vllm_version=version,
        kv_cache_memory_bytes=int(kv_bytes) if kv_bytes else None,
        desktop_reserve_gib=reserve,
        enable_prefix_caching=bool(a.get("enable_prefix_caching")),
    )
    return spec, unmodelled


def drift(plan: DeploymentPlan, log: StartupLog) -> Drift | None:
    """How far the plan was from the deployment's own start-up lines (None: it logged none)."""
    if log.kv_cache_tokens is None:
        return None
    return Drift(plan.kv_cache_tokens, log.kv_cache_tokens)
