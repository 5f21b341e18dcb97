"""The vLLM command line of a deployment: the one place that turns settings into flags.

Every artifact (bash, PowerShell, compose, systemd, the argument list) takes its flags from
:func:`vllm_command`, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.fleetfile import Fleet

# Quantizations vLLM reads from the checkpoint itself; passing ``-q awq`` would force the slow
# kernel instead of Marlin, so only online methods are passed on.
_ONLINE_QUANTIZATION = {"fp8", "bitsandbytes"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONTAINER_MODEL_DIR = "/models"


@dataclass(frozen=True)
class VllmCommand:
    """What a deployment runs: the model reference, the flags after it, its environment."""

    name: str
    model: str
    flags: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def serve_args(self) -> list[str]:
        """For ``vllm serve`` (the docker image's entrypoint): the model is positional."""
        return [self.model, *self.flags]

    def api_server_args(self) -> list[str]:
        """For ``python -m vllm.entrypoints.openai.api_server``."""
        return ["--model", self.model, *self.flags]


def vllm_command(fleet: Fleet, name: str) -> VllmCommand:
    """The command line of deployment ``name`` exactly as the fleet file sets it."""
    dep = fleet.deployments[name]
    host = fleet.hosts[dep.host]
    if dep.model_path is None:
        model = dep.model
    elif dep.runtime == "docker":
        model = f"{CONTAINER_MODEL_DIR}/{name}"
    else:
        model = dep.model_path
    flags: list[str] = ["--served-model-name", dep.public_name(name)]
    if dep.runtime == "process":
        flags += ["--host", host.address if host.address in _LOOPBACK else "0.0.0.0"]
    flags += ["--port", str(dep.port)]
    if dep.max_model_len is not None:
        flags += ["--max-model-len", str(dep.max_model_len)]
    if dep.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(dep.max_num_seqs)]
    if dep.max_num_batched_tokens is not None:
        flags += ["--max-num-batched-tokens", str(dep.max_num_batched_tokens)]
    flags += ["--gpu-memory-utilization", f"{dep.gpu_memory_utilization:g}"]
    if dep.kv_cache_dtype != "auto":
        flags += ["--kv-cache-dtype", dep.kv_cache_dtype]
    if dep.quantization in _ONLINE_QUANTIZATION:
        flags += ["--quantization", dep.quantization]
    if dep.dtype != "auto":
        flags += ["--dtype", dep.dtype]
    if dep.tensor_parallel_size > 1:
        flags += ["--tensor-parallel-size", str(dep.tensor_parallel_size)]
    if dep.enforce_eager:
        flags.append("--enforce-eager")
    env = dict(dep.env)
    if dep.on_demand and dep.swap == "sleep":
        # sleep mode, and its /sleep, /wake_up and /is_sleeping routes (dev mode only)
        flags.append("--enable-sleep-mode")
        env.setdefault("VLLM_SERVER_DEV_MODE", "1")
    flags += dep.extra_args
    return VllmCommand(name=name, model=model, flags=tuple(flags), env=tuple(sorted(env.items())))
