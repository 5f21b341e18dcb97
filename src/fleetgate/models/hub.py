"""A model's config.json and weight sizes from the Hugging Face cache or the Hub.

The cache comes first: a host that served a model already holds its config and weights there
(``$HF_HUB_CACHE``, ``models--org--name/snapshots/<commit>/``), and ``HF_HUB_OFFLINE=1`` then
needs no network. From the Hub only ``config.json`` is downloaded (into that cache, as vLLM
would) and the safetensors headers are read with range requests: no weights. Settings are
read from the environment at each call (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``),
not once at import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.models.arch import ModelArch
from fleetgate.models.safetensors import checkpoint_bytes


class HubError(LookupError):
    """The Hub (or the cache) cannot give this model; the message says what to do."""


@dataclass(frozen=True)
class HubConfig:
    """What the Hub or the cache gave for one repo."""

    config: dict[str, Any]
    weight_bytes: int | None  # tensor data in the safetensors files; None when not known
    source: str  # "HF cache (snapshot 1a2b3c4)" or "Hugging Face Hub (revision main)"
    dtypes: dict[str, int] | None = None  # tensor bytes per safetensors dtype


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _endpoint() -> str | None:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def looks_like_repo_id(model_id: str) -> bool:
    parts = model_id.split("/")
    return len(parts) == 2 and all(parts) and not model_id.startswith((".", "~"))


def _read_config(path: Path, model_id: str) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HubError(f"config.json of {model_id} in the HF cache is unreadable: {exc}") from None
    if not isinstance(cfg, dict):
        raise HubError(f"config.json of {model_id} in the HF cache is not a JSON object")
    return cfg


def _sum_local(files: list[Path]) -> tuple[int, dict[str, int]] | None:
    try:
        return checkpoint_bytes(files)
    except (OSError, ValueError):
        return None  # a dangling link (weights not downloaded) or a partial file


def from_cache(model_id: str, revision: str | None = None) -> HubConfig | None:
    """The repo's config.json (and safetensors headers, where downloaded) from the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        model_id, "config.json", cache_dir=hub_cache_dir(), revision=revision
    )
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    cfg = _read_config(Path(found), model_id)
    files = sorted(snapshot.glob("*.safetensors"))
    weights = _sum_local(files) if files else None
    source = f"HF cache (snapshot {snapshot.name[:12]})"
    if weights is None and not hub_offline():
        try:
            weights = _hub_weights(model_id, revision)
        except HubError:
            weights = None
    return HubConfig(cfg, weights[0] if weights else None, source, weights[1] if weights else None)


def _hub_weights(model_id: str, revision: str | None) -> tuple[int, dict[str, int]] | None:
    """Exact tensor bytes from the safetensors headers on the Hub (range requests only)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import NotASafetensorsRepoError

    api = HfApi(endpoint=_endpoint(), token=_token())
    try:
        meta = api.get_safetensors_metadata(model_id, revision=revision)
    except NotASafetensorsRepoError:
        return None
    except Exception as exc:
        raise _explain(exc, model_id, revision) from None
    by_dtype: dict[str, int] = {}
    for file_meta in meta.files_metadata.values():
        for t in file_meta.tensors.values():
            n = t.data_offsets[1] - t.data_offsets[0]
            by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + n
    return sum(by_dtype.values()), by_dtype


def from_hub(model_id: str, revision: str | None = None) -> HubConfig:
    """config.json (downloaded into the HF cache) and the safetensors headers from the Hub."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    if hub_offline():
        raise HubError(
            f"model {model_id!r} is not in the HF cache ({hub_cache_dir()}) and HF_HUB_OFFLINE "
            "is set: run `hf download "
            f"{model_id} config.json` where the Hub is reachable, or pass --config PATH "
            "(model_path: in a fleet file)"
        )
    try:
        # one HEAD without retries first: an unreachable Hub or a missing repo answers at once
        get_hf_file_metadata(
            hf_hub_url(model_id, "config.json", revision=revision, endpoint=_endpoint()),
            token=_token(),
            retry_on_errors=False,
        )
        path = hf_hub_download(
            model_id,
            "config.json",
            revision=revision,
            cache_dir=hub_cache_dir(),
            token=_token(),
            endpoint=_endpoint(),
        )
    except Exception as exc:
        raise _explain(exc, model_id, revision) from None
    cfg = _read_config(Path(path), model_id)
    weights = _hub_weights(model_id, revision)
    return HubConfig(
        cfg,
        weights[0] if weights else None,
        f"Hugging Face Hub (revision {revision or 'main'})",
        weights[1] if weights else None,
    )


def _explain(exc: Exception, model_id: str, revision: str | None) -> HubError:
    """One line saying what went wrong and what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    fallback = "or pass its config.json with --config PATH (model_path: in a fleet file)"
    if isinstance(exc, GatedRepoError):
        how = (
            "HF_TOKEN is set but has no access: accept the licence on the model's page"
            if (_token())
            else "set HF_TOKEN to a token that has accepted the model's licence"
        )
        return HubError(f"model {model_id!r} is gated: {how}, {fallback}")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"no model {model_id!r} on the Hub (or it is private: set HF_TOKEN); check the "
            f"id, {fallback}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"model {model_id!r} has no revision {revision!r}; {fallback}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"model {model_id!r} has no config.json; {fallback}")
    # the HTTP client's transport errors (httpx, or requests in older releases), by name: the
    # client library is huggingface_hub's choice, not ours
    transport = any(
        c.__name__ in ("TransportError", "ConnectionError", "Timeout") for c in type(exc).__mro__
    )
    unreachable = (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError)
    if transport or (isinstance(exc, unreachable) and not isinstance(exc, HfHubHTTPError)):
        where = _endpoint() or "https://huggingface.co"
        return HubError(
            f"model {model_id!r} is not in the HF cache ({hub_cache_dir()}) and the Hub "
            f"({where}) cannot be reached; download it where the Hub is reachable, {fallback}"
        )
    return HubError(f"model {model_id!r}: the Hub answered {exc}; {fallback}")


def arch_from(hub: HubConfig, model_id: str) -> ModelArch:
    try:
        return ModelArch.from_config(hub.config, name=model_id)
    except (KeyError, ValueError, TypeError) as exc:
        raise HubError(f"config.json of {model_id} ({hub.source}): {exc}") from None
