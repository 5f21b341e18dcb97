"""Deploy and automatic rollback against a REAL vLLM on the CPU (local transport, runtime process).

The model has 8 layers x 16 KV heads x head_dim 128 (64 KiB per token in bf16), so with
VLLM_CPU_KVCACHE_SPACE=1 a max_model_len of 2048 fits and 32768 does not: vLLM itself refuses to
start ("estimated maximum model length is ..."), which is the failure the rollback must handle.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.support.tiny_model import cached_tiny_model, vllm_python
from tests.support.vllm_server import free_port
from typer.testing import CliRunner

from fleetgate.cli.app import app

pytestmark = pytest.mark.vllm


def _fleet(tmp: Path, model_dir: Path, port: int, max_model_len: int) -> Path:
    fleet = {
        "version": 1,
        "name": "cpu-proof",
        "hosts": {
            "box": {
                "address": "127.0.0.1",
                "transport": "local",
                "workdir": str(tmp / "host"),
                # check_fleet wants a GPU on every vLLM host; vLLM here runs on the CPU
                "gpus": [{"memory_gib": 24, "arch": "ampere"}],
            }
        },
        "deployments": {
            "tiny": {
                "host": "box",
                "port": port,
                "model": "tiny-kv64k",
                "model_path": str(model_dir),
                "served_model_name": "tiny",
                "max_model_len": max_model_len,
                "max_num_seqs": 2,
                "dtype": "bfloat16",
                "runtime": "process",
                "python": vllm_python(),
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            }
        },
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def _served_max_model_len(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
        return json.load(response)["data"][0]["max_model_len"]


def test_bad_release_rolls_back_to_the_previous_max_model_len(tmp_path: Path) -> None:
    if vllm_python() is None:
        pytest.skip("FLEETGATE_VLLM_PYTHON is not set")
    model_dir = cached_tiny_model(num_layers=8, num_kv_heads=16, head_dim=128, hidden_size=256)
    port = free_port()
    runner = CliRunner()
    fleet = _fleet(tmp_path, model_dir, port, 2048)
    common = ["--backups", str(tmp_path / "backups"), "--gate-timeout", "600"]
    try:
        good = runner.invoke(app, ["deploy", str(fleet), *common])
        assert good.exit_code == 0, good.output
        assert "deployed" in good.output
        assert _served_max_model_len(port) == 2048
        # the release keeps the KV cache size vLLM itself logged at start-up, beside the plan
        log = (tmp_path / "host" / "logs" / "vllm-tiny.log").read_text()
        (logged,) = re.findall(r"CPU KV cache size: ([\d,]+) tokens", log)
        logged_tokens = int(logged.replace(",", ""))
        meta = json.loads((tmp_path / "host" / "current" / "release.json").read_text())
        kv = meta["kv_cache"]["tiny"]
        assert kv["reported_tokens"] == logged_tokens, (kv, logged)
        # the plan is for the fleet file's 24 GiB GPU, the server ran on the CPU with 1 GiB of
        # KV space: far off, so the deploy warned with both numbers
        assert kv["planned_tokens"] > 2 * logged_tokens
        warning = good.output[good.output.index("warning: tiny:") :]
        assert f"{kv['planned_tokens']:,}" in warning and logged in warning

        _fleet(tmp_path, model_dir, port, 32768)
        bad = runner.invoke(app, ["deploy", str(fleet), *common])
        print(bad.output)
        assert bad.exit_code == 1, bad.output
        assert "rolled back" in bad.output
        # vLLM's own start failure, from the server's log, is in the report
        assert "estimated maximum model length is" in bad.output
        assert "healthy again" in bad.output
        # the previous release serves again, with its own max_model_len
        assert _served_max_model_len(port) == 2048

        listing = runner.invoke(app, ["releases", str(fleet), "box"])
        assert listing.exit_code == 0, listing.output
        assert "failed" in listing.output
        backups = list((tmp_path / "backups" / "box").iterdir())
        assert len(backups) == 1  # the good release, copied before the bad deploy
        assert "--max-model-len 2048" in (backups[0] / "tiny" / "start-vllm.sh").read_text()
    finally:
        script = tmp_path / "host" / "current" / "tiny" / "start-vllm.sh"
        if script.exists():
            subprocess.run(["bash", str(script), "stop"], check=False, timeout=120)
