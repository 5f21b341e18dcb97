"""The fleet file never becomes code: one regression test per defect issue 10 found.

Each test here failed on the code before the fix: a hostile value passed ``validate``, reached a
rendered script or unit as syntax, or reached a program as an option.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.support.powershell import as_powershell_reads, parse_errors, verbatim_strings
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.deploy import SshTransport, Transport, TransportError, host_ops
from fleetgate.deploy.hostops import pack
from fleetgate.deploy.transport import Result
from fleetgate.fleetfile import FleetError, parse_fleet
from fleetgate.render import RenderError, Source, render_host, source_of

MINIMAL = """\
    hosts:
      box: {address: box.lan, gpus: [RTX 3090]}
    deployments:
      small: {host: box, model: Qwen/Qwen2.5-0.5B-Instruct, max_model_len: 2048}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(FleetError) as info:
        parse_fleet(textwrap.dedent(text), env={}, strict_env=False)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


# --- the schema refuses what a field cannot mean --------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("address: box.lan", 'address: "-oProxyCommand=touch /tmp/pwned"', "hosts.box.address"),
        ("address: box.lan", 'address: "box.lan; touch x"', "hosts.box.address"),
        ("address: box.lan", "address: box.lan, ssh: {user: -oProxyCommand=x}", "ssh.user"),
        ("address: box.lan", "address: box.lan, ssh: {identity_file: -oX=y}", "identity_file"),
        ("address: box.lan", "address: box.lan, workdir: -rf", "hosts.box.workdir"),
        ("max_model_len: 2048", 'max_model_len: 2048, model: "--trust-remote-code"', "model"),
        ("max_model_len: 2048", 'max_model_len: 2048, image: "a b:1"', "image"),
        ("max_model_len: 2048", 'max_model_len: 2048, env: {"X=1; touch y; Y": v}', "env"),
        ("max_model_len: 2048", "max_model_len: 2048, python: --version", "python"),
        ("max_model_len: 2048", "max_model_len: 2048, python: \"/usr/bin/py'\"", "python"),
        ("max_model_len: 2048", "max_model_len: 2048, python: /", "python"),
        ("max_model_len: 2048", "max_model_len: 2048, python: ':'", "python"),
        ("max_model_len: 2048", "max_model_len: 2048, python: '@python3'", "python"),
        ("max_model_len: 2048", "max_model_len: 2048, python: venv/bin/python", "python"),
    ],
)  # fmt: skip
def test_values_that_are_not_what_their_field_means_are_refused(
    old: str, new: str, path: str
) -> None:
    [problem] = problems(MINIMAL.replace(old, new))
    assert path in problem.split(":")[0]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("address: box.lan", 'address: box.lan, workdir: "/srv\\ntouch x"'),
        ("max_model_len: 2048", 'max_model_len: 2048, image: "vllm/vllm-openai:v1\\ntouch x"'),
        ("max_model_len: 2048", 'max_model_len: 2048, extra_args: ["--seed\\nExecStartPre=x"]'),
        ("max_model_len: 2048", 'max_model_len: 2048, env: {A: "1\\rtouch x"}'),
        ("    hosts:", '    name: "fleet\\nExecStartPre=/bin/touch /tmp/pwned"\n    hosts:'),
        ("    hosts:", '    name: "fleet\\u2028x"\n    hosts:'),
        ("    hosts:", '    name: "fleet\\x85x"\n    hosts:'),
        ("    hosts:", '    name: "tab\\there"\n    hosts:'),
    ],
)
def test_control_characters_are_refused_in_every_string(old: str, new: str) -> None:
    found = problems(MINIMAL.replace(old, new, 1))
    assert any("control character" in p or "not a container image" in p for p in found), found


def test_the_control_character_is_named() -> None:
    [problem] = problems('    name: "a\\nb"\n' + MINIMAL)
    assert problem.startswith("name: control character U+000A (line feed) is not allowed")


@pytest.mark.parametrize(
    "address", ["box.lan", "10.0.0.7", "::1", "fe80::1%eth0", "[fd00::2]", "my_alias", "${NET}.7"]
)
def test_ordinary_addresses_pass(address: str) -> None:
    text = textwrap.dedent(MINIMAL.replace("box.lan", f'"{address}"'))
    assert parse_fleet(text, env={}, strict_env=False).fleet.hosts["box"].address == address


# --- ssh gets `--` before the destination ----------------------------------------------------


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")
def test_a_destination_that_looks_like_an_option_is_a_host_name_to_ssh(tmp_path: Path) -> None:
    """Before: ``ssh ... -oProxyCommand=touch MARK true`` ran the proxy command here."""
    mark = tmp_path / "pwned"
    transport = SshTransport(f"-oProxyCommand=touch {mark}", connect_timeout_s=5)
    with pytest.raises(TransportError):
        transport.exec("true", timeout=30)
    assert not mark.exists()


def test_the_ssh_argv_ends_with_the_separator_destination_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ssh is given, recorded by an ``ssh`` earlier on PATH."""
    record = tmp_path / "argv"
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >{record}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    SshTransport("box.lan", user="ops", port=2222).exec("uptime")
    assert record.read_text().splitlines()[-4:] == ["-T", "--", "ops@box.lan", "uptime"]


# --- rendering quotes every value for its dialect, whatever the schema let through -----------
# These render fleets changed after validation (model_copy does not validate): quoting is the
# second wall, and must hold on its own.

LINUX_DOCKER = """\
    name: hardening
    hosts:
      box: {address: box.lan, ssh: {user: ops}, workdir: /srv/fg, gpus: [RTX 3090]}
      win: {address: win.lan, os: windows, ssh: {user: ops}, workdir: C:/fg, gpus: [RTX 3090]}
      cpu: {address: 127.0.0.1, transport: local, workdir: /srv/fg, gpus: [RTX 3090]}
    deployments:
      d: {host: box, model: Qwen/Qwen2.5-0.5B-Instruct, max_model_len: 2048}
      w: {host: win, model: Qwen/Qwen2.5-0.5B-Instruct, max_model_len: 2048}
      p:
        host: cpu
        model: Qwen/Qwen2.5-0.5B-Instruct
        max_model_len: 2048
        runtime: process
        python: /bin/true
    gateway: {host: box, port: 4000}
"""


def source_with(changes: dict[tuple[str, ...], object]) -> Source:
    """The fleet above with values set after validation, at dotted paths into the models."""
    loaded = parse_fleet(textwrap.dedent(LINUX_DOCKER), env={}, strict_env=False)
    fleet = loaded.fleet
    for path, value in changes.items():
        fleet = _set(fleet, path, value)
    return Source(fleet=fleet, raw=loaded.raw, fleet_file="fleet.yaml")


def _set(model: Any, path: tuple[str, ...], value: object) -> Any:
    head, *rest = path
    if isinstance(model, dict):
        return {**model, head: _set(model[head], tuple(rest), value) if rest else value}
    child = getattr(model, head)
    return model.model_copy(update={head: _set(child, tuple(rest), value) if rest else value})


def files_of(source: Source) -> dict[str, str]:
    return {f"{h}/{p}": t for h in ("box", "win", "cpu") for p, t in render_host(source, h).items()}


def bash_ok(text: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``bash -n`` passes; then the script runs with ``args`` in an empty scratch directory."""
    script = tmp_path / "script.sh"
    script.write_text(text)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=scratch,
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(scratch)},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("path", "files"),
    [
        (("deployments", "d", "image"), ["box/d/start-vllm.sh"]),
        (("deployments", "w", "image"), ["win/w/Start-VLLM.ps1"]),
        (("hosts", "box", "workdir"), ["box/d/start-vllm.sh", "box/gateway/start-gateway.sh"]),
        (("hosts", "win", "workdir"), ["win/w/Start-VLLM.ps1"]),
        (("hosts", "cpu", "workdir"), ["cpu/p/start-vllm.sh"]),
    ],
)
def test_a_newline_stays_inside_its_comment(
    path: tuple[str, ...], files: list[str], tmp_path: Path
) -> None:
    """Before: ``# Runs ... (IMAGE)`` ended at the newline and the next line ran."""
    mark = tmp_path / "pwned"
    payload = f"vllm/vllm-openai:v1\ntouch {mark}\n#"
    rendered = files_of(source_with({path: payload}))
    for name in files:
        text = rendered[name]
        if name.endswith(".ps1"):
            assert parse_errors(text) == [], name
            assert payload in verbatim_strings(text), name  # a value, not a command
        else:
            ran = bash_ok(text, tmp_path)  # the usage path: no argument
            assert ran.returncode == 2 and "usage:" in ran.stderr, ran.stderr
            assert not mark.exists(), name


def test_env_keys_are_quoted_in_the_process_script(tmp_path: Path) -> None:
    """Before: ``export X=1; touch MARK; Y=v`` ran touch."""
    mark = tmp_path / "pwned"
    source = source_with({("deployments", "p", "env"): {f"X=1; touch {mark}; Y": "v"}})
    text = render_host(source, "cpu")["p/start-vllm.sh"]
    ran = bash_ok(text, tmp_path, "run")  # python is /bin/true: run exports, then exits
    assert ran.returncode == 0, ran.stderr
    assert not mark.exists()


def test_a_newline_in_the_fleet_name_adds_no_systemd_directive() -> None:
    """Before: ``Description=... for fleet f`` + a line ``ExecStartPre=...`` of its own."""
    source = source_with({("name",): "f\nExecStartPre=/bin/touch /tmp/pwned\nX=%h"})
    unit = render_host(source, "box")["gateway/fleetgate-gateway.service"]
    assert not any(line.startswith("ExecStartPre") for line in unit.splitlines())
    [description] = [line for line in unit.splitlines() if line.startswith("Description=")]
    assert description.endswith("f\\u000aExecStartPre=/bin/touch /tmp/pwned\\u000aX=%%h")


def test_a_newline_in_extra_args_keeps_exec_start_one_line() -> None:
    source = source_with(
        {("deployments", "p", "extra_args"): ["--seed\nExecStartPre=/bin/touch /tmp/x", "5%"]}
    )
    unit = render_host(source, "cpu")["p/vllm.service"]
    lines = unit.splitlines()
    assert not any(line.startswith("ExecStartPre") for line in lines)
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.endswith(' "--seed\\x0aExecStartPre=/bin/touch /tmp/x" 5%%')


@pytest.mark.parametrize("quote", ["\u2018", "\u2019", "\u201a", "\u201b", "'"])
def test_powershell_curly_single_quotes_are_doubled(quote: str) -> None:
    """Before: ``extra_args: ["‘; Start-Process calc; ‘"]`` ended its string at the ‘."""
    hostile = f"{quote}; Start-Process calc; {quote}"
    source = source_with({("deployments", "w", "extra_args"): [hostile]})
    text = render_host(source, "win")["w/Start-VLLM.ps1"]
    assert parse_errors(text) == []
    assert as_powershell_reads(hostile) in verbatim_strings(text)


WINDOWS_WORKDIR = 'C:/x" & calc.exe & "\u2018; calc; \u2019 $(calc) `n'


class AnsweringTransport(Transport):
    """Keeps each command line instead of running it; answers ``pack`` with a release."""

    name = "ssh recording"

    def __init__(self) -> None:
        self.commands: list[str] = []

    def exec(self, command: str, *, stdin: bytes | None = None, timeout: float = 120) -> Result:
        self.commands.append(command)
        return Result(0, base64.b64encode(pack({"a.txt": b"x"})), b"")


def test_windows_host_operations_send_nothing_to_cmd_exe() -> None:
    """Before: fetch and upload sent ``tar -C "WORKDIR/..."`` for cmd.exe to run."""
    transport = AnsweringTransport()
    ops = host_ops(transport, "windows", WINDOWS_WORKDIR)
    assert ops.fetch("r1") == {"a.txt": b"x"}
    ops.upload("r1", {"a.txt": b"x"})
    ops.state()
    ops.activate("r1")
    ops.mark_failed("r1", WINDOWS_WORKDIR)
    ops.unit("r1", "Start-VLLM.ps1", "logs", "-Lines", WINDOWS_WORKDIR)
    assert len(transport.commands) == 6
    for command in transport.commands:
        # base64 and fixed words only: nothing cmd.exe would read as syntax
        assert re.fullmatch(r"powershell [A-Za-z -]+ -EncodedCommand [A-Za-z0-9+/=]+", command)
        script = base64.b64decode(command.rsplit(" ", 1)[1]).decode("utf-16-le")
        assert parse_errors(script) == []
        assert as_powershell_reads(WINDOWS_WORKDIR) in verbatim_strings(script)


# --- render and deploy refuse what validate rejects ------------------------------------------

TOO_BIG = """\
version: 1
hosts:
  box: {address: 127.0.0.1, transport: local, gpus: [{memory_gib: 2, arch: ampere}]}
deployments:
  big: {host: box, model: Qwen/Qwen2.5-7B-Instruct-AWQ, max_model_len: 8192}
"""


@pytest.mark.parametrize("command", [["render", "--out", "OUT"], ["deploy", "--dry-run"]])
def test_a_fleet_validate_rejects_is_neither_rendered_nor_deployed(
    command: list[str], tmp_path: Path
) -> None:
    """Before: ``validate`` said the deployment does not fit, ``render`` wrote its files."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(TOO_BIG)
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(fleet)]).exit_code == 1
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else a for a in command]
    result = runner.invoke(app, [args[0], str(fleet), *args[1:]])
    assert result.exit_code == 1, result.output
    assert "deployments.big.max_model_len: does not fit" in result.output
    assert not out.exists()


def test_render_refuses_a_reference_the_host_would_expand_unchecked(tmp_path: Path) -> None:
    """``workdir: ${WD}`` with WD=-rf: validate refuses the value, so render must not leave
    ``"${WD}"`` in a script for the host to expand."""
    text = MINIMAL.replace("address: box.lan", "address: box.lan, workdir: '${WD}'")
    with pytest.raises(FleetError):
        parse_fleet(textwrap.dedent(text), env={"WD": "-rf"})
    loaded = parse_fleet(textwrap.dedent(text), env={}, strict_env=False)
    with pytest.raises(RenderError, match=r"hosts\.box\.workdir"):
        source_of(loaded)


def test_secrets_may_stay_references(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.indent(
        textwrap.dedent(
            """\
            gateway:
              host: box
              admin_key: ${ADMIN}
              metrics_key: ${METRICS}
              redis_url: redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0
              api_keys: [{name: owner, key: "${KEY}"}]
            """
        ),
        "    ",
    )
    text = text.replace(
        "max_model_len: 2048}", 'max_model_len: 2048, env: {HF_TOKEN: "${HF_TOKEN}"}}'
    )
    source = source_of(parse_fleet(textwrap.dedent(text), env={}, strict_env=False))
    assert "${METRICS}" in render_host(source, "box")["gateway/fleet.yaml"]
