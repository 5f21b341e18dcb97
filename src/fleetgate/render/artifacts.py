"""Every file a host needs, rendered from the fleet file: launch scripts, units, configs.

Rendering is a pure function of the fleet file's text: ``${VAR}`` references are never resolved
here (the fleet is re-validated from its uninterpolated YAML with an empty environment), so a
secret can only reach a host through its environment at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import jinja2
import yaml

from fleetgate.fleetfile import Fleet, Host, LoadedFleet
from fleetgate.fleetfile.load import interpolate
from fleetgate.render import words
from fleetgate.render.vllm import CONTAINER_MODEL_DIR, VllmCommand, vllm_command

DEFAULT_WORKDIR = "~/fleetgate"
DEFAULT_FLEETGATE_BIN = "/usr/local/bin/fleetgate"  # where systemd units expect fleetgate
STOP_TIMEOUT_S = 30
MANIFEST = "manifest.json"
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD)($|_)", re.IGNORECASE)


class RenderError(ValueError):
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
        if gw.admin_key and not _is_ref(gw.admin_key):
            found.append("gateway.admin_key")
        if gw.redis_url and "@" in gw.redis_url and not words.env_refs(gw.redis_url):
            found.append("gateway.redis_url")
    for name, dep in fleet.deployments.items():
        found += [
            f"deployments.{name}.env.{key}"
            for key, value in dep.env.items()
            if _SECRET_NAME.search(key) and value and not words.env_refs(value)
        ]
    if found:
        raise RenderError(
            "secrets written literally in the fleet file would end up in rendered files: "
            + ", ".join(found)
            + "; write them as ${VAR} and set VAR in the host's environment"
        )


def _is_ref(value: str) -> bool:
    return bool(words.env_refs(value))


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


def _header(source: Source, what: str, digest: str, comment: str = "#") -> str:
    return (
        f"{comment} Rendered by fleetgate from {source.fleet_file} ({what}); "
        f"settings sha256:{digest}.\n"
        f"{comment} Do not edit: change the fleet file and render again."
    )


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fleetgate.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _template(template: str, **context: Any) -> str:
    return _templates().get_template(template).render(**context)


def workdir_of(fleet: Fleet, host: str) -> str:
    """Where releases live on a host (``~/`` is the ssh user's home)."""
    return fleet.hosts[host].workdir or DEFAULT_WORKDIR


def _unit_workdir(host: Host) -> tuple[str, str]:
    """The workdir as an absolute path for a system unit, and a header line saying where from.

    A system unit's ``%h`` is the service manager's home (/root) even with ``User=``, so ``~`` is
    resolved here: to the ssh user's conventional home (the unit runs as that user, or as root
    when the fleet file names no user).
    """
    workdir = host.workdir or DEFAULT_WORKDIR
    if workdir.startswith("/"):
        return workdir, f"# Paths are under the host's workdir {workdir} (from the fleet file)."
    user = host.ssh.user
    home = "/root" if user in (None, "root") else f"/home/{user}"
    relative = workdir[1:].lstrip("/") if workdir.startswith("~") else workdir
    path = str(PurePosixPath(home, relative))
    who = f"ssh user {user}" if user else "root (no ssh user is named: the unit runs as root)"
    return path, (
        f"# Paths assume {home} as the home of {who};\n"
        "# an absolute `workdir:` for this host in the fleet file overrides it."
    )


def _paired(args: list[str], quote: Callable[[str], str], sep: str = " ") -> list[str]:
    """Quoted words, one line per flag with its value, for readable scripts."""
    lines: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            lines.append(quote(word) + sep + quote(args[i + 1]))
            i += 2
        else:
            lines.append(quote(word))
            i += 1
    return lines


@dataclass(frozen=True)
class _Shell:
    """One launch-script language: its template and how it quotes words, paths and options."""

    template: str
    script: str
    word: Callable[[str], str]
    path: Callable[[str], str]
    sep: str  # between a flag and its value on one line of an argument list
    option: Callable[[str, str], str]  # one docker option (flag, value) as a list item


_BASH = _Shell(
    "docker.sh.j2",
    "start-vllm.sh",
    words.sh,
    words.sh_path,
    " ",
    lambda flag, value: f"{flag} {words.sh(value)}",
)
_POWERSHELL = _Shell(
    "docker.ps1.j2",
    "Start-VLLM.ps1",
    words.ps,
    words.ps_path,
    ", ",
    lambda flag, value: f"@('{flag}', {words.ps(value)})",
)


def vllm_files(source: Source, name: str) -> dict[str, str]:
    """The launch artifacts of one deployment, keyed by file name."""
    fleet = source.fleet
    dep = fleet.deployments[name]
    host = fleet.hosts[dep.host]
    command = vllm_command(fleet, name)
    digest = deployment_hash(source, name)
    head = _header(source, f"deployment {name}", digest)
    workdir = workdir_of(fleet, dep.host)
    files = {
        "vllm-args.txt": head + "\n" + "\n".join(command.serve_args()) + "\n",
    }
    if dep.runtime == "process":
        python = dep.python or "python3"
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", *command.api_server_args()]
        files[_BASH.script] = _template(
            "process.sh.j2",
            header=head,
            what=f"vLLM deployment {name}",
            script=_BASH.script,
            name=words.sh(f"vllm-{name}"),
            state_dir=words.sh_path(workdir),
            state_dir_text=workdir,
            env=[(k, words.sh(v)) for k, v in command.env],
            argv=_paired(argv, words.sh),
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        literal_env = [(k, v) for k, v in command.env if not words.env_refs(v)]
        unit_workdir, paths_note = _unit_workdir(host)
        files["vllm.service"] = _template(
            "vllm.service.j2",
            header=head + "\n" + paths_note,
            name=name,
            served=dep.public_name(name),
            user=host.ssh.user,
            env_file=words.systemd(unit_workdir + "/env"),
            environment=[words.systemd(f"{k}={v}") for k, v in literal_env],
            exec_start=" ".join(words.systemd(a) for a in argv),
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        return files

    container = f"fleetgate-{name}"
    hf_cache = dep.hf_cache or "~/.cache/huggingface"
    mount = f"{dep.model_path}:{CONTAINER_MODEL_DIR}/{name}:ro" if dep.model_path else None
    docker_options = [("-e", f"{k}={v}") for k, v in command.env]
    if mount:
        docker_options.append(("-v", mount))
    for shell in (_BASH, _POWERSHELL):
        files[shell.script] = _template(
            shell.template,
            header=head,
            script=shell.script,
            name=name,
            name_word=shell.word(name),
            container_word=shell.word(container),
            image=dep.image,
            image_word=shell.word(dep.image),
            state_dir=shell.path(workdir),
            state_dir_text=workdir,
            hf_cache=shell.path(hf_cache),
            port=dep.port,
            args=_paired(command.serve_args(), shell.word, shell.sep),
            docker_options=[shell.option(flag, value) for flag, value in docker_options],
        )
    files["compose.yaml"] = head + "\n" + _compose(name, dep.image, command, hf_cache, mount)
    return files


def _compose(name: str, image: str, command: VllmCommand, hf_cache: str, mount: str | None) -> str:
    dep_port = command.flags[command.flags.index("--port") + 1]
    volumes = [f"{hf_cache}:/root/.cache/huggingface"]
    if mount:
        volumes.append(mount)
    service = {
        "image": image,
        "container_name": f"fleetgate-{name}",
        "restart": "unless-stopped",
        "ipc": "host",
        "ports": [f"{dep_port}:{dep_port}"],
        "volumes": [words.compose(v) for v in volumes],
        "environment": ["HF_TOKEN", *(words.compose(f"{k}={v}") for k, v in command.env)],
        "command": [words.compose(a) for a in command.serve_args()],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
                }
            }
        },
    }
    return _yaml({"services": {f"vllm-{name}": service}})


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def gateway_files(source: Source) -> dict[str, str]:
    """The gateway's config (the fleet file itself, references intact) and how to run it."""
    fleet = source.fleet
    assert fleet.gateway is not None
    gw = fleet.gateway
    host = fleet.hosts[gw.host]
    digest = gateway_hash(source)
    head = _header(source, "gateway", digest)
    workdir = workdir_of(fleet, gw.host)
    serve = ["serve", "{config}", "--host", gw.listen, "--port", str(gw.port)]
    fleetgate_bin = host.fleetgate_bin or "fleetgate"  # the script: the ssh PATH's by default
    config_here = '"$(cd "$(dirname "$SELF")" && pwd -P)/fleet.yaml"'
    script = _template(
        "process.sh.j2",
        header=head,
        what="the fleetgate gateway",
        script="start-gateway.sh",
        name="gateway",
        state_dir=words.sh_path(workdir),
        state_dir_text=workdir,
        env=[],
        argv=[f'"${{FLEETGATE_BIN:-{fleetgate_bin}}}"']
        + [config_here if a == "{config}" else words.sh(a) for a in serve],
        stop_timeout_s=STOP_TIMEOUT_S,
    )
    unit_workdir, paths_note = _unit_workdir(host)
    config_path = words.systemd(unit_workdir + "/current/gateway/fleet.yaml")
    unit_bin = host.fleetgate_bin or DEFAULT_FLEETGATE_BIN
    bin_note = (
        f"# Runs fleetgate from {unit_bin}"
        + ("" if host.fleetgate_bin else " (set `fleetgate_bin:` for this host to change it)")
        + "."
    )
    unit = _template(
        "gateway.service.j2",
        header=head + "\n" + paths_note + "\n" + bin_note,
        fleet=fleet.name,
        user=host.ssh.user,
        env_file=words.systemd(unit_workdir + "/env"),
        exec_start=" ".join(
            [words.systemd(unit_bin)]
            + [config_path if a == "{config}" else words.systemd(a) for a in serve]
        ),
    )
    return {
        "fleet.yaml": head + "\n" + _yaml(source.raw),
        "start-gateway.sh": script,
        "fleetgate-gateway.service": unit,
    }


def host_manifest(source: Source, host: str) -> dict[str, Any]:
    """What a host's release runs and what its health gate expects of each unit."""
    fleet = source.fleet
    h = fleet.hosts[host]
    units: list[dict[str, Any]] = []
    for name, dep in fleet.deployments.items():
        if dep.host != host:
            continue
        script = (_POWERSHELL if h.os == "windows" else _BASH).script
        units.append(
            {
                "name": name,
                "kind": "vllm",
                "runtime": dep.runtime,
                "script": f"{name}/{script}",
                "url": f"http://{h.address}:{dep.port}",
                "served_model_name": dep.public_name(name),
                "max_model_len": dep.max_model_len,
                "settings_sha256": deployment_hash(source, name),
            }
        )
    if fleet.gateway is not None and fleet.gateway.host == host:
        gw = fleet.gateway
        address = h.address if gw.listen in ("0.0.0.0", "::") else gw.listen
        units.append(
            {
                "name": "gateway",
                "kind": "gateway",
                "runtime": "process",
                "script": "gateway/start-gateway.sh",
                "url": f"http://{address}:{gw.port}",
                "settings_sha256": gateway_hash(source),
            }
        )
    return {
        "fleet": fleet.name,
        "fleet_file": source.fleet_file,
        "host": host,
        "os": h.os,
        "workdir": workdir_of(fleet, host),
        "settings_sha256": settings_hash([u["settings_sha256"] for u in units]),
        "units": units,
    }


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
            files[f"gateway/{file}"] = text
    files[MANIFEST] = json.dumps(host_manifest(source, host), indent=2, sort_keys=True) + "\n"
    return dict(sorted(files.items()))
