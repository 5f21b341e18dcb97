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
    # MoE: shared experts' intermediate size per MoE layer; leading dense (non-MoE) layers
    shared_expert_intermediate_size: int = 0
    dense_layers: int = 0
    # MLA (DeepSeek V2/V3): one latent of kv_lora_rank + rope dims per layer per token
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    # hybrid models: layers with a recurrent state (Mamba, Gated DeltaNet) instead of a KV
    # cache, that state's bytes per sequence (all such layers), and their mixers' parameters
    linear_layers: int = 0
    state_bytes_per_seq: int = 0
    linear_layer_params: int = 0
    # multimodal checkpoints: the vision encoder's parameters (weights only; its profile pass
    # is not modelled)
    vision_params: int = 0
    # what about this model the planner does not model: said in every plan
    unmodelled: tuple[str, ...] = ()

    @property
    def kv_layers(self) -> int:
        """Layers that keep a KV cache (all but the recurrent ones)."""
        return self.num_layers - self.linear_layers

    @property
    def full_attention_layers(self) -> int:
        return self.kv_layers - self.sliding_window_layers

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def hybrid(self) -> bool:
        return self.linear_layers > 0

    def param_count(self) -> int:
        """Parameters, computed from the shapes (matches the safetensors total within ~0.5%)."""
        return (
            self.embedding_params() * (1 if self.tie_word_embeddings else 2)
            + self.num_layers * self._norms()
            + self.kv_layers * self._attention(bias=True)
            + self.linear_layers * self.linear_layer_params
            + self._mlps(router=True)
            + self.hidden_size
            + self.vision_params
        )

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def layer_params(self) -> int:
        """Parameters of one (attention) decoder layer: attention, MLP or experts, norms."""
        return self._attention(bias=True) + self._mlp(self.num_experts > 0, True) + self._norms()

    def _norms(self) -> int:
        return 2 * self.hidden_size

    def _attention(self, *, bias: bool) -> int:
        h = self.hidden_size
        if self.mla:
            heads, rope, nope, v = (
                self.num_attention_heads,
                self.qk_rope_head_dim,
                self.qk_nope_head_dim,
                self.v_head_dim,
            )
            q_out = heads * (nope + rope)
            q = h * self.q_lora_rank + self.q_lora_rank * q_out if self.q_lora_rank else h * q_out
            kv = h * (self.kv_lora_rank + rope) + self.kv_lora_rank * heads * (nope + v)
            return q + kv + heads * v * h
        q, kv = self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h
        if bias and self.qkv_bias:
            attn += q + 2 * kv
        return attn

    def _mlp(self, moe: bool, router: bool) -> int:
        h = self.hidden_size
        if not moe:
            return 3 * h * self.intermediate_size
        experts = self.num_experts * 3 * h * self.moe_intermediate_size
        shared = 3 * h * self.shared_expert_intermediate_size
        return experts + shared + (h * self.num_experts if router else 0)

    def _mlps(self, *, router: bool) -> int:
        moe_layers = self.num_layers - self.dense_layers if self.num_experts else 0
        return moe_layers * self._mlp(True, router) + (self.num_layers - moe_layers) * self._mlp(
            False, router
        )

    def expert_params(self) -> int:
        """Routed experts' parameters: what MXFP4 checkpoints quantize."""
        if not self.num_experts:
            return 0
        moe_layers = self.num_layers - self.dense_layers
        return moe_layers * self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size

    def linear_params(self) -> int:
        """Parameters in the decoder's linear layers: what AWQ/GPTQ/int8/fp8 quantize."""
        return (
            self.kv_layers * self._attention(bias=False)
            + self.linear_layers * self.linear_layer_params
            + self._mlps(router=False)
        )

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
        model_type = str(cfg.get("model_type") or config.get("model_type") or "llama")
        unmodelled: list[str] = []
        pattern = cfg.get("layer_types")
        pattern = [str(t) for t in pattern] if isinstance(pattern, list) else None

        # hybrid: recurrent layers (Gated DeltaNet "linear_attention", Mamba) keep a state
        linear_layers = 0
        if pattern and any(t in ("linear_attention", "mamba", "mamba2") for t in pattern):
            linear_layers = sum(1 for t in pattern if t in ("linear_attention", "mamba", "mamba2"))
        elif cfg.get("full_attention_interval"):
            linear_layers = layers - layers // int(cfg["full_attention_interval"])
        elif isinstance(cfg.get("layers_block_type"), list):
            linear_layers = sum(1 for t in cfg["layers_block_type"] if "mamba" in str(t))
        state = linear_params = 0
        if linear_layers:
            state, linear_params = _recurrent_state(cfg, hidden)
            unmodelled.append(
                f"hybrid model ({linear_layers} of {layers} layers recurrent): their state is "
                "planned per sequence; vLLM's block size raised to the state page and prefix-"
                "caching state pages are not modelled"
            )

        window = int(cfg.get("sliding_window") or 0)
        use_window = bool(cfg.get("use_sliding_window", True)) and window > 0
        window_layers = 0
        if use_window:
            if pattern:
                window_layers = sum(1 for t in pattern if "sliding" in t)
            elif cfg.get("sliding_window_pattern") and model_type.startswith("gemma3"):
                # Gemma 3: every Nth layer is global, the others local
                every = int(cfg["sliding_window_pattern"])
                window_layers = layers - layers // every
            elif model_type.startswith("gemma3"):
                window_layers = layers - layers // 6
            elif model_type.startswith("gemma2"):
                # Gemma 2 alternates local and global layers, starting with a local one
                window_layers = (layers + 1) // 2
            elif model_type in ("qwen2", "qwen3"):
                window_layers = max(0, layers - int(cfg.get("max_window_layers", layers)))
            elif not linear_layers:
                window_layers = layers
        experts = int(
            cfg.get("num_local_experts")
            or cfg.get("num_experts")
            or cfg.get("n_routed_experts")
            or 0
        )
        shared = int(cfg.get("shared_expert_intermediate_size") or 0)
        if not shared and cfg.get("n_shared_experts") and experts:
            shared = int(cfg["n_shared_experts"]) * int(cfg.get("moe_intermediate_size") or 0)
        archs = config.get("architectures") or cfg.get("architectures")
        architecture = (
            str(archs[0]) if isinstance(archs, list) and archs else _ARCH_BY_TYPE.get(model_type)
        ) or "LlamaForCausalLM"
        kv_lora = int(cfg.get("kv_lora_rank") or 0)
        if kv_lora and cfg.get("index_topk"):
            unmodelled.append("sparse attention indexer (DeepSeek V3.2) is not modelled")
        vision = config.get("vision_config") if "text_config" in config else None
        vision_params = _vision_params(vision) if isinstance(vision, dict) else 0
        if vision_params or "text_config" in config:
            unmodelled.append(
                "multimodal: the vision encoder's profile pass (--limit-mm-per-prompt, encoder "
                "budget) is not modelled; its weights are counted"
            )
        return cls(
            name=name,
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(
                cfg.get(
                    "tie_word_embeddings",
                    # Gemma's configs leave it out: transformers' default for them is True
                    config.get("tie_word_embeddings", model_type.startswith("gemma")),
                )
            ),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            sliding_window=window if use_window and window_layers else None,
            sliding_window_layers=window_layers,
            num_experts=experts,
            moe_intermediate_size=int(
                cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0
            )
            if experts
            else 0,
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
            architecture=architecture,
            shared_expert_intermediate_size=shared,
            dense_layers=int(cfg.get("first_k_dense_replace") or 0) if experts else 0,
            kv_lora_rank=kv_lora,
            qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0),
            qk_nope_head_dim=int(cfg.get("qk_nope_head_dim") or 0),
            v_head_dim=int(cfg.get("v_head_dim") or 0),
            q_lora_rank=int(cfg.get("q_lora_rank") or 0),
            linear_layers=linear_layers,
            state_bytes_per_seq=state * linear_layers,
            linear_layer_params=linear_params,
            vision_params=vision_params,
            unmodelled=tuple(unmodelled),
        )


def _recurrent_state(cfg: dict[str, Any], hidden: int) -> tuple[int, int]:
    """(state bytes per sequence, mixer parameters) of one recurrent layer.

    Gated DeltaNet (Qwen3-Next style): a value-heads x key-dim x value-dim state in float32
    plus the short convolution's window; Mamba-2: heads x head_dim x state_size plus the
    convolution. Parameters: the mixer's projections.
    """
    if cfg.get("linear_num_value_heads"):
        v_heads = int(cfg["linear_num_value_heads"])
        k_heads = int(cfg.get("linear_num_key_heads") or v_heads)
        k_dim = int(cfg.get("linear_key_head_dim") or 128)
        v_dim = int(cfg.get("linear_value_head_dim") or 128)
        conv = int(cfg.get("linear_conv_kernel_dim") or 4)
        conv_dim = 2 * k_heads * k_dim + v_heads * v_dim
        state = v_heads * k_dim * v_dim * 4 + conv_dim * (conv - 1) * 2
        params = hidden * (conv_dim + v_heads * v_dim + 2 * v_heads) + v_heads * v_dim * hidden
        return state, params
    heads = int(cfg.get("mamba_n_heads") or cfg.get("mamba_num_heads") or 0)
    head_dim = int(cfg.get("mamba_d_head") or cfg.get("mamba_head_dim") or 64)
    d_state = int(cfg.get("mamba_d_state") or cfg.get("ssm_state_size") or 128)
    expand = int(cfg.get("mamba_expand") or 2)
    inner = heads * head_dim if heads else expand * hidden
    heads = heads or inner // head_dim
    conv = int(cfg.get("mamba_d_conv") or cfg.get("conv_kernel") or 4)
    groups = int(cfg.get("mamba_n_groups") or cfg.get("n_groups") or 1)
    conv_dim = inner + 2 * groups * d_state
    state = heads * head_dim * d_state * 4 + conv_dim * (conv - 1) * 2
    params = hidden * (2 * inner + 2 * groups * d_state + heads) + inner * hidden
    return state, params


def _vision_params(vision: dict[str, Any]) -> int:
    """A ViT encoder's parameters from its ``vision_config`` (blocks + patch embedding)."""
    h = int(vision.get("hidden_size") or vision.get("embed_dim") or 0)
    layers = int(vision.get("num_hidden_layers") or vision.get("depth") or 0)
    inter = int(vision.get("intermediate_size") or 4 * h)
    patch = int(vision.get("patch_size") or 14)
    channels = int(vision.get("num_channels") or vision.get("in_channels") or 3)
    return layers * (4 * h * h + 2 * h * inter + 4 * h) + channels * patch * patch * h
