"""The gateway's files on its host: its config (the fleet file itself), script and unit."""

from __future__ import annotations

from fleetgate.render.quoting import bash
from fleetgate.render.scripts import (
    STOP_TIMEOUT_S,
    template,
    unit_workdir,
    workdir_of,
    yaml_text,
)
from fleetgate.render.source import Source, gateway_hash, header, header_lines

DEFAULT_FLEETGATE_BIN = "/usr/local/bin/fleetgate"  # where systemd units expect fleetgate
GATEWAY_DIR = "gateway"  # the gateway's directory inside a release
GATEWAY_SCRIPT = "start-gateway.sh"
# The gateway's config, beside the script that starts it (bash written here, not a value).
_CONFIG_HERE = bash.Code('"$(cd "$(dirname "$SELF")" && pwd -P)/fleet.yaml"')


def gateway_files(source: Source) -> dict[str, str]:
    """The gateway's config (the fleet file itself, references intact) and how to run it."""
    fleet = source.fleet
    assert fleet.gateway is not None
    gw = fleet.gateway
    host = fleet.hosts[gw.host]
    digest = gateway_hash(source)
    head = header_lines(source, "gateway", digest)
    workdir = workdir_of(fleet, gw.host)
    options = ["--host", gw.listen, "--port", str(gw.port)]
    fleetgate_bin = host.fleetgate_bin or "fleetgate"  # the script: the ssh PATH's by default
    script = template(
        "process.sh.j2",
        header=head,
        what="the fleetgate gateway",
        script=GATEWAY_SCRIPT,
        name="gateway",
        state_dir=workdir,
        env=[],
        argv=[
            [bash.Code(bash.fallback("FLEETGATE_BIN", fleetgate_bin))],
            ["serve"],
            [_CONFIG_HERE],
            *([option] for option in options),
        ],
        stop_timeout_s=max(STOP_TIMEOUT_S, gw.stop_timeout_s),
    )
    unit_dir, paths_note = unit_workdir(host)
    unit_bin = host.fleetgate_bin or DEFAULT_FLEETGATE_BIN
    bin_note = (
        f"Runs fleetgate from {unit_bin}"
        + ("" if host.fleetgate_bin else " (set `fleetgate_bin:` for this host to change it)")
        + "."
    )
    unit = template(
        "gateway.service.j2",
        header=[*head, *paths_note, bin_note],
        fleet=fleet.name,
        user=host.ssh.user,
        env_file=unit_dir + "/env",
        stop_timeout_s=gw.stop_timeout_s,
        exec_start=[unit_bin, "serve", f"{unit_dir}/current/{GATEWAY_DIR}/fleet.yaml", *options],
    )
    return {
        "fleet.yaml": header(source, "gateway", digest) + "\n" + yaml_text(source.raw),
        GATEWAY_SCRIPT: script,
        "fleetgate-gateway.service": unit,
    }
