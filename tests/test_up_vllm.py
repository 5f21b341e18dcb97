"""``fleetgate up --backend vllm``: a REAL vLLM process per deployment behind the gateway."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from tests.support.tiny_model import vllm_python

from fleetgate.fleetfile import Fleet
from fleetgate.local import local_fleet

pytestmark = pytest.mark.vllm

KEY = "sk-up-vllm-test-key"


def _fleet(model_dir: Path) -> Fleet:
    return Fleet.model_validate(
        {
            "hosts": {
                "box": {
                    "address": "127.0.0.1",
                    "transport": "local",
                    # check_fleet wants a GPU on every vLLM host; vLLM here runs on the CPU
                    "gpus": [{"memory_gib": 24, "arch": "ampere"}],
                }
            },
            "deployments": {
                "tiny": {
                    "host": "box",
                    "port": 8000,
                    "model": "tiny",
                    "model_path": str(model_dir),
                    "served_model_name": "tiny-served",
                    "max_model_len": 1024,
                    "max_num_seqs": 2,
                    "dtype": "bfloat16",
                    "runtime": "process",
                    "python": vllm_python(),
                    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                }
            },
            "gateway": {
                "host": "box",
                "port": 4000,
                "api_keys": [{"name": "test", "key": KEY}],
                "routes": {
                    "tiny-route": {
                        "deployments": ["tiny"],
                        "max_input_tokens": 512,
                        "max_output_tokens": 64,
                    }
                },
            },
        }
    )


async def test_up_with_real_vllm_serves_through_the_gateway(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        local_fleet(_fleet(tiny_model_dir), gateway_port=0, backend="vllm", log_dir=tmp_path) as up,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        backend = up.backends["tiny"]
        assert backend.kind == "vllm"
        # the real server runs with the fleet file's settings
        async with http.get(backend.url + "/v1/models") as resp:
            card = (await resp.json())["data"][0]
        assert card["id"] == "tiny-served" and card["max_model_len"] == 1024

        chat = {"model": "tiny-route", "messages": [{"role": "user", "content": "hello"}]}
        async with http.post(
            up.gateway_url + "/v1/chat/completions", json={**chat, "max_tokens": 4}
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert body["usage"]["completion_tokens"] <= 4

        # over the route's output limit: refused by the gateway with a 4xx
        async with http.post(
            up.gateway_url + "/v1/chat/completions", json={**chat, "max_tokens": 65}
        ) as resp:
            assert resp.status == 400
            assert "64" in (await resp.json())["error"]["message"]
    assert (tmp_path / "tiny.log").exists()
