"""On-demand swapping of REAL vLLM CPU servers: deployed as a release on this machine (local
transport, runtime process), started and stopped by the control layer through the release's
rendered unit scripts, behind the real gateway.

One host "GPU" shared by three on-demand deployments of one tiny model (each takes 0.9 of the
GPU, so one runs at a time; ``swap: restart``): ``a`` is the host's default, ``b`` stops when
idle, ``c`` asks for a max_model_len of 32768 that VLLM_CPU_KVCACHE_SPACE=1 cannot hold, so vLLM
itself refuses to start ("estimated maximum model length is ..."). Five vLLM starts in all:
a, b, a (default after b's idle stop), c (fails), a (default after the failure).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.support.tiny_model import cached_tiny_model, vllm_python
from tests.support.vllm_server import free_port
from typer.testing import CliRunner

from fleetgate.cli.app import app
from fleetgate.control import release_controller
from fleetgate.fleetfile import load_fleet
from fleetgate.gateway import serve

pytestmark = pytest.mark.vllm

START_S = 900  # one CPU start is 75-150 s on an idle machine; this one is shared


def _fleet(tmp: Path, model_dir: Path) -> Path:
    def dep(port: int, max_model_len: int, **kw: Any) -> dict[str, Any]:
        return {
            "host": "box",
            "port": port,
            "model": "tiny-kv64k",
            "model_path": str(model_dir),
            "max_model_len": max_model_len,
            "max_num_seqs": 2,
            "dtype": "bfloat16",
            "runtime": "process",
            "python": vllm_python(),
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "on_demand": True,
            "load_timeout_s": START_S,
            **kw,
        }

    fleet = {
        "name": "on-demand-cpu",
        "hosts": {
            "box": {
                "address": "127.0.0.1",
                "transport": "local",
                "workdir": str(tmp / "host"),
                "gpus": [{"memory_gib": 24, "arch": "ampere"}],
                "default": "a",
            },
            # the gateway runs in this test's process (deploy only installs box's release)
            "gw": {"address": "127.0.0.1", "transport": "local"},
        },
        "deployments": {
            "a": dep(free_port(), 2048),
            "b": dep(free_port(), 2048, idle_stop_s=5),
            "c": dep(free_port(), 32768),
        },
        "gateway": {
            "host": "gw",
            "port": free_port(),
            "defaults": {"load_wait_s": START_S, "queue_wait_s": START_S},
            "routes": {name: {"deployments": [name]} for name in ("a", "b", "c")},
        },
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.5)


async def test_swap_restart_drain_idle_stop_failed_start_and_default(tmp_path: Path) -> None:
    if vllm_python() is None:
        pytest.skip("FLEETGATE_VLLM_PYTHON is not set")
    model_dir = cached_tiny_model(num_layers=8, num_kv_heads=16, head_dim=128, hidden_size=256)
    path = _fleet(tmp_path, model_dir)
    deployed = CliRunner().invoke(
        app, ["deploy", str(path), "box", "--backups", str(tmp_path / "backups")]
    )
    assert deployed.exit_code == 0, deployed.output
    assert "on demand, started by the gateway's control layer" in deployed.output
    fleet = load_fleet(path).fleet
    controller = release_controller(fleet)
    try:
        async with (
            serve(fleet, readiness=controller) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=START_S * 2)) as http,
        ):

            async def state(name: str) -> str:
                async with http.get(gw.url + "/health/ready") as resp:
                    return str((await resp.json())["deployments"][name]["state"])

            async def ask(model: str, **kw: Any) -> tuple[int, Any]:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}
                async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
                    return resp.status, await resp.json()

            # the host's default comes up by itself
            await _until(lambda: _is(state("a"), "ready"), START_S)
            # a long answer streams from a while b is asked for
            body = {
                "model": "a",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 600,
                "stream": True,
            }
            stream = await http.post(gw.url + "/v1/chat/completions", json=body)
            assert stream.status == 200
            assert (await stream.content.readline()).startswith(b"data: ")
            for_b = asyncio.ensure_future(ask("b", max_tokens=5))
            await _until(lambda: _is(state("a"), "draining"), 60)
            rest = (await stream.read()).decode()
            stream.release()
            assert "data: [DONE]" in rest and '"error"' not in rest  # a's answer finished
            status, answer = await for_b
            assert status == 200, answer
            assert answer["choices"][0]["message"]["content"] is not None
            assert controller.state("a") == "off"
            # b stops after 5 s without requests; a comes back as the default
            await _until(lambda: _is(state("b"), "off"), 60)
            await _until(lambda: _is(state("a"), "ready"), START_S)
            # c cannot start: vLLM's own refusal comes back in a 503
            status, refusal = await ask("c", max_tokens=5)
            assert status == 503, refusal
            message = refusal["error"]["message"]
            assert "deployment 'c' could not be brought up" in message
            assert "estimated maximum model length is" in message
            assert controller.state("c") == "failed"
            await _until(lambda: _is(state("a"), "ready"), START_S)
            status, _ = await ask("a", max_tokens=5)
            assert status == 200
            assert {n: d.swaps for n, d in controller.deps.items()} == {"a": 3, "b": 1, "c": 0}
    finally:
        for name in ("a", "b", "c"):
            script = tmp_path / "host" / "current" / name / "start-vllm.sh"
            if script.exists():
                subprocess.run(["bash", str(script), "stop"], check=False, timeout=120)


async def _is(value: Awaitable[str], wanted: str) -> bool:
    return await value == wanted
