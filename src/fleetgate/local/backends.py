"""The backends of a local fleet: one simulator (or one real vLLM process) per deployment.

A simulated deployment gets the settings the fleet file gives it and the KV capacity the
planner computes for its GPU, so it refuses and queues where the real one would; its speed is
a GPU-like default scaled by ``speed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from fleetgate.models import UnknownModelError
from fleetgate.plan import plan_deployment, plan_input
from fleetgate.sim import SimConfig, SimServer
from fleetgate.spec import Fleet

# One sequence on a consumer GPU running a 7-8B 4-bit model: tens of tokens/s decoding,
# thousands of tokens/s prefilling.
GPU_DECODE_TPS = 50.0
GPU_PREFILL_TPS = 5000.0


@dataclass(frozen=True)
class Backend:
    """A running backend: its deployment, URL, and what it was started with."""

    deployment: str
    url: str
    port: int
    served_model: str
    max_model_len: int
    max_num_seqs: int
    kv_cache_tokens: int | None
    kind: str  # "sim" | "vllm"


def sim_config(fleet: Fleet, name: str, *, speed: float = 1.0, seed: int = 0) -> SimConfig:
    """The simulator settings for a deployment: its own limits, the planner's KV capacity."""
    dep = fleet.deployments[name]
    try:
        plan = plan_deployment(plan_input(fleet, name))
    except (UnknownModelError, IndexError):  # unknown model or a host without a GPU listed
        plan = None
    max_model_len = dep.max_model_len or (plan.max_model_len if plan else 4096)
    max_num_seqs = dep.max_num_seqs or (plan.max_num_seqs if plan else 256)
    return SimConfig(
        model=dep.public_name(name),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_tokens=plan.kv_cache_tokens if plan else None,
        prefill_tps=GPU_PREFILL_TPS * speed,
        decode_tps=GPU_DECODE_TPS * speed,
        seed=seed,
    )


@contextlib.asynccontextmanager
async def sim_backend(
    fleet: Fleet, name: str, *, speed: float = 1.0, port: int = 0
) -> AsyncIterator[Backend]:
    """One simulated deployment on a loopback port (0: a free one)."""
    config = sim_config(fleet, name, speed=speed)
    async with SimServer(config, host="127.0.0.1", port=port) as sim:
        yield Backend(
            name,
            sim.url,
            sim.port,
            config.model,
            config.max_model_len,
            config.max_num_seqs,
            config.kv_cache_tokens,
            "sim",
        )


def vllm_python(fleet: Fleet, name: str) -> str:
    """The python that has vLLM: ``$FLEETGATE_VLLM_PYTHON``, the deployment's, or this one."""
    return (
        os.environ.get("FLEETGATE_VLLM_PYTHON") or fleet.deployments[name].python or sys.executable
    )


def vllm_argv(fleet: Fleet, name: str, port: int) -> list[str]:
    """A real vLLM OpenAI server for a deployment with a local model directory."""
    dep = fleet.deployments[name]
    if dep.model_path is None:
        raise ValueError(
            f"deployment {name}: --backend vllm needs model_path (a local model directory)"
        )
    argv = [
        vllm_python(fleet, name),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        dep.model_path,
        "--served-model-name",
        dep.public_name(name),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if dep.max_model_len is not None:
        argv += ["--max-model-len", str(dep.max_model_len)]
    if dep.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(dep.max_num_seqs)]
    if dep.dtype != "auto":
        argv += ["--dtype", dep.dtype]
    return argv + list(dep.extra_args)


async def _healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(1.0)
    raise RuntimeError(f"vLLM at {url} was not healthy after {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def vllm_backend(
    fleet: Fleet, name: str, *, port: int, log_dir: Path, start_timeout_s: float = 900.0
) -> AsyncIterator[Backend]:
    """One real vLLM process; its output goes to ``log_dir/<name>.log``."""
    dep = fleet.deployments[name]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, **dep.env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            vllm_argv(fleet, name, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            await _healthy(url, process, start_timeout_s)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{name}: {exc}\n" + "\n".join(tail)) from None
        yield Backend(
            name,
            url,
            port,
            dep.public_name(name),
            dep.max_model_len or 0,
            dep.max_num_seqs or 0,
            None,
            "vllm",
        )
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait)
