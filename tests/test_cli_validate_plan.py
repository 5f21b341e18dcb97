"""``fleetgate validate`` and ``fleetgate plan``: exit codes, messages, JSON fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetgate.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homelab" / "fleet.yaml"
ENV = {"FLEETGATE_API_KEY": "sk-test-0123456789"}
PLAN_FIELDS = {
    "name",
    "weights_gib",
    "kv_bytes_per_token",
    "activation_gib",
    "overhead_gib",
    "available_kv_gib",
    "kv_cache_tokens",
    "max_concurrency",
    "max_model_len_fit",
    "fits",
}

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def flat(text: str) -> str:
    """Rich wraps long lines at the terminal width; compare with whitespace collapsed."""
    return " ".join(text.split())


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


ONE_BOX = """\
    hosts:
      box:
        os: linux
        gpus: [{gpu}]
    deployments:
      main:
        host: box
        model: {model}
        max_model_len: {ctx}
        max_num_seqs: 4
        kv_cache_dtype: {kv}
"""


def one_box(
    tmp_path: Path,
    *,
    gpu: str = "RTX 4090",
    model: str = "Qwen/Qwen2.5-7B-Instruct-AWQ",
    ctx: int = 8192,
    kv: str = "auto",
    extra: str = "",
) -> Path:
    text = textwrap.dedent(ONE_BOX.format(gpu=gpu, model=model, ctx=ctx, kv=kv))
    return write(tmp_path, text + textwrap.dedent(extra))


# --- validate ---------------------------------------------------------------------------------


def test_validate_reference_fleet_is_valid_with_warnings() -> None:
    result = invoke("validate", str(EXAMPLE), env=ENV)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "valid" in out and "3 warning(s)" in out
    assert "deployments.wintermute.kv_cache_dtype: fp8 KV cache on ampere" in out
    assert "deployments.wintermute.gpu_memory_utilization" in out
    assert "deployments.armitage.gpu_memory_utilization" in out
    assert "error" not in out.replace("0 error", "")


def test_validate_before_fleet_is_valid() -> None:
    result = invoke("validate", str(EXAMPLE.with_name("fleet.before.yaml")), env=ENV)
    assert result.exit_code == 0, result.output


def test_validate_without_secrets_warns_of_each_unset_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No secrets needed: the unset ${VAR} is a warning with its line; the file is valid."""
    monkeypatch.delenv("FLEETGATE_API_KEY", raising=False)
    result = invoke("validate", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    out = flat(result.stderr)
    assert "warning: " in out and "environment variable FLEETGATE_API_KEY is not set" in out
    assert f"{EXAMPLE}:59: gateway.api_keys.0.key" in out
    assert "valid" in flat(result.stdout)


def test_validate_without_secrets_still_checks_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structure and limits are checked with the secret unset: a limit over the context is an
    error, and the unset key is listed beside it."""
    monkeypatch.delenv("FLEETGATE_API_KEY", raising=False)
    text = EXAMPLE.read_text().replace("max_input_tokens: 7000", "max_input_tokens: 9000")
    assert text != EXAMPLE.read_text()
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    out = flat(result.stderr)
    assert "max_input_tokens" in out and "error: " in out
    assert "FLEETGATE_API_KEY is not set" in out


def test_validate_strict_requires_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETGATE_API_KEY", raising=False)
    result = invoke("validate", str(EXAMPLE), "--strict")
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "error: " in out and "environment variable FLEETGATE_API_KEY is not set" in out
    assert f"{EXAMPLE}:" in out and "gateway.api_keys.0.key" in out
    result = invoke("validate", str(EXAMPLE), "--strict", env=ENV)
    assert result.exit_code == 0, result.output
    assert "FLEETGATE_API_KEY" not in result.output


def test_validate_schema_error_exit_1_with_file_line_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        hosts:
          box: {gpus: [RTX 3090]}
        deployments:
          wintermute:
            host: box
            model: m
            max_num_seqs: -2
        """,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert f"error: {path}:7: deployments.wintermute.max_num_seqs:" in out
    assert "greater than or equal to 1" in out


def test_validate_invalid_yaml_exit_1(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts: [unclosed\n")
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert "not valid YAML" in flat(result.stderr)


def test_validate_missing_file_exit_1(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 1
    assert "cannot read" in flat(result.stderr)


def test_validate_cross_check_error_has_a_hint(tmp_path: Path) -> None:
    path = one_box(
        tmp_path,
        extra="""\
        gateway:
          host: box
          routes:
            r:
              deployments: [main]
              max_input_tokens: 8000
              max_output_tokens: 1024
        """,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "gateway.routes.r.max_input_tokens" in out
    assert "9024 exceeds deployment 'main''s max_model_len 8192" in out
    assert "hint: lower max_input_tokens to 7168" in out
    assert "1 error(s)" in flat(result.stdout)


def test_validate_warning_only_exits_0(tmp_path: Path) -> None:
    path = one_box(tmp_path, gpu="RTX 3090", kv="fp8")
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr
    assert "1 warning(s)" in flat(result.stdout)


def test_validate_plan_that_does_not_fit(tmp_path: Path) -> None:
    # 70B parameters at 16 bits: about 131 GiB of weights for a 12 GB card
    path = one_box(tmp_path, gpu="RTX 3060 12GB", model="meta-llama/Llama-3.1-70B-Instruct")
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "deployments.main.max_model_len: does not fit" in out
    assert "smaller or quantized model" in out


def test_validate_context_that_does_not_fit_suggests_the_largest(tmp_path: Path) -> None:
    # an 8B AWQ model fits an 8 GiB card, but not with a 128k context
    path = one_box(
        tmp_path,
        gpu="RTX 4060",
        model="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        ctx=131072,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "does not fit" in out
    assert "lower max_model_len to" in out


def test_validate_unknown_model_is_an_error(tmp_path: Path) -> None:
    path = one_box(tmp_path, model="acme/frobnicator-7b")
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "deployments.main.model" in out and "config.json" in out


def test_validate_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it."""
    bad = write(tmp_path, "hosts:\n  box:\n    gpus: [RTX 9999]\n", "bad.yaml")
    env = {**os.environ, **ENV, "COLUMNS": "200"}
    cmd = [sys.executable, "-c", "from fleetgate.cli import main; main()", "validate"]
    ok = subprocess.run([*cmd, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*cmd, str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert f"{bad}:3: hosts.box.gpus.0: unknown GPU 'RTX 9999'" in failed.stderr


# --- plan -------------------------------------------------------------------------------------


def test_plan_reference_fleet_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # plan needs no secrets: the API key variable may be unset
    monkeypatch.delenv("FLEETGATE_API_KEY", raising=False)
    result = invoke("plan", str(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    plans = json.loads(result.stdout)
    assert [p["name"] for p in plans] == ["wintermute", "armitage"]
    for p in plans:
        assert set(p) >= PLAN_FIELDS
        assert p["fits"] is True
        assert p["kv_cache_dtype"] == "fp8"
        assert p["kv_cache_tokens"] >= p["max_model_len"]
        assert p["max_model_len_fit"] >= p["max_model_len"]
        assert p["max_concurrency"] >= 1
        assert p["weights_gib"] > 0 and p["available_kv_gib"] > 0
        fb = p["fp16_fallback"]  # what kv_cache_dtype: auto would give
        assert fb["kv_cache_dtype"] == "auto"
        assert fb["kv_bytes_per_token"] == 2 * p["kv_bytes_per_token"]
        assert fb["kv_cache_tokens"] < p["kv_cache_tokens"]
    wintermute, armitage = plans
    assert (wintermute["max_model_len"], wintermute["max_num_seqs"]) == (16384, 2)
    assert (armitage["max_model_len"], armitage["max_num_seqs"]) == (8192, 1)
    # Llama 3.1 8B: 32 layers x 8 KV heads x 128 x K and V, one byte each in fp8
    assert wintermute["kv_bytes_per_token"] == 32 * 8 * 128 * 2
    # Qwen2.5 7B: 28 layers x 4 KV heads x 128 x 2
    assert armitage["kv_bytes_per_token"] == 28 * 4 * 128 * 2


def test_plan_reference_fleet_human_output() -> None:
    result = invoke("plan", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("[") >= 2 and "█" in out  # one memory bar per deployment
    assert "wintermute" in out and "armitage" in out
    assert "fp16 fallback" in out
    assert "does NOT fit" not in out


def test_plan_ad_hoc_with_catalog_gpu() -> None:
    result = invoke(
        "plan",
        "--model",
        "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "--gpu",
        "RTX 4090",
        "--max-model-len",
        "16384",
        "--max-num-seqs",
        "8",
        "--kv-cache-dtype",
        "fp8",
        "--json",
    )
    assert result.exit_code == 0, result.output
    [p] = json.loads(result.stdout)
    assert set(p) >= PLAN_FIELDS
    assert p["name"] == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert p["gpu"] == "RTX 4090"
    assert p["quantization"] == "awq"  # detected from the id
    assert (p["max_model_len"], p["max_num_seqs"], p["kv_cache_dtype"]) == (16384, 8, "fp8")
    assert p["fits"] is True


def test_plan_ad_hoc_defaults_are_vllms() -> None:
    result = invoke("plan", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--gpu-memory", "24", "--json")
    assert result.exit_code == 0, result.output
    [p] = json.loads(result.stdout)
    assert p["gpu_memory_gib"] == 24.0
    assert p["gpu_memory_utilization"] == 0.92  # the default of 0.21 and later
    assert p["max_model_len"] == 32768  # the model's own context
    assert p["quantization"] == "none"
    assert p["kv_cache_dtype"] == "auto"
    assert p["vllm_version"] == "0.32.0" and p["model_runner"] == "V2"


def test_plan_ad_hoc_names_the_version_and_runner_it_assumed() -> None:
    args = ["plan", "--model", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--gpu", "RTX 4090"]
    old = invoke(*args, "--vllm-version", "0.19.1", "--json")
    assert old.exit_code == 0, old.output
    [p] = json.loads(old.stdout)
    assert p["gpu_memory_utilization"] == 0.9 and p["cudagraph_term"] == "opt-in"
    human = invoke(*args, "--vllm-version", "0.24.0")
    assert "assumes vLLM 0.24.0, V1 model runner" in flat(human.stdout)
    future = invoke(*args, "--vllm-version", "0.41.0")
    assert "newer than the newest modelled; planned as 0.33.0" in flat(future.stdout)


def test_plan_bad_vllm_version_is_a_usage_error() -> None:
    result = invoke(
        "plan", "--model", "Qwen/Qwen2.5-7B", "--gpu", "RTX 4090", "--vllm-version", "latest"
    )
    assert result.exit_code == 2
    assert "X.Y.Z" in flat(result.output)


def test_plan_ad_hoc_that_does_not_fit_exits_1() -> None:
    result = invoke(
        "plan", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "RTX 3060 12GB"
    )
    assert result.exit_code == 1
    out = flat(result.stdout)
    assert "no memory left for the KV cache" in out
    assert "largest that fits 0" in out


def test_plan_verdict_survives_a_long_model_id() -> None:
    result = invoke(
        "plan", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "RTX 3060 12GB"
    )
    assert "does NOT fit" in flat(result.stdout)


def test_plan_ad_hoc_with_config_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 2048,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "num_hidden_layers": 12,
                "intermediate_size": 5632,
                "vocab_size": 32000,
                "max_position_embeddings": 4096,
            }
        ),
        encoding="utf-8",
    )
    result = invoke(
        "plan", "--model", "acme/frobnicator-1b", "--config", str(config), "--gpu", "T4", "--json"
    )
    assert result.exit_code == 0, result.output
    [p] = json.loads(result.stdout)
    assert p["kv_bytes_per_token"] == 12 * 4 * 128 * 2 * 2
    assert p["max_model_len"] == 4096


def test_plan_unknown_model_says_how_to_pass_config() -> None:
    result = invoke("plan", "--model", "acme/frobnicator-7b", "--gpu", "RTX 4090")
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "acme/frobnicator-7b" in out and "--config" in out


def test_plan_unknown_gpu_lists_known_ones() -> None:
    result = invoke("plan", "--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "RTX 9999")
    assert result.exit_code == 1
    out = flat(result.stderr)
    assert "unknown GPU 'RTX 9999'" in out and "RTX 4090" in out


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither FLEET nor --model
        [str(EXAMPLE), "--model", "Qwen/Qwen2.5-7B-Instruct"],  # both
        ["--model", "Qwen/Qwen2.5-7B-Instruct"],  # no GPU
        ["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "L4", "--gpu-memory", "22"],
    ],
)
def test_plan_usage_errors_exit_2(args: list[str]) -> None:
    result = invoke("plan", *args)
    assert result.exit_code == 2
    assert "error" in result.stderr


def test_plan_fleet_with_cross_check_errors_exits_1(tmp_path: Path) -> None:
    text = textwrap.dedent(ONE_BOX.format(gpu="L4", model="m", ctx=4096, kv="auto"))
    path = write(tmp_path, text + "  other: {host: box, model: m, port: 8000}\n")
    result = invoke("plan", str(path))
    assert result.exit_code == 1
    assert "box:8000 is already used" in flat(result.stderr)


def test_plan_fleet_takes_the_version_from_the_image_or_the_option() -> None:
    [from_image, _] = json.loads(invoke("plan", str(EXAMPLE), "--json", env=ENV).stdout)
    assert from_image["vllm_version"] == "0.32.0"  # examples/homelab pins v0.32.0
    [forced, _] = json.loads(
        invoke("plan", str(EXAMPLE), "--json", "--vllm-version", "0.19.1", env=ENV).stdout
    )
    assert forced["vllm_version"] == "0.19.1" and forced["model_runner"] == "V1"
