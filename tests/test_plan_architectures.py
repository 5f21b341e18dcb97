"""Architectures that change the math, each from a real config.json (tests/plan_data/SOURCES.md
names each): MoE with every expert resident, MXFP4, NVFP4 and block-scaled FP8, MLA, hybrid
recurrent layers, interleaved sliding windows, multimodal ``text_config``. What the planner
does not model is said in the plan's notes, never planned silently as a dense model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.models import ModelInfo, load_model_info
from fleetgate.plan import PlanInput, kv_bytes_per_token, plan_deployment, weight_bytes
from fleetgate.plan.memory import kv_bytes_for_request

CONFIGS = Path(__file__).parent / "plan_data" / "configs"
GIB = 1024**3


def info(name: str) -> ModelInfo:
    return load_model_info(name, config_path=CONFIGS / f"{name}.json")


def plan(name: str, **kw):
    spec = PlanInput(name, info(name), kw.pop("gpu_gib", 79.19), kw.pop("gpu", "H100"), **kw)
    return plan_deployment(spec)


@pytest.mark.parametrize(
    ("name", "published_billions"),
    [
        ("Mixtral-8x7B-v0.1", 46.7),  # every expert resident, not the 12.9B active
        ("Qwen3-30B-A3B", 30.5),
        ("gpt-oss-20b", 20.9),
        ("DeepSeek-V2-Lite", 15.7),  # MLA attention, 2 shared experts, 1 dense layer
        ("Qwen3-Next-80B-A3B-Instruct", 80.0),  # 36 Gated DeltaNet + 12 attention layers
        ("gemma-3-12b-it", 12.2),  # with its SigLIP vision encoder
    ],
)
def test_parameters_match_the_published_total(name: str, published_billions: float) -> None:
    assert info(name).arch.param_count() / 1e9 == pytest.approx(published_billions, rel=0.015)


def test_moe_weights_are_all_experts() -> None:
    mixtral = info("Mixtral-8x7B-v0.1")
    assert mixtral.arch.num_experts == 8
    assert weight_bytes(mixtral.arch, "none") / GIB == pytest.approx(86.99, rel=0.01)
    p = plan("Mixtral-8x7B-v0.1", max_model_len=8192)
    assert not p.fits and "no memory left" in p.reasons[0]  # 87 GiB of weights on an 80 GiB GPU
    # MoE models stay on the V1 runner until 0.29 (not "every dense model" of 0.26)
    assert plan("Qwen3-30B-A3B", vllm_version=(0, 27, 0)).model_runner == "V1"


def test_mxfp4_gpt_oss_20b_weights() -> None:
    # vllm#22331: "Model loading took 12.8848 GiB" (0.10.1, RTX 3090); VLLM.md: 13.72 GiB
    # where the MXFP4 kernels pad the experts. Experts at 4.25 bits, attention/embeddings 16.
    gpt = info("gpt-oss-20b")
    assert gpt.quantization == "mxfp4"
    gib = weight_bytes(gpt.arch, "mxfp4") / GIB
    assert gib == pytest.approx(12.88, rel=0.01) and gib < 13.72
    # alternating 128-token sliding and full layers
    assert gpt.arch.sliding_window == 128 and gpt.arch.sliding_window_layers == 12


def test_block_fp8_and_nvfp4_from_quantization_config() -> None:
    fp8, nvfp4 = info("Qwen3-8B-FP8"), info("Llama-3.1-8B-Instruct-NVFP4")
    assert (fp8.quantization, nvfp4.quantization) == ("fp8", "nvfp4")
    # 8-bit linear layers, 16-bit embeddings; NVFP4: 4.5 bits (an fp8 scale per 16)
    assert weight_bytes(fp8.arch, "fp8") / GIB == pytest.approx(8.79, rel=0.01)
    assert weight_bytes(nvfp4.arch, "nvfp4") / GIB == pytest.approx(5.61, rel=0.01)
    assert weight_bytes(nvfp4.arch, "nvfp4") < weight_bytes(nvfp4.arch, "awq") * 1.1


def test_mla_stores_one_latent_per_layer() -> None:
    ds = info("DeepSeek-V2-Lite").arch
    assert ds.mla and ds.kv_lora_rank + ds.qk_rope_head_dim == 576
    assert kv_bytes_per_token(ds, "auto") == 27 * 576 * 2
    # the latent is not split across tensor-parallel GPUs
    assert kv_bytes_per_token(ds, "auto", tensor_parallel_size=2) == 27 * 576 * 2


def test_hybrid_keeps_kv_on_attention_layers_and_a_state_per_sequence() -> None:
    qn = info("Qwen3-Next-80B-A3B-Instruct").arch
    assert (qn.linear_layers, qn.kv_layers) == (36, 12)
    assert kv_bytes_per_token(qn, "auto") == 2 * 12 * 2 * 256 * 2
    # Gated DeltaNet: 32 value heads x 128 x 128 float32 + the conv window, per layer
    per_layer = 32 * 128 * 128 * 4 + (2 * 16 * 128 + 32 * 128) * 3 * 2
    assert qn.state_bytes_per_seq == 36 * per_layer
    one = kv_bytes_for_request(qn, 16, "auto")
    assert one > qn.state_bytes_per_seq  # even a tiny request holds the whole state
    p = plan("Qwen3-Next-80B-A3B-Instruct", gpu_gib=139.8, gpu="H200", max_model_len=32768)
    assert any("hybrid model" in n for n in p.notes)
    assert p.model_runner == "V2"  # 0.32: every supported model
    assert (
        plan(
            "Qwen3-Next-80B-A3B-Instruct", gpu_gib=139.8, gpu="H200", vllm_version=(0, 28, 0)
        ).model_runner
        == "V1"
    )


def test_gemma3_interleaves_five_local_layers_per_global_and_reads_text_config() -> None:
    g = info("gemma-3-12b-it").arch
    assert (g.num_layers, g.sliding_window, g.sliding_window_layers) == (48, 1024, 40)
    assert g.tie_word_embeddings and g.vision_params > 0
    p = plan("gemma-3-12b-it", gpu_gib=23.55, gpu="RTX 4090", max_model_len=32768)
    assert any("multimodal" in n and "not modelled" in n for n in p.notes)
    # sliding layers hold only their window: far more than full-attention math would allow
    full = 2 * 48 * 8 * 256 * 2
    assert p.kv_cache_tokens > p.available_kv_gib * GIB / full * 1.5


def test_an_unknown_quantization_is_said_not_silently_dense(tmp_path: Path) -> None:
    cfg = (CONFIGS / "Qwen2.5-1.5B-Instruct.json").read_text()
    path = tmp_path / "config.json"
    path.write_text(cfg.rstrip()[:-1] + ', "quantization_config": {"quant_method": "auto_round"}}')
    i = load_model_info("acme/q", config_path=path)
    assert i.quantization == "auto_round"
    p = plan_deployment(PlanInput("q", i, 23.55, "RTX 4090", max_model_len=8192))
    assert any("'auto_round' is not modelled" in n for n in p.notes)


def test_hybrid_kv_layout_against_a_real_log() -> None:
    # club-3090#612 (vLLM 0.24.0, RTX 5090): Qwen3.6-35B-A3B, fp8 KV, prefix caching, 131072
    # context: "Available KV cache memory: 5.98 GiB", "GPU KV cache size: 567,978 tokens",
    # "4.33x". Given vLLM's own available memory, the layout (10 attention layers' KV, two
    # Gated DeltaNet state pages per sequence with prefix caching) gives the tokens.
    spec = PlanInput(
        "q",
        info("Qwen3.6-35B-A3B"),
        31.36,
        "RTX 5090",
        max_model_len=131072,
        max_num_seqs=1,
        max_num_batched_tokens=8192,
        kv_cache_dtype="fp8",
        vllm_version=(0, 24, 0),
        kv_cache_memory_bytes=int(5.98 * GIB),
        enable_prefix_caching=True,
    )
    p = plan_deployment(spec)
    assert p.kv_cache_tokens == pytest.approx(567_978, rel=0.02)
    assert p.max_concurrency == pytest.approx(4.33, abs=0.1)
    # one state page without prefix caching: more room for tokens
    from dataclasses import replace

    assert plan_deployment(replace(spec, enable_prefix_caching=False)).kv_cache_tokens > (
        p.kv_cache_tokens
    )
