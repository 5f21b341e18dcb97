"""Launch scripts and units: the shared machinery, and each vLLM deployment's files.

Every value from the fleet file reaches a script through the quoting of that script's dialect
(``fleetgate.render.quoting``), applied by the templates' filters: the renderers hand the
templates raw values, and each ``{{ ... }}`` of a template ends in its dialect's filter
(``tests/test_render_hostile.py`` checks that no template prints a value unquoted).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import jinja2
import yaml

from fleetgate.fleetfile import Fleet, Host, has_env_refs
from fleetgate.render.quoting import bash, compose, powershell, systemd
from fleetgate.render.source import Source, deployment_hash, header, header_lines
from fleetgate.render.vllm import CONTAINER_MODEL_DIR, VllmCommand, vllm_command

DEFAULT_WORKDIR = "~/fleetgate"
STOP_TIMEOUT_S = 30

# Each template's filters, by dialect: the only way a template prints a value.
FILTERS: dict[str, Callable[..., str]] = {
    "sh": bash.word,
    "sh_literal": bash.literal,
    "sh_path": bash.path,
    "sh_words": bash.words,
    "sh_comment": bash.comment,
    "ps": powershell.word,
    "ps_path": powershell.path,
    "ps_items": powershell.items,
    "ps_comment": powershell.comment,
    "unit_exec": systemd.exec_line,
    "unit_env": lambda pair: systemd.assignment(*pair),
    "unit_value": systemd.value,
    "unit_path": systemd.path,
    "unit_comment": systemd.comment,
}


@cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fleetgate.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def template(template: str, **context: Any) -> str:
    """One of the package's Jinja templates, rendered strictly (a missing value is an error)."""
    return _templates().get_template(template).render(**context)


def yaml_text(data: object) -> str:
    """YAML in the order given, block style: how every rendered YAML file is written."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def workdir_of(fleet: Fleet, host: str) -> str:
    """Where releases live on a host (``~/`` is the ssh user's home)."""
    return fleet.hosts[host].workdir or DEFAULT_WORKDIR


def unit_workdir(host: Host) -> tuple[str, list[str]]:
    """The workdir as an absolute path for a system unit, and header lines saying where from.

    A system unit's ``%h`` is the service manager's home (/root) even with ``User=``, so ``~`` is
    resolved here: to the ssh user's conventional home (the unit runs as that user, or as root
    when the fleet file names no user).
    """
    workdir = host.workdir or DEFAULT_WORKDIR
    if workdir.startswith("/"):
        return workdir, [f"Paths are under the host's workdir {workdir} (from the fleet file)."]
    user = host.ssh.user
    home = "/root" if user in (None, "root") else f"/home/{user}"
    relative = workdir[1:].lstrip("/") if workdir.startswith("~") else workdir
    path = str(PurePosixPath(home, relative))
    who = f"ssh user {user}" if user else "root (no ssh user is named: the unit runs as root)"
    return path, [
        f"Paths assume {home} as the home of {who};",
        "an absolute `workdir:` for this host in the fleet file overrides it.",
    ]


def _paired(args: list[str]) -> list[list[str]]:
    """One line per flag with its value, for readable scripts."""
    lines: list[list[str]] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            lines.append([word, args[i + 1]])
            i += 2
        else:
            lines.append([word])
            i += 1
    return lines


# A deployment's launch script per OS: (template, file name).
_BASH = ("docker.sh.j2", "start-vllm.sh")
_POWERSHELL = ("docker.ps1.j2", "Start-VLLM.ps1")


def launch_script(os: str) -> str:
    """The file name of a deployment's launch script on a host of this OS."""
    return (_POWERSHELL if os == "windows" else _BASH)[1]


def vllm_files(source: Source, name: str) -> dict[str, str]:
    """The launch artifacts of one deployment, keyed by file name."""
    fleet = source.fleet
    dep = fleet.deployments[name]
    host = fleet.hosts[dep.host]
    command = vllm_command(fleet, name)
    digest = deployment_hash(source, name)
    head = header_lines(source, f"deployment {name}", digest)
    workdir = workdir_of(fleet, dep.host)
    files = {
        "vllm-args.txt": header(source, f"deployment {name}", digest)
        + "\n"
        + "\n".join(command.serve_args())
        + "\n",
    }
    if dep.runtime == "process":
        python = dep.python or "python3"
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", *command.api_server_args()]
        files[_BASH[1]] = template(
            "process.sh.j2",
            header=head,
            what=f"vLLM deployment {name}",
            script=_BASH[1],
            name=f"vllm-{name}",
            state_dir=workdir,
            env=list(command.env),
            argv=_paired(argv),
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        literal_env = [(k, v) for k, v in command.env if not has_env_refs(v)]
        unit_dir, paths_note = unit_workdir(host)
        files["vllm.service"] = template(
            "vllm.service.j2",
            header=head + paths_note,
            name=name,
            served=dep.public_name(name),
            user=host.ssh.user,
            env_file=unit_dir + "/env",
            environment=literal_env,
            exec_start=argv,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        return files

    hf_cache = dep.hf_cache or "~/.cache/huggingface"
    mount = f"{dep.model_path}:{CONTAINER_MODEL_DIR}/{name}:ro" if dep.model_path else None
    docker_options = [("-e", f"{k}={v}") for k, v in command.env]
    if mount:
        docker_options.append(("-v", mount))
    for template_name, script in (_BASH, _POWERSHELL):
        files[script] = template(
            template_name,
            header=head,
            script=script,
            name=name,
            container=f"fleetgate-{name}",
            image=dep.image,
            state_dir=workdir,
            hf_cache=hf_cache,
            port=dep.port,
            args=_paired(command.serve_args()),
            docker_options=docker_options,
        )
    files["compose.yaml"] = (
        header(source, f"deployment {name}", digest)
        + "\n"
        + _compose(name, dep.image, command, hf_cache, mount)
    )
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
        "volumes": [compose.word(v) for v in volumes],
        "environment": ["HF_TOKEN", *(compose.word(f"{k}={v}") for k, v in command.env)],
        "command": [compose.word(a) for a in command.serve_args()],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
                }
            }
        },
    }
    return yaml_text({"services": {f"vllm-{name}": service}})
