"""Model architecture facts, read from a Hugging Face ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The class a config without ``architectures`` (the bundled catalog's) loads as.
_ARCH_BY_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "granite": "GraniteForCausalLM",
}


@dataclass(frozen=True)
class ModelArch:
    """What the memory model needs to know about a transformer."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    # layers with sliding-window attention; the rest attend to the full context
    sliding_window_layers: int = 0
    num_experts: int = 0
    moe_intermediate_size: int = 0
    qkv_bias: bool = False
    torch_dtype: str = "bfloat16"
    # the class vLLM loads (``architectures[0]``): it picks the model runner
    architecture: str = "LlamaForCausalLM"

    @property
    def full_attention_layers(self) -> int:
        return self.num_layers - self.sliding_window_layers

    def param_count(self) -> int:
        """Parameters, computed from the shapes (matches the safetensors total within ~0.5%)."""
        return (
            self.embedding_params() * (1 if self.tie_word_embeddings else 2)
            + (self.num_layers * self.layer_params())
            + self.hidden_size
        )

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention, MLP (or experts and router), norms."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_kv_heads * d
        attn = h * (q + 2 * kv) + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.num_experts:
            mlp = self.num_experts * 3 * h * self.moe_intermediate_size + h * self.num_experts
        else:
            mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h

    def linear_params(self) -> int:
        """Parameters in the decoder's linear layers: what AWQ/GPTQ/int8/fp8 quantize."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_kv_heads * d
        attn = h * (q + 2 * kv) + q * h
        if self.num_experts:
            mlp = self.num_experts * 3 * h * self.moe_intermediate_size
        else:
            mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp)

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "model") -> ModelArch:
        """Read a ``config.json`` mapping (text-model part of multimodal configs too)."""
        cfg = config.get("text_config") or config
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            layers = int(cfg["num_hidden_layers"])
        except KeyError as exc:
            raise ValueError(f"config.json of {name} lacks {exc.args[0]!r}") from None
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        window = cfg.get("sliding_window")
        use_window = cfg.get("use_sliding_window", True) and window
        window_layers = 0
        if use_window:
            pattern = cfg.get("layer_types")
            if isinstance(pattern, list):
                window_layers = sum(1 for t in pattern if "sliding" in str(t))
            elif cfg.get("model_type", "").startswith("gemma2"):
                # Gemma 2 alternates local and global layers, starting with a local one
                window_layers = (layers + 1) // 2
            elif cfg.get("model_type") in ("qwen2", "qwen3"):
                window_layers = max(0, layers - int(cfg.get("max_window_layers", layers)))
            else:
                window_layers = layers
        experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
        archs = config.get("architectures") or cfg.get("architectures")
        model_type = str(cfg.get("model_type") or config.get("model_type") or "llama")
        architecture = (
            str(archs[0]) if isinstance(archs, list) and archs else _ARCH_BY_TYPE.get(model_type)
        ) or "LlamaForCausalLM"
        return cls(
            name=name,
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            sliding_window=int(window) if window and use_window and window_layers else None,
            sliding_window_layers=window_layers,
            num_experts=experts,
            moe_intermediate_size=int(
                cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0
            )
            if experts
            else 0,
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
            architecture=architecture,
        )
