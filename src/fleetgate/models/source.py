"""Finding a model's architecture: a local directory, a given config.json, or the catalog."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from fleetgate.errors import FleetgateError
from fleetgate.models.arch import ModelArch
from fleetgate.models.catalog import catalog_arch, detect_quantization


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


def safetensors_bytes(path: Path) -> int:
    """Bytes of tensor data in one safetensors file, read from its header only."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 1024 * 1024:
            raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    return sum(
        t["data_offsets"][1] - t["data_offsets"][0]
        for name, t in header.items()
        if name != "__metadata__"
    )


def _quantization_from_config(cfg: dict) -> tuple[str | None, int | None, int | None]:
    q = cfg.get("quantization_config") or cfg.get("compression_config")
    if not isinstance(q, dict):
        return None, None, None
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits") or q.get("w_bit")
    group = q.get("group_size") or q.get("q_group_size")
    if q.get("load_in_4bit") or q.get("load_in_8bit"):
        return "bitsandbytes", 4 if q.get("load_in_4bit") else 8, None
    mapping = {
        "awq": "awq",
        "gptq": "gptq",
        "fp8": "fp8",
        "bitsandbytes": "bitsandbytes",
        "compressed-tensors": "int8" if bits == 8 else "gptq",
    }
    return mapping.get(method), int(bits) if bits else None, int(group) if group else None


def load_model_info(
    model_id: str, *, config_path: str | Path | None = None, model_dir: str | Path | None = None
) -> ModelInfo:
    """Architecture and quantization of a model.

    Order: ``config_path``, then ``model_dir/config.json`` (whose safetensors headers also give
    the exact weight size), then the bundled catalog.
    """
    weight_bytes = None
    cfg_file = Path(config_path) if config_path else None
    if model_dir is not None:
        directory = Path(model_dir)
        cfg_file = cfg_file or directory / "config.json"
        files = sorted(directory.glob("*.safetensors"))
        if files:
            try:
                weight_bytes = sum(safetensors_bytes(f) for f in files)
            except (OSError, ValueError) as exc:
                raise UnknownModelError(f"cannot size the weights in {directory}: {exc}") from None
    if cfg_file is not None:
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UnknownModelError(f"cannot read {cfg_file}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UnknownModelError(f"{cfg_file} is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict):
            raise UnknownModelError(f"{cfg_file} is not a config.json (not a JSON object)")
        try:
            arch = ModelArch.from_config(cfg, name=model_id)
        except KeyError as exc:
            raise UnknownModelError(f"{cfg_file} lacks {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise UnknownModelError(f"{cfg_file}: {exc}") from None
        method, bits, group = _quantization_from_config(cfg)
        return ModelInfo(arch, method or detect_quantization(model_id), weight_bytes, bits, group)
    known = catalog_arch(model_id)
    if known is None:
        raise UnknownModelError(
            f"model {model_id!r} is not in the bundled catalog; pass its config.json with "
            "--config PATH (or model_path: in the fleet file, a local directory holding it)"
        )
    return ModelInfo(known, detect_quantization(model_id), weight_bytes)
