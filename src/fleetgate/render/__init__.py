"""Launch artifacts derived from the fleet file: vLLM flags, scripts, units, configs."""

from fleetgate.render.artifacts import (
    MANIFEST,
    RenderError,
    Source,
    host_manifest,
    render_host,
    source_of,
)
from fleetgate.render.litellm import render_litellm
from fleetgate.render.vllm import VllmCommand, vllm_command

__all__ = [
    "MANIFEST",
    "RenderError",
    "Source",
    "VllmCommand",
    "host_manifest",
    "render_host",
    "render_litellm",
    "source_of",
    "vllm_command",
]
