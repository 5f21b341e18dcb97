"""The backends of a local fleet: one simulator (or one real vLLM process) per deployment.

A simulated deployment is configured by :func:`fleetgate.local.simconfig.sim_config_for` (its
settings, the planner's KV capacity, a GPU-like speed scaled by ``speed``).
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

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Fleet, deployment_url
from fleetgate.local.simconfig import sim_config_for
from fleetgate.render import vllm_command
from fleetgate.sim import SimServer


class BackendStartError(FleetgateError):
    """A local backend could not be started (no model directory, vLLM exited or never got
    healthy)."""


@dataclass(frozen=True)
class LocalBackend:
    """A running backend: its deployment, URL, and what it was started with."""

    deployment: str
    url: str
    port: int
    served_model: str
    max_model_len: int
    max_num_seqs: int
    kv_cache_tokens: int | None
    kind: str  # "sim" | "vllm"


@contextlib.asynccontextmanager
async def sim_backend(
    fleet: Fleet, name: str, *, speed: float = 1.0, port: int = 0
) -> AsyncIterator[LocalBackend]:
    """One simulated deployment on a loopback port (0: a free one)."""
    try:
        config = sim_config_for(fleet, name, speed=speed)
    except ValueError as exc:  # the simulator refuses what vLLM would (e.g. a KV cache too small)
        raise BackendStartError(f"deployment {name}: {exc}") from None
    async with SimServer(config, host="127.0.0.1", port=port) as sim:
        yield LocalBackend(
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


_HAS_VLLM = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"


def vllm_problems(fleet: Fleet) -> list[str]:
    """What would stop a real vLLM start, found before any process starts: a deployment
    without model_path or with one that does not exist, a python that cannot import vllm."""
    problems: list[str] = []
    checked: dict[str, bool] = {}
    for name, dep in fleet.deployments.items():
        if dep.model_path is None:
            problems.append(f"deployment {name}: --backend vllm needs model_path")
        elif not Path(dep.model_path).expanduser().exists():
            problems.append(f"deployment {name}: model_path {dep.model_path} does not exist")
        python = vllm_python(fleet, name)
        if python not in checked:
            try:
                found = subprocess.run([python, "-c", _HAS_VLLM], capture_output=True, timeout=60)
                checked[python] = found.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                checked[python] = False
        if not checked[python]:
            where = (
                "$FLEETGATE_VLLM_PYTHON"
                if os.environ.get("FLEETGATE_VLLM_PYTHON")
                else "the deployment's python:"
                if dep.python
                else "this python (neither $FLEETGATE_VLLM_PYTHON nor python: is set)"
            )
            problems.append(
                f"deployment {name}: {python}, {where}, cannot import vllm; point "
                "FLEETGATE_VLLM_PYTHON (or the deployment's python:) at a python that has vLLM"
            )
    return problems


def vllm_argv(fleet: Fleet, name: str) -> list[str]:
    """The real vLLM OpenAI server for a deployment with a local model directory, with the
    flags the rendered launch scripts use (``fleetgate.render.vllm_command``), run as a process
    on the deployment's (loopback) address and port."""
    dep = fleet.deployments[name]
    if dep.model_path is None:
        raise BackendStartError(
            f"deployment {name}: --backend vllm needs model_path (a local model directory)"
        )
    as_process = fleet.model_copy(
        update={
            "deployments": {
                **fleet.deployments,
                name: dep.model_copy(update={"runtime": "process"}),
            }
        }
    )
    command = vllm_command(as_process, name)
    return [
        vllm_python(fleet, name),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *command.api_server_args(),
    ]


async def _healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise BackendStartError(f"vLLM exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(1.0)
    raise BackendStartError(f"vLLM at {url} was not healthy after {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def vllm_backend(
    fleet: Fleet, name: str, *, log_dir: Path, start_timeout_s: float = 900.0
) -> AsyncIterator[LocalBackend]:
    """One real vLLM process on the deployment's port; its output goes to ``log_dir/<name>.log``."""
    dep = fleet.deployments[name]
    port = dep.port
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, **dep.env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            vllm_argv(fleet, name),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = deployment_url(fleet, name)
    try:
        try:
            await _healthy(url, process, start_timeout_s)
        except BackendStartError as exc:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise BackendStartError(f"{name}: {exc}\n" + "\n".join(tail)) from None
        yield LocalBackend(
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
