"""Every file of one host's release, assembled from the modules that render each kind.

``source`` (what rendering starts from, its hashes and secret policy), ``scripts`` (launch
scripts and units of each vLLM deployment), ``gateway`` (the gateway's config, script and unit)
and ``manifest`` (what the release runs, for deploy's health gate).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from fleetgate.render.gateway import GATEWAY_DIR, gateway_files
from fleetgate.render.manifest import MANIFEST, host_manifest
from fleetgate.render.scripts import vllm_files
from fleetgate.render.source import RenderError, Source


def render_host(source: Source, host: str) -> dict[str, str]:
    """Every file of one host's release, keyed by its path inside the release."""
    fleet = source.fleet
    if host not in fleet.hosts:
        raise RenderError(f"no host {host!r} in the fleet file")
    files: dict[str, str] = {}
    for name, dep in fleet.deployments.items():
        if dep.host != host:
            continue
        if dep.runtime == "process" and fleet.hosts[host].os == "windows":
            raise RenderError(
                f"deployment {name}: runtime process is Linux only; use runtime docker on Windows"
            )
        for file, text in vllm_files(source, name).items():
            files[str(PurePosixPath(name, file))] = text
    if fleet.gateway is not None and fleet.gateway.host == host:
        for file, text in gateway_files(source).items():
            files[f"{GATEWAY_DIR}/{file}"] = text
    files[MANIFEST] = host_manifest(source, host).text()
    return dict(sorted(files.items()))
