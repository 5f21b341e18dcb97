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

from pydantic import BaseModel, ValidationError

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
    try:
        fleet = Fleet.model_validate(interpolate(loaded.raw, {}, strict=False))
    except ValidationError as exc:
        wrong = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise RenderError(f"the fleet file is not valid without its ${{VAR}}s: {wrong}") from None
    _refuse_references(fleet)
    _refuse_literal_secrets(fleet)
    name = loaded.path.name if loaded.path else "fleet.yaml"
    return Source(fleet=fleet, raw=loaded.raw, fleet_file=name)


def _may_refer(path: tuple[str, ...]) -> bool:
    """Where a ``${VAR}`` may stay in rendered files: the values that carry secrets."""
    return (
        (len(path) == 4 and path[0] == "deployments" and path[2] in ("env", "extra_args"))
        or (len(path) == 4 and path[:2] == ("gateway", "api_keys") and path[3] == "key")
        or path
        in (
            ("gateway", "admin_key"),
            ("gateway", "metrics_key"),
            ("gateway", "redis_url"),
            ("gateway", "store"),
        )
    )


def _references(value: object, path: tuple[str, ...]) -> list[str]:
    if isinstance(value, BaseModel):
        return [
            found
            for name in type(value).model_fields
            for found in _references(getattr(value, name), (*path, name))
        ]
    if isinstance(value, dict):
        keys = [".".join((*path, k)) for k in value if isinstance(k, str) and has_env_refs(k)]
        return keys + [f for k, v in value.items() for f in _references(v, (*path, str(k)))]
    if isinstance(value, list | tuple):
        return [f for i, v in enumerate(value) for f in _references(v, (*path, str(i)))]
    if isinstance(value, str) and has_env_refs(value) and not _may_refer(path):
        return [".".join(path)]
    return []


def _refuse_references(fleet: Fleet) -> None:
    """A ``${VAR}`` that render leaves in a path, address or image would be expanded by the
    host at run time, to a value ``validate`` never saw: only secrets may stay references."""
    found = _references(fleet, ())
    if found:
        raise RenderError(
            "render resolves no ${VAR}, and a reference left in a rendered script would be "
            "expanded on the host unchecked: "
            + ", ".join(found)
            + "; write these values in the fleet file (references are for secrets: "
            "deployments' env and extra_args, API keys, admin_key, metrics_key, redis_url, store)"
        )


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
        userinfo = (gw.store or "").partition("://")[2].partition("@")
        if userinfo[1] and ":" in userinfo[0] and not has_env_refs(gw.store or ""):
            found.append("gateway.store")  # a PostgreSQL DSN with its password written out
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
