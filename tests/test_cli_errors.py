"""A user's mistake is a clear message and exit 1, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from fleetgate.cli.app import app


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_plan_with_an_incomplete_config_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama"}))
    code, out = _run("plan", "--model", "my/model", "--config", str(config), "--gpu", "RTX 4090")
    assert code == 1
    assert "lacks 'num_attention_heads'" in " ".join(out.split())


def test_plan_with_a_config_json_that_is_no_object(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("[1, 2]")
    code, out = _run("plan", "--model", "my/model", "--config", str(config), "--gpu", "RTX 4090")
    assert code == 1 and "not a JSON object" in out


def _fleet_with_model_dir(tmp_path: Path, model_dir: Path) -> Path:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"""
hosts:
  box: {{address: 127.0.0.1, transport: local, gpus: [RTX 4090]}}
deployments:
  m:
    host: box
    model: my/model
    model_path: {model_dir}
    max_model_len: 4096
"""
    )
    return fleet


def test_validate_and_plan_with_a_corrupt_safetensors_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "num_attention_heads": 8,
                "hidden_size": 512,
                "num_hidden_layers": 2,
                "vocab_size": 1000,
            }
        )
    )
    (model_dir / "model.safetensors").write_bytes(b"\xff" * 16)
    fleet = _fleet_with_model_dir(tmp_path, model_dir)
    code, out = _run("plan", str(fleet))
    assert code == 1 and "cannot size the weights" in " ".join(out.split())
    code, out = _run("validate", str(fleet))
    assert code == 1 and "cannot size the weights" in " ".join(out.split())


def test_validate_with_an_incomplete_model_dir(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, out = _run("validate", str(_fleet_with_model_dir(tmp_path, model_dir)))
    assert code == 1 and "lacks 'num_attention_heads'" in " ".join(out.split())


def test_plan_unknown_gpu_points_at_gpu_memory() -> None:
    code, out = _run("plan", "--model", "Qwen/Qwen2.5-7B", "--gpu", "RTX 9999")
    assert code == 1
    flat = " ".join(out.split())
    assert "unknown GPU 'RTX 9999'" in flat and "--gpu-memory" in flat


def test_plan_that_does_not_fit_says_how_short_the_budget_is() -> None:
    code, out = _run("plan", "--model", "meta-llama/Llama-3.1-70B", "--gpu", "RTX 3060 12GB")
    flat = " ".join(out.split())
    assert code == 1
    assert "GiB short" in flat and "(over budget)" in flat


def test_sim_on_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleetgate.cli",
                "sim",
                "--model",
                "x",
                "--max-model-len",
                "1000",
                "--max-num-seqs",
                "2",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
