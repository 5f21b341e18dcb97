"""Build a tiny Llama-style model directory that a real vLLM CPU server can load.

Nothing can be downloaded from a model hub, so the tests make their own model: random weights
from a ``LlamaConfig`` and a small BPE tokenizer trained on local text, with a chat template.
Building needs torch and transformers, which only the vLLM virtual environment has; the public
functions therefore run this file as a script under ``FLEETGATE_VLLM_PYTHON``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the builder's output changes, so cached models are rebuilt.
BUILDER_VERSION = 1

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# bos, then per message: role token, content, end token; then the assistant role token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] }}{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelParams:
    """What shapes the model; KV bytes per token = 2 x layers x kv_heads x head_dim x 2 (bf16)."""

    num_layers: int = 2
    num_kv_heads: int = 2
    num_heads: int | None = None  # default: num_kv_heads
    head_dim: int = 64
    hidden_size: int | None = None  # default: num_heads x head_dim
    intermediate_size: int = 256
    vocab_size: int = 2048
    max_position_embeddings: int = 131072
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"v": BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def vllm_python() -> str | None:
    """The python of the vLLM virtual environment, from ``FLEETGATE_VLLM_PYTHON``."""
    return os.environ.get("FLEETGATE_VLLM_PYTHON") or None


def build_tiny_model(directory: Path, *, python: str | None = None, **params: int | None) -> Path:
    """Build the model into ``directory`` (created) with the vLLM venv's python; return it."""
    spec = TinyModelParams(**params)  # type: ignore[arg-type]
    python = python or vllm_python()
    if python is None:
        raise RuntimeError("FLEETGATE_VLLM_PYTHON is not set: no python with torch/transformers")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [python, __file__, str(directory), json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{proc.stdout}\n{proc.stderr}")
    return directory


def cached_tiny_model(cache_dir: Path | None = None, **params: int | None) -> Path:
    """The model for these params, built once into ``~/.cache/fleetgate/tiny-model-<hash>``."""
    spec = TinyModelParams(**params)  # type: ignore[arg-type]
    root = cache_dir or Path.home() / ".cache" / "fleetgate"
    target = root / f"tiny-model-{spec.key()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=root))
    try:
        build_tiny_model(staging, **asdict(spec))
        try:
            staging.rename(target)  # atomic: a concurrent builder may have won the race
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _training_text() -> list[str]:
    """Local text to train the tokenizer on: a few stdlib modules' sources and docs."""
    import json as json_mod
    import string
    import textwrap

    lines: list[str] = []
    for mod in (json_mod.decoder, json_mod.encoder, string, textwrap):
        lines.extend(Path(mod.__file__ or "").read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line.strip()]


def _build(directory: Path, spec: TinyModelParams) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)

    num_heads = spec.num_heads or spec.num_kv_heads
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=spec.hidden_size or num_heads * spec.head_dim,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    model.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)


if __name__ == "__main__":
    _build(Path(sys.argv[1]), TinyModelParams(**json.loads(sys.argv[2])))
