"""The release manifest: what a host's release runs, and what its health gate expects of each unit.

Render writes it into every release as ``manifest.json``; deploy (the health gate, rollback),
``local`` and the CLI read it back through :class:`Manifest`, so the file has one shape and one
reader. Reading ignores fields it does not know, so a release rendered by another version of
fleetgate can still be rolled back to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import client_address, deployment_url, http_url
from fleetgate.render.gateway import GATEWAY_DIR, GATEWAY_SCRIPT
from fleetgate.render.scripts import launch_script, workdir_of
from fleetgate.render.source import Source, deployment_hash, gateway_hash, settings_hash

MANIFEST = "manifest.json"


class ManifestError(FleetgateError):
    """A release's manifest is missing fields or is not JSON."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class VllmUnit(_Record):
    """A vLLM server of the release."""

    kind: Literal["vllm"] = "vllm"
    name: str
    runtime: Literal["docker", "process"]
    script: str = Field(description="its launch script, relative to the release")
    url: str
    served_model_name: str
    max_model_len: int | None = Field(description="what /v1/models must report; None: vLLM's")
    settings_sha256: str
    on_demand: bool = Field(
        default=False,
        description="started and stopped by the gateway's control layer, not by deploy",
    )


class GatewayUnit(_Record):
    """The fleetgate gateway of the release."""

    kind: Literal["gateway"] = "gateway"
    name: str = "gateway"
    runtime: Literal["process"] = "process"
    script: str = f"{GATEWAY_DIR}/{GATEWAY_SCRIPT}"
    url: str
    settings_sha256: str


Unit = Annotated[VllmUnit | GatewayUnit, Field(discriminator="kind")]


class Manifest(_Record):
    """One host's release: its units in start and gate order (servers before the gateway)."""

    fleet: str
    fleet_file: str
    host: str
    os: Literal["linux", "windows"]
    workdir: str = Field(description="where releases live on the host")
    settings_sha256: str = Field(description="a hash of its units' settings hashes")
    units: list[Unit]

    def text(self) -> str:
        """The file's bytes as text: canonical JSON, so the same release renders the same."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, data: str | bytes) -> Manifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'the file'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ManifestError(f"{MANIFEST} cannot be read: {problems}") from None

    @classmethod
    def of_release(cls, files: Mapping[str, bytes]) -> Manifest | None:
        """The manifest among a release's files; None for a release without one."""
        data = files.get(MANIFEST)
        return None if data is None else cls.parse(data)


def host_manifest(source: Source, host: str) -> Manifest:
    """The manifest of one host's release, from the fleet file alone (nothing is rendered)."""
    fleet = source.fleet
    h = fleet.hosts[host]
    units: list[VllmUnit | GatewayUnit] = []
    for name, dep in fleet.deployments.items():
        if dep.host != host:
            continue
        units.append(
            VllmUnit(
                name=name,
                runtime=dep.runtime,
                script=f"{name}/{launch_script(h.os)}",
                url=deployment_url(fleet, name),
                served_model_name=dep.public_name(name),
                max_model_len=dep.max_model_len,
                settings_sha256=deployment_hash(source, name),
                on_demand=dep.on_demand,
            )
        )
    if fleet.gateway is not None and fleet.gateway.host == host:
        gw = fleet.gateway
        units.append(
            GatewayUnit(
                url=http_url(client_address(gw.listen, h.address), gw.port),
                settings_sha256=gateway_hash(source),
            )
        )
    return Manifest(
        fleet=fleet.name,
        fleet_file=source.fleet_file,
        host=host,
        os=h.os,
        workdir=workdir_of(fleet, host),
        settings_sha256=settings_hash([u.settings_sha256 for u in units]),
        units=units,
    )
