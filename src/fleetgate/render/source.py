"""What rendering starts from: the secret-free fleet, and the hashes that name its settings.

Rendering is a pure function of the fleet file's text: ``${VAR}`` references are never resolved
here (the fleet is re-validated from its uninterpolated YAML with an empty environment), so a
secret can only reach a host through its environment at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Fleet, LoadedFleet, has_env_refs
from fleetgate.fleetfile.load import interpolate
from fleetgate.render.quoting.common import one_line

_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD)($|_)", re.IGNORECASE)


class RenderError(FleetgateError):
    """The fleet file cannot be rendered safely (e.g. a secret written literally)."""


@dataclass(frozen=True)
class Source:
    """What the artifacts are rendered from: the secret-free fleet and its file's name.

    Only the file's name, never the path it was given by: the same fleet renders the same bytes
    from any directory, so a deploy's diff shows only what the fleet file changed.
    """

    fleet: Fleet
    raw: dict[str, Any]
    fleet_file: str


def source_of(loaded: LoadedFleet) -> Source:
    """Re-validate the fleet from its uninterpolated text, with no environment at all."""
    fleet = Fleet.model_validate(interpolate(loaded.raw, {}, strict=False))
    _refuse_literal_secrets(fleet)
    name = loaded.path.name if loaded.path else "fleet.yaml"
    return Source(fleet=fleet, raw=loaded.raw, fleet_file=name)


def _refuse_literal_secrets(fleet: Fleet) -> None:
    found = []
    if fleet.gateway is not None:
        gw = fleet.gateway
        found += [f"gateway.api_keys.{k.name}.key" for k in gw.api_keys if not _is_ref(k.key)]
        found += [
            f"gateway.{name}"
            for name, secret in (("admin_key", gw.admin_key), ("metrics_key", gw.metrics_key))
            if secret and not _is_ref(secret)
        ]
        if gw.redis_url and "@" in gw.redis_url and not has_env_refs(gw.redis_url):
            found.append("gateway.redis_url")
    for name, dep in fleet.deployments.items():
        found += [
            f"deployments.{name}.env.{key}"
            for key, value in dep.env.items()
            if _SECRET_NAME.search(key) and value and not has_env_refs(value)
        ]
    if found:
        raise RenderError(
            "secrets written literally in the fleet file would end up in rendered files: "
            + ", ".join(found)
            + "; write them as ${VAR} and set VAR in the host's environment"
        )


def _is_ref(value: str) -> bool:
    return has_env_refs(value)


def settings_hash(data: object) -> str:
    """A short, stable hash of settings (canonical JSON)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def deployment_hash(source: Source, name: str) -> str:
    """Hash of what the fleet file says about a deployment and its host, as written."""
    host = source.fleet.deployments[name].host
    return settings_hash(
        {
            "deployment": name,
            "settings": source.raw.get("deployments", {}).get(name),
            "host": source.raw.get("hosts", {}).get(host),
        }
    )


def gateway_hash(source: Source) -> str:
    keys = ("name", "hosts", "deployments", "gateway")
    return settings_hash({k: source.raw.get(k) for k in keys})


def header_lines(source: Source, what: str, digest: str) -> list[str]:
    """The first lines of every rendered file, without their comment marker: where it came
    from, and not to edit it. Each template writes them as its dialect's comments."""
    return [
        f"Rendered by fleetgate from {source.fleet_file} ({what}); settings sha256:{digest}.",
        "Do not edit: change the fleet file and render again.",
    ]


def header(source: Source, what: str, digest: str, comment: str = "#") -> str:
    """:func:`header_lines` as ``#`` comments, for the files that are not templates (YAML,
    the argument list): each line kept one line, whatever the file name holds."""
    return "\n".join(f"{comment} {one_line(line)}" for line in header_lines(source, what, digest))
