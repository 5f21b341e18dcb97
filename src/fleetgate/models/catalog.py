"""A bundled catalog of popular architectures, keyed by Hugging Face id.

Quantized repos (``...-AWQ``, ``...-GPTQ-Int4``, ``hugging-quants/...-AWQ-INT4``) and
instruct/chat variants resolve to their base architecture: quantization changes the weights'
size, not the shapes that size the KV cache.
"""

from __future__ import annotations

from typing import Any

from fleetgate.models.arch import ModelArch


def _llama(
    layers: int,
    hidden: int,
    heads: int,
    kv: int,
    inter: int,
    vocab: int,
    ctx: int,
    tie: bool = False,
    head_dim: int | None = None,
) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "max_position_embeddings": ctx,
        "tie_word_embeddings": tie,
        "head_dim": head_dim or hidden // heads,
    }


# Qwen configs are Llama-shaped; these keys are what sets them apart.
_QWEN2 = {"model_type": "qwen2", "use_sliding_window": False, "attention_bias": True}
_QWEN3 = {"model_type": "qwen3", "use_sliding_window": False, "attention_bias": False}

_LLAMA2_7B = _llama(32, 4096, 32, 32, 11008, 32000, 4096)
_QWEN25_7B = _llama(28, 3584, 28, 4, 18944, 152064, 32768, False) | _QWEN2
_QWEN25_14B = _llama(48, 5120, 40, 8, 13824, 152064, 32768, False) | _QWEN2
_QWEN25_32B = _llama(64, 5120, 40, 8, 27648, 152064, 32768, False) | _QWEN2

CATALOG: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-13b-hf": _llama(40, 5120, 40, 40, 13824, 32000, 4096),
    "meta-llama/Llama-3.1-8B": _llama(32, 4096, 32, 8, 14336, 128256, 131072),
    "meta-llama/Llama-3.1-70B": _llama(80, 8192, 64, 8, 28672, 128256, 131072),
    "meta-llama/Llama-3.2-1B": _llama(16, 2048, 32, 8, 8192, 128256, 131072, True, 64),
    "meta-llama/Llama-3.2-3B": _llama(28, 3072, 24, 8, 8192, 128256, 131072, True, 128),
    "meta-llama/Meta-Llama-3-8B": _llama(32, 4096, 32, 8, 14336, 128256, 8192),
    "codellama/CodeLlama-7b-hf": _llama(32, 4096, 32, 32, 11008, 32016, 16384),
    "lmsys/vicuna-7b-v1.5": _LLAMA2_7B,
    "Qwen/Qwen2.5-0.5B": _llama(24, 896, 14, 2, 4864, 151936, 32768, True) | _QWEN2,
    "Qwen/Qwen2.5-1.5B": _llama(28, 1536, 12, 2, 8960, 151936, 32768, True) | _QWEN2,
    "Qwen/Qwen2.5-3B": _llama(36, 2048, 16, 2, 11008, 151936, 32768, True) | _QWEN2,
    "Qwen/Qwen2.5-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-14B": _QWEN25_14B,
    "Qwen/Qwen2.5-32B": _QWEN25_32B,
    "Qwen/Qwen2.5-72B": _llama(80, 8192, 64, 8, 29568, 152064, 32768, False) | _QWEN2,
    "Qwen/Qwen2.5-Coder-7B": _QWEN25_7B,
    "Qwen/Qwen3-1.7B": _llama(28, 2048, 16, 8, 6144, 151936, 40960, True, 128) | _QWEN3,
    "Qwen/Qwen3-4B": _llama(36, 2560, 32, 8, 9728, 151936, 40960, True, 128) | _QWEN3,
    "Qwen/Qwen3-8B": _llama(36, 4096, 32, 8, 12288, 151936, 40960, False, 128) | _QWEN3,
    "Qwen/Qwen3-14B": _llama(40, 5120, 40, 8, 17408, 151936, 40960, False, 128) | _QWEN3,
    "Qwen/Qwen3-32B": _llama(64, 5120, 64, 8, 25600, 151936, 40960, False, 128) | _QWEN3,
    "mistralai/Mistral-7B-v0.3": {
        **_llama(32, 4096, 32, 8, 14336, 32768, 32768),
        "model_type": "mistral",
        "sliding_window": None,
    },
    "mistralai/Mixtral-8x7B-v0.1": {
        **_llama(32, 4096, 32, 8, 14336, 32000, 32768),
        "model_type": "mixtral",
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": None,
    },
    "google/gemma-2-9b": {
        **_llama(42, 3584, 16, 8, 14336, 256000, 8192, True, 256),
        "model_type": "gemma2",
        "sliding_window": 4096,
    },
    "google/gemma-2-27b": {
        **_llama(46, 4608, 32, 16, 36864, 256000, 8192, True, 128),
        "model_type": "gemma2",
        "sliding_window": 4096,
    },
    # Phi-3 configs carry a sliding window and no layer_types: vLLM applies it to every layer
    "microsoft/Phi-3-mini-4k-instruct": {
        **_llama(32, 3072, 32, 32, 8192, 32064, 4096),
        "model_type": "phi3",
        "sliding_window": 2047,
    },
    "microsoft/Phi-3-mini-128k-instruct": {
        **_llama(32, 3072, 32, 32, 8192, 32064, 131072),
        "model_type": "phi3",
        "sliding_window": 262144,
    },
    "ibm-granite/granite-3.1-8b-instruct": _llama(40, 4096, 32, 8, 12800, 49155, 131072, True),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": {**_QWEN25_14B, "max_position_embeddings": 131072},
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": {**_QWEN25_32B, "max_position_embeddings": 131072},
}

# Name parts that mark a variant (quantized, instruct, chat) of the same architecture.
_VARIANT_PARTS = frozenset(
    "awq gptq int4 int8 w4a16 w8a8 fp8 bnb 4bit 8bit gguf marlin dynamic hf instruct chat it "
    "base 2407 2411 unsloth nf4".split()
)


def _key(model_id: str) -> str:
    name = model_id.rsplit("/", 1)[-1].lower().replace("_", "-")
    name = name.removeprefix("meta-").replace("llama-3-", "llama-3.0-")
    parts = [p for p in name.split("-") if p not in _VARIANT_PARTS]
    return "-".join(p for p in parts if not p.startswith("quantized"))


_INDEX: dict[str, str] = {}
for _id in CATALOG:
    _INDEX.setdefault(_key(_id), _id)


def catalog_config(model_id: str) -> dict[str, Any] | None:
    """The bundled config for a model id or any quantized/instruct variant of it."""
    if model_id in CATALOG:
        return CATALOG[model_id]
    found = _INDEX.get(_key(model_id))
    return CATALOG[found] if found else None


def catalog_arch(model_id: str) -> ModelArch | None:
    """The architecture of a catalogued model, so a plan needs no download for popular ones."""
    cfg = catalog_config(model_id)
    return ModelArch.from_config(cfg, name=model_id) if cfg else None


def detect_quantization(model_id: str) -> str:
    """Guess a checkpoint's quantization from its id, as vLLM would find it in its config."""
    lowered = model_id.lower()
    for marker, method in (
        ("awq", "awq"),
        ("gptq", "gptq"),
        ("bnb", "bitsandbytes"),
        ("4bit", "bitsandbytes"),
        ("nf4", "bitsandbytes"),
        ("fp8", "fp8"),
        ("w8a8", "int8"),
        ("w8a16", "int8"),
        ("int8", "int8"),
        # compressed-tensors 4-bit weight-only checkpoints: GPTQ-style packing and size
        ("w4a16", "gptq"),
        ("int4", "gptq"),
    ):
        if marker in lowered:
            return method
    return "none"
