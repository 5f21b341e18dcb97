"""Model architecture facts: a bundled catalog, config.json and safetensors readers."""

from fleetgate.models.arch import ModelArch
from fleetgate.models.catalog import CATALOG, catalog_arch, catalog_config, detect_quantization
from fleetgate.models.source import ModelInfo, UnknownModelError, load_model_info, safetensors_bytes

__all__ = [
    "CATALOG",
    "ModelArch",
    "ModelInfo",
    "UnknownModelError",
    "catalog_arch",
    "catalog_config",
    "detect_quantization",
    "load_model_info",
    "safetensors_bytes",
]
