"""The fleet file never becomes code: one regression test per defect issue 10 found.

Each test here failed on the code before the fix: a hostile value passed ``validate``, reached a
rendered script or unit as syntax, or reached a program as an option.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from fleetgate.deploy import SshTransport, TransportError
from fleetgate.fleetfile import FleetError, parse_fleet

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
