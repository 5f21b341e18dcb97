"""Model architecture facts: the bundled catalog, the config.json reader, safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fleetgate.models import (
    CATALOG,
    ModelArch,
    UnknownModelError,
    catalog_arch,
    catalog_config,
    detect_quantization,
    load_model_info,
    safetensors_bytes,
)

# Parameter totals as published for each model (Hugging Face safetensors metadata / model
# cards). Qwen3-1.7B's card gives 1.7B (1.4B without embeddings): its checkpoint stores a
# duplicate lm_head, so the safetensors total (2.03B) is not what sits in GPU memory.
PUBLISHED_PARAMS = {
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Llama-2-13b-hf": 13.02e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "meta-llama/Llama-3.1-70B": 70.55e9,
    "meta-llama/Llama-3.2-1B": 1.236e9,
    "meta-llama/Llama-3.2-3B": 3.21e9,
    "meta-llama/Meta-Llama-3-8B": 8.03e9,
    "codellama/CodeLlama-7b-hf": 6.74e9,
    "lmsys/vicuna-7b-v1.5": 6.74e9,
    "Qwen/Qwen2.5-0.5B": 0.494e9,
    "Qwen/Qwen2.5-1.5B": 1.54e9,
    "Qwen/Qwen2.5-3B": 3.09e9,
    "Qwen/Qwen2.5-7B": 7.62e9,
    "Qwen/Qwen2.5-14B": 14.77e9,
    "Qwen/Qwen2.5-32B": 32.76e9,
    "Qwen/Qwen2.5-72B": 72.71e9,
    "Qwen/Qwen3-1.7B": 1.72e9,
    "Qwen/Qwen3-4B": 4.02e9,
    "Qwen/Qwen3-8B": 8.19e9,
    "Qwen/Qwen3-14B": 14.77e9,
    "Qwen/Qwen3-32B": 32.76e9,
    "mistralai/Mistral-7B-v0.3": 7.25e9,
    "mistralai/Mixtral-8x7B-v0.1": 46.7e9,
    "google/gemma-2-9b": 9.24e9,
    "google/gemma-2-27b": 27.23e9,
    "microsoft/Phi-3-mini-4k-instruct": 3.82e9,
    "ibm-granite/granite-3.1-8b-instruct": 8.17e9,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7.62e9,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": 14.77e9,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": 32.76e9,
}


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_total(model_id: str) -> None:
    arch = catalog_arch(model_id)
    assert arch is not None
    assert arch.param_count() == pytest.approx(PUBLISHED_PARAMS[model_id], rel=0.01)


def test_exact_parameter_counts_of_well_known_checkpoints() -> None:
    # the safetensors totals of these repos, to the parameter
    assert catalog_arch("meta-llama/Llama-3.1-8B").param_count() == 8_030_261_248
    assert catalog_arch("Qwen/Qwen2.5-7B").param_count() == 7_615_616_512
    assert catalog_arch("meta-llama/Llama-2-7b-hf").param_count() == 6_738_415_616
    assert catalog_arch("mistralai/Mixtral-8x7B-v0.1").param_count() == 46_702_792_704


# (layers, kv heads, head_dim) decide the KV cache; checked against each repo's config.json
KV_SHAPES = {
    "meta-llama/Llama-2-7b-hf": (32, 32, 128),
    "meta-llama/Llama-3.1-8B": (32, 8, 128),
    "meta-llama/Llama-3.1-70B": (80, 8, 128),
    "meta-llama/Llama-3.2-1B": (16, 8, 64),
    "meta-llama/Llama-3.2-3B": (28, 8, 128),
    "codellama/CodeLlama-7b-hf": (32, 32, 128),
    "lmsys/vicuna-7b-v1.5": (32, 32, 128),
    "Qwen/Qwen2.5-0.5B": (24, 2, 64),
    "Qwen/Qwen2.5-7B": (28, 4, 128),
    "Qwen/Qwen2.5-72B": (80, 8, 128),
    "Qwen/Qwen3-1.7B": (28, 8, 128),
    "Qwen/Qwen3-32B": (64, 8, 128),
    "mistralai/Mistral-7B-v0.3": (32, 8, 128),
    "mistralai/Mixtral-8x7B-v0.1": (32, 8, 128),
    "google/gemma-2-9b": (42, 8, 256),
    "google/gemma-2-27b": (46, 16, 128),
    "microsoft/Phi-3-mini-4k-instruct": (32, 32, 96),
    "ibm-granite/granite-3.1-8b-instruct": (40, 8, 128),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (48, 8, 128),
}


@pytest.mark.parametrize("model_id", sorted(KV_SHAPES))
def test_kv_shapes(model_id: str) -> None:
    arch = catalog_arch(model_id)
    assert (arch.num_layers, arch.num_kv_heads, arch.head_dim) == KV_SHAPES[model_id]


def test_catalog_context_lengths() -> None:
    ctx = {k: catalog_arch(k).max_position_embeddings for k in CATALOG}
    assert ctx["meta-llama/Llama-2-7b-hf"] == 4096
    assert ctx["meta-llama/Llama-3.1-8B"] == 131072
    assert ctx["codellama/CodeLlama-7b-hf"] == 16384
    assert ctx["Qwen/Qwen3-8B"] == 40960
    assert ctx["google/gemma-2-9b"] == 8192
    assert ctx["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"] == 131072


def test_sliding_windows_in_the_catalog() -> None:
    gemma = catalog_arch("google/gemma-2-9b")
    assert (gemma.sliding_window, gemma.sliding_window_layers) == (4096, 21)
    assert gemma.full_attention_layers == 21
    # Qwen2.5 ships use_sliding_window: false
    assert catalog_arch("Qwen/Qwen2.5-7B").sliding_window is None
    assert catalog_arch("mistralai/Mistral-7B-v0.3").sliding_window is None
    phi = catalog_arch("microsoft/Phi-3-mini-4k-instruct")
    assert (phi.sliding_window, phi.sliding_window_layers) == (2047, 32)


def test_mixtral_is_a_mixture_of_experts() -> None:
    arch = catalog_arch("mistralai/Mixtral-8x7B-v0.1")
    assert (arch.num_experts, arch.moe_intermediate_size) == (8, 14336)


def test_tied_embeddings_are_counted_once() -> None:
    arch = catalog_arch("meta-llama/Llama-3.2-1B")
    assert arch.tie_word_embeddings
    untied = ModelArch(**{**arch.__dict__, "tie_word_embeddings": False})
    assert untied.param_count() - arch.param_count() == 128256 * 2048


@pytest.mark.parametrize(
    ("repo", "base"),
    [
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "meta-llama/Llama-3.1-8B"),
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "meta-llama/Llama-3.1-70B"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "meta-llama/Llama-3.1-8B"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16", "meta-llama/Llama-3.1-8B"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B"),
        ("unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "meta-llama/Llama-3.2-1B"),
        ("meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B"),
        ("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf"),
        ("TheBloke/Llama-2-7B-Chat-AWQ", "meta-llama/Llama-2-7b-hf"),
        ("TheBloke/CodeLlama-7B-Instruct-AWQ", "codellama/CodeLlama-7b-hf"),
        ("TheBloke/vicuna-7B-v1.5-AWQ", "lmsys/vicuna-7b-v1.5"),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "Qwen/Qwen2.5-7B"),
        ("Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4", "Qwen/Qwen2.5-14B"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B"),
        ("Qwen/Qwen2.5-72B-Instruct-AWQ", "Qwen/Qwen2.5-72B"),
        ("Qwen/Qwen3-8B-AWQ", "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-8B"),
        ("unsloth/Qwen3-14B-unsloth-bnb-4bit", "Qwen/Qwen3-14B"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
        ("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ", "mistralai/Mixtral-8x7B-v0.1"),
        ("google/gemma-2-9b-it", "google/gemma-2-9b"),
        ("google/gemma-2-27b-it", "google/gemma-2-27b"),
        ("ibm-granite/granite-3.1-8b-base", "ibm-granite/granite-3.1-8b-instruct"),
        ("casperhansen/deepseek-r1-distill-qwen-7b-awq", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    ],
)
def test_variants_resolve_to_their_base(repo: str, base: str) -> None:
    assert catalog_config(repo) == CATALOG[base]


@pytest.mark.parametrize(
    "repo",
    [
        "Qwen/Qwen2.5-VL-7B-Instruct",  # a vision model, other shapes
        "Qwen/Qwen2.5-Math-7B",
        "Qwen/Qwen2.5-7B-Instruct-1M",  # other context
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "acme/frobnicator-7b",
    ],
)
def test_look_alikes_do_not_resolve(repo: str) -> None:
    assert catalog_config(repo) is None


@pytest.mark.parametrize(
    ("repo", "method"),
    [
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "awq"),
        ("Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4", "gptq"),
        ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8", "gptq"),
        ("unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "bitsandbytes"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "fp8"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "int8"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16", "gptq"),
        ("meta-llama/Llama-3.1-8B-Instruct", "none"),
    ],
)
def test_quantization_detected_from_the_id(repo: str, method: str) -> None:
    assert detect_quantization(repo) == method


def test_unknown_model_says_how_to_pass_config() -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model_info("acme/frobnicator-7b")
    message = str(info.value)
    assert "acme/frobnicator-7b" in message
    assert "config.json" in message and "--config" in message and "model_path" in message


def test_catalog_model_info() -> None:
    info = load_model_info("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert info.quantization == "awq"
    assert info.arch.num_layers == 28
    assert info.weight_bytes is None


# --- config.json ------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


GEMMA2_CONFIG = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "head_dim": 256,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "num_attention_heads": 16,
    "num_hidden_layers": 42,
    "num_key_value_heads": 8,
    "sliding_window": 4096,
    "vocab_size": 256000,
    "torch_dtype": "float32",
}


def test_config_json_gemma2_alternates_sliding_layers(tmp_path: Path) -> None:
    cfg = write_json(tmp_path / "config.json", GEMMA2_CONFIG)
    info = load_model_info("my/gemma", config_path=cfg)
    arch = info.arch
    assert arch.name == "my/gemma"
    assert (arch.num_layers, arch.num_kv_heads, arch.head_dim) == (42, 8, 256)
    assert (arch.sliding_window, arch.sliding_window_layers) == (4096, 21)
    assert arch.torch_dtype == "float32"
    # not given: transformers' default for Gemma configs is tied (one embedding matrix)
    assert arch.tie_word_embeddings is True
    assert info.quantization == "none"


def test_config_json_odd_layer_count_gemma2() -> None:
    # layer 0 is local, so 5 layers hold 3 local and 2 global
    arch = ModelArch.from_config({**GEMMA2_CONFIG, "num_hidden_layers": 5})
    assert (arch.sliding_window_layers, arch.full_attention_layers) == (3, 2)


def test_config_json_layer_types_list_wins() -> None:
    cfg = {
        **GEMMA2_CONFIG,
        "model_type": "gemma3_text",
        "num_hidden_layers": 6,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "sliding_window": 1024,
    }
    arch = ModelArch.from_config(cfg)
    assert (arch.sliding_window, arch.sliding_window_layers) == (1024, 5)


QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 152064,
    "torch_dtype": "bfloat16",
}


def test_config_json_qwen2_sliding_window_off(tmp_path: Path) -> None:
    arch = load_model_info("x", config_path=write_json(tmp_path / "c.json", QWEN2_CONFIG)).arch
    assert arch.sliding_window is None
    assert arch.sliding_window_layers == 0
    assert arch.qkv_bias  # qwen2 has q/k/v biases
    assert arch.head_dim == 128  # hidden / heads when head_dim is absent
    assert arch.param_count() == 7_615_616_512


def test_config_json_qwen2_sliding_window_on_above_max_window_layers() -> None:
    arch = ModelArch.from_config(
        {
            **QWEN2_CONFIG,
            "use_sliding_window": True,
            "max_window_layers": 20,
            "sliding_window": 4096,
        }
    )
    assert (arch.sliding_window, arch.sliding_window_layers) == (4096, 8)


def test_config_json_awq_quantization_config(tmp_path: Path) -> None:
    cfg = {
        **QWEN2_CONFIG,
        "quantization_config": {
            "bits": 4,
            "group_size": 128,
            "modules_to_not_convert": None,
            "quant_method": "awq",
            "version": "gemm",
            "zero_point": True,
        },
    }
    info = load_model_info("whatever-name", config_path=write_json(tmp_path / "c.json", cfg))
    assert (info.quantization, info.bits, info.group_size) == ("awq", 4, 128)


def test_config_json_gptq_and_bitsandbytes(tmp_path: Path) -> None:
    gptq = {**QWEN2_CONFIG, "quantization_config": {"quant_method": "gptq", "bits": 8}}
    info = load_model_info("m", config_path=write_json(tmp_path / "g.json", gptq))
    assert (info.quantization, info.bits) == ("gptq", 8)
    bnb = {**QWEN2_CONFIG, "quantization_config": {"load_in_4bit": True, "quant_method": "x"}}
    info = load_model_info("m", config_path=write_json(tmp_path / "b.json", bnb))
    assert (info.quantization, info.bits) == ("bitsandbytes", 4)


def test_config_json_without_quantization_falls_back_to_the_id(tmp_path: Path) -> None:
    cfg = write_json(tmp_path / "c.json", QWEN2_CONFIG)
    assert load_model_info("someone/model-AWQ", config_path=cfg).quantization == "awq"


def test_config_json_multimodal_text_config() -> None:
    arch = ModelArch.from_config({"model_type": "llava", "text_config": QWEN2_CONFIG})
    assert arch.num_layers == 28


def test_config_json_missing_field_names_it(tmp_path: Path) -> None:
    cfg = {k: v for k, v in QWEN2_CONFIG.items() if k != "num_hidden_layers"}
    with pytest.raises(UnknownModelError, match="num_hidden_layers"):
        load_model_info("m", config_path=write_json(tmp_path / "c.json", cfg))


def test_config_json_unreadable_or_invalid(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="cannot read"):
        load_model_info("m", config_path=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UnknownModelError, match="not valid JSON"):
        load_model_info("m", config_path=bad)


def test_config_json_overrides_the_catalog(tmp_path: Path) -> None:
    cfg = write_json(tmp_path / "c.json", {**QWEN2_CONFIG, "num_hidden_layers": 2})
    assert load_model_info("Qwen/Qwen2.5-7B", config_path=cfg).arch.num_layers == 2


# --- safetensors headers ----------------------------------------------------------------------

_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "U8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """Write a real safetensors file (zeros as data); return its tensor-data bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = _DTYPE_BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


def test_safetensors_header_sum(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    written = write_safetensors(
        path,
        {
            "embed.weight": ("BF16", [100, 64]),
            "layer.0.qweight": ("I32", [64, 24]),
            "layer.0.scales": ("F16", [1, 192]),
            "norm.weight": ("F32", [64]),
        },
    )
    assert written == 100 * 64 * 2 + 64 * 24 * 4 + 192 * 2 + 64 * 4
    assert safetensors_bytes(path) == written
    # the header alone decides: the data is never read
    assert path.stat().st_size > written


def test_model_directory_sums_every_shard(tmp_path: Path) -> None:
    a = write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F16", [1000])})
    b = write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [10, 7])})
    write_json(tmp_path / "config.json", QWEN2_CONFIG)
    info = load_model_info("local/model", model_dir=tmp_path)
    assert info.weight_bytes == a + b == 2000 + 140
    assert info.arch.num_layers == 28


def test_model_directory_without_safetensors(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", QWEN2_CONFIG)
    assert load_model_info("local/model", model_dir=tmp_path).weight_bytes is None


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_bytes(path)
