"""The per-version facts of vLLM's start-up (read from its wheels 0.10.2 ... 0.33.0)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleetgate.models import ModelInfo, catalog_arch
from fleetgate.plan import (
    NEWEST_MODELLED,
    PlanInput,
    check_version,
    memory_rules_for,
    parse_vllm_version,
    plan_deployment,
)
from fleetgate.plan.memory import cuda_graph_sizes
from fleetgate.plan.rules import default_batch, runner_for


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("vllm/vllm-openai:v0.32.0", (0, 32, 0)),
        ("vllm/vllm-openai:v0.19.1", (0, 19, 1)),
        ("0.24", (0, 24, 0)),
        ("registry.local:5000/vllm/vllm-openai:v0.21.0", (0, 21, 0)),
        ("vllm/vllm-openai:latest", (0, 32, 0)),
        (None, (0, 32, 0)),
    ],
)
def test_versions_from_image_tags(text: str | None, version: tuple[int, ...]) -> None:
    assert parse_vllm_version(text) == version


def test_a_version_given_by_a_person_is_checked() -> None:
    assert check_version("0.24.1") == (0, 24, 1)
    assert check_version("v0.10") == (0, 10, 0)
    with pytest.raises(ValueError, match=r"X\.Y\.Z"):
        check_version("latest")


@pytest.mark.parametrize(
    ("version", "arch", "runner"),
    [
        ((0, 7, 3), "LlamaForCausalLM", "V0"),
        ((0, 21, 0), "Qwen3ForCausalLM", "V1"),
        ((0, 22, 0), "Qwen3ForCausalLM", "V2"),
        ((0, 23, 0), "LlamaForCausalLM", "V1"),
        ((0, 24, 0), "LlamaForCausalLM", "V2"),
        ((0, 24, 0), "Qwen2ForCausalLM", "V1"),
        ((0, 26, 0), "Qwen2ForCausalLM", "V2"),
        ((0, 26, 0), "MixtralForCausalLM", "V1"),
        ((0, 29, 0), "MixtralForCausalLM", "V2"),
    ],
)
def test_model_runner_by_version_and_architecture(
    version: tuple[int, ...], arch: str, runner: str
) -> None:
    moe = arch.startswith("Mixtral")
    assert runner_for(version, arch, hybrid=False, moe=moe) == runner


def test_hybrid_models_stay_on_v1_until_0_29() -> None:
    assert runner_for((0, 27, 0), "Qwen3NextForCausalLM", hybrid=True, moe=True) == "V1"
    assert runner_for((0, 29, 0), "Qwen3NextForCausalLM", hybrid=True, moe=True) == "V2"


def test_cuda_graph_term_by_version() -> None:
    assert memory_rules_for((0, 17, 1)).graphs == "none"
    assert memory_rules_for((0, 19, 0)).graphs == "opt-in"
    assert memory_rules_for((0, 19, 0), estimate_cudagraphs=True).graphs == "estimated"
    assert memory_rules_for((0, 21, 0)).graphs == "estimated"
    assert memory_rules_for((0, 21, 0), estimate_cudagraphs=False).graphs == "opt-in"


def test_default_utilization_is_0_92_from_0_21() -> None:
    assert memory_rules_for((0, 20, 2)).default_utilization == 0.9
    assert memory_rules_for((0, 21, 0)).default_utilization == 0.92


def test_batch_defaults_by_gpu_size() -> None:
    e = memory_rules_for((0, 30, 0))
    assert default_batch(e, 23.55, "RTX 4090") == (2048, 256)
    assert default_batch(e, 79.15, "A100-80GB") == (2048, 256)
    assert default_batch(e, 79.19, "H100") == (8192, 1024)
    assert default_batch(e, 178.4, "B200") == (16384, 1024)
    assert default_batch(memory_rules_for((0, 29, 0)), 178.4, "B200") == (8192, 1024)


def test_capture_sizes() -> None:
    assert len(cuda_graph_sizes(256, 2048)) == 51
    assert cuda_graph_sizes(2, 2048) == [1, 2, 4]
    # max_num_batched_tokens is captured when it is the cap and off the grid
    assert cuda_graph_sizes(256, 300)[-1] == 300
    # from 0.31 max_num_seqs is captured when off the grid
    assert 13 not in cuda_graph_sizes(13, 2048, memory_rules_for((0, 30, 0)))
    assert 13 in cuda_graph_sizes(13, 2048, memory_rules_for((0, 31, 0)))
    # data-centre Blackwell raises the cap to 1024 from 0.28
    assert cuda_graph_sizes(1024, 8192, memory_rules_for((0, 28, 0)), sm100=True)[-1] == 1024
    assert cuda_graph_sizes(1024, 8192, memory_rules_for((0, 27, 0)), sm100=True)[-1] == 512


def _gemma(version: tuple[int, ...]) -> int:
    arch = catalog_arch("google/gemma-2-9b")
    assert arch
    spec = PlanInput(
        "g",
        ModelInfo(arch, "none"),
        79.19,
        "H100",
        max_model_len=8192,
        max_num_batched_tokens=1024,
        vllm_version=version,
        runner="V1",
    )
    return plan_deployment(spec).kv_cache_tokens


def test_sliding_window_holds_two_chunks_in_flight_from_0_26() -> None:
    # Gemma 2 alternates 4096-token windows with global layers: each request holds more of
    # its window layers' blocks from 0.26 (async scheduling), so fewer tokens fit.
    assert _gemma((0, 26, 0)) < _gemma((0, 25, 0))


def test_a_newer_version_is_planned_as_the_newest_and_says_so() -> None:
    arch = catalog_arch("Qwen/Qwen2.5-7B")
    assert arch
    spec = PlanInput("q", ModelInfo(arch, "none"), 23.55, "RTX 4090", max_model_len=8192)
    newest = plan_deployment(replace(spec, vllm_version=NEWEST_MODELLED))
    future = plan_deployment(replace(spec, vllm_version=(0, 40, 1)))
    assert future.vllm_version == "0.40.1"
    assert "planned as 0.33.0" in future.engine
    assert future.kv_cache_tokens == newest.kv_cache_tokens
    assert newest.engine == "vLLM 0.33.0, V2 model runner"
