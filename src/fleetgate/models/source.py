"""Finding a model's architecture: a given config.json, a local directory, the HF cache, the
bundled catalog, or the Hugging Face Hub, in that order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.errors import FleetgateError
from fleetgate.models.arch import ModelArch
from fleetgate.models.catalog import catalog_arch, detect_quantization
from fleetgate.models.hub import HubConfig, HubError, from_cache, from_hub, looks_like_repo_id
from fleetgate.models.safetensors import checkpoint_bytes, tensor_bytes


class UnknownModelError(FleetgateError):
    """The model's architecture cannot be had: not in the catalog, and no readable config.json
    (or safetensors files) given for it."""


@dataclass(frozen=True)
class ModelInfo:
    arch: ModelArch
    quantization: str  # "none" | "awq" | "gptq" | "int8" | "fp8" | "bitsandbytes"
    weight_bytes: int | None = None  # exact, from safetensors headers, when a directory is given
    bits: int | None = None  # from quantization_config, when known
    group_size: int | None = None
    source: str = "bundled catalog"  # where the architecture came from
    weight_dtypes: dict[str, int] = field(default_factory=dict)  # safetensors bytes per dtype


def safetensors_bytes(path: Path) -> int:
    """Bytes of tensor data in one safetensors file, read from its header only."""
    return tensor_bytes(path)[0]


def _quantization_from_config(cfg: dict) -> tuple[str | None, int | None, int | None]:
    """The checkpoint's method, bits and group size, as vLLM reads ``quantization_config``."""
    q = cfg.get("quantization_config") or cfg.get("compression_config")
    if not isinstance(q, dict):
        return None, None, None
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits") or q.get("w_bit")
    group = q.get("group_size") or q.get("q_group_size")
    if q.get("load_in_4bit") or q.get("load_in_8bit"):
        return "bitsandbytes", 4 if q.get("load_in_4bit") else 8, None
    algo = str(q.get("quant_algo") or q.get("quantization", {}).get("quant_algo", "")).upper()
    formats = {str(g.get("format", "")) for g in (q.get("config_groups") or {}).values()}
    formats.add(str(q.get("format", "")))
    if method == "modelopt" or algo:
        return ("nvfp4" if "FP4" in algo else "fp8"), 4 if "FP4" in algo else 8, None
    if method == "compressed-tensors":
        if any("nvfp4" in f for f in formats):
            return "nvfp4", 4, 16
        if any("float-quantized" in f for f in formats):
            return "fp8", 8, None
        weights = [g.get("weights") or {} for g in (q.get("config_groups") or {}).values()]
        nbits = next((int(w["num_bits"]) for w in weights if w.get("num_bits")), bits)
        return ("int8" if nbits == 8 else "gptq"), nbits, group
    mapping = {
        "awq": "awq",
        "gptq": "gptq",
        "fp8": "fp8",
        "bitsandbytes": "bitsandbytes",
        "mxfp4": "mxfp4",
        "nvfp4": "nvfp4",
    }
    return (
        mapping.get(method, method or None),
        int(bits) if bits else None,
        (int(group) if group else None),
    )


def _info(
    cfg: dict[str, Any],
    model_id: str,
    where: str,
    source: str,
    weights: int | None,
    dtypes: dict[str, int] | None,
) -> ModelInfo:
    try:
        arch = ModelArch.from_config(cfg, name=model_id)
    except KeyError as exc:
        raise UnknownModelError(f"{where} lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise UnknownModelError(f"{where}: {exc}") from None
    method, bits, group = _quantization_from_config(cfg)
    return ModelInfo(
        arch,
        method or detect_quantization(model_id),
        weights,
        bits,
        group,
        source=source,
        weight_dtypes=dtypes or {},
    )


def _read_json(cfg_file: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnknownModelError(f"cannot read {cfg_file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UnknownModelError(f"{cfg_file} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise UnknownModelError(f"{cfg_file} is not a config.json (not a JSON object)")
    return cfg


def load_model_info(
    model_id: str,
    *,
    config_path: str | Path | None = None,
    model_dir: str | Path | None = None,
    revision: str | None = None,
) -> ModelInfo:
    """Architecture, quantization and (where it can be had) exact weight bytes of a model.

    Order: ``config_path``; ``model_dir`` (or a ``model_id`` that is a local directory), whose
    safetensors headers also give the exact weight size; the HF cache; the bundled catalog
    (skipped when a ``revision`` is asked); the Hugging Face Hub (config.json and safetensors
    headers, no weights).
    """
    weights: int | None = None
    dtypes: dict[str, int] | None = None
    cfg_file = Path(config_path) if config_path else None
    if model_dir is None and not looks_like_repo_id(model_id) and Path(model_id).is_dir():
        model_dir = model_id
    if model_dir is not None:
        directory = Path(model_dir)
        cfg_file = cfg_file or directory / "config.json"
        files = sorted(directory.glob("*.safetensors"))
        if files:
            try:
                weights, dtypes = checkpoint_bytes(files)
            except (OSError, ValueError) as exc:
                raise UnknownModelError(f"cannot size the weights in {directory}: {exc}") from None
    if cfg_file is not None:
        cfg = _read_json(cfg_file)
        return _info(cfg, model_id, str(cfg_file), f"config.json {cfg_file}", weights, dtypes)
    if not looks_like_repo_id(model_id):
        raise UnknownModelError(
            f"model {model_id!r} is neither an ORG/NAME Hugging Face id nor a local directory "
            "with a config.json; pass its config.json with --config PATH (or model_path: in the "
            "fleet file, a local directory holding it)"
        )
    hub: HubConfig | None
    try:
        hub = from_cache(model_id, revision)
    except HubError as exc:
        raise UnknownModelError(str(exc)) from None
    if hub is None and revision is None:
        arch = catalog_arch(model_id)
        if arch is not None:
            return ModelInfo(arch, detect_quantization(model_id), None)
    if hub is None:
        try:
            hub = from_hub(model_id, revision)
        except HubError as exc:
            raise UnknownModelError(str(exc)) from None
    return _info(
        hub.config, model_id, f"config.json of {model_id}", hub.source, hub.weight_bytes, hub.dtypes
    )
