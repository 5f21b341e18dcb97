"""Launch artifacts derived from the fleet file: vLLM flags, scripts, units, configs."""

from fleetgate.render.artifacts import render_host
from fleetgate.render.litellm import render_litellm
from fleetgate.render.manifest import (
    MANIFEST,
    GatewayUnit,
    Manifest,
    ManifestError,
    Unit,
    VllmUnit,
    host_manifest,
)
from fleetgate.render.monitoring import render_monitoring
from fleetgate.render.source import RenderError, Source, source_of
from fleetgate.render.vllm import VllmCommand, vllm_command

__all__ = [
    "MANIFEST",
    "GatewayUnit",
    "Manifest",
    "ManifestError",
    "RenderError",
    "Source",
    "Unit",
    "VllmCommand",
    "VllmUnit",
    "host_manifest",
    "render_host",
    "render_litellm",
    "render_monitoring",
    "source_of",
    "vllm_command",
]
