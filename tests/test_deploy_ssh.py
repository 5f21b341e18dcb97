"""The ssh transport against a real OpenSSH server that the test starts on a loopback port.

The test makes the server's host key, a user key and a known_hosts file; deploys go through the
system ``ssh`` client with BatchMode and strict host key checking. A wrong known_hosts entry
must stop the deploy before anything is touched.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.test_deploy import free_port, served_len, stand_in_python, write_fleet
from typer.testing import CliRunner

from fleetgate.cli.app import app

pytestmark = pytest.mark.ssh
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    config: Path  # an ssh_config for ``ssh -F`` (identity, known_hosts)
    host_public_key: str


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server/client not installed (.ci/run installs openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
    )
    host_public = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    server = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sshd exited: {server.stdout.read().decode() if server.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield SshServer(port, d / "ssh_config", " ".join(host_public[:2]))
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_deploy_and_rollback_over_ssh(tmp_path: Path, sshd: SshServer) -> None:
    python = stand_in_python(tmp_path)
    port = free_port()
    workdir = tmp_path / "remote"
    host = {
        "address": "127.0.0.1",
        "transport": "ssh",
        "ssh": {"user": getpass.getuser(), "port": sshd.port},
        "workdir": str(workdir),
    }
    fleet = tmp_path / "fleet.yaml"
    runner = CliRunner()
    opts = ["--ssh-config", str(sshd.config), "--backups", str(tmp_path / "backups")]
    try:
        write_fleet(fleet, host=host, python=python, port=port, max_model_len=1024, kv_tokens=2048)
        first = runner.invoke(app, ["deploy", str(fleet), *opts, "--gate-timeout", "60"])
        assert first.exit_code == 0, first.output
        assert served_len(port) == 1024
        assert (workdir / "current").is_symlink()
        # the stand-in's start-up lines, read and recorded over ssh beside the plan's figure
        # (deploy plans every deployment first: validate's checks)
        meta = json.loads((workdir / "current" / "release.json").read_text())
        assert meta["kv_cache"]["tiny"]["reported_tokens"] == 2048
        assert meta["kv_cache"]["tiny"]["planned_tokens"] > 0

        write_fleet(fleet, host=host, python=python, port=port, max_model_len=4096, kv_tokens=2048)
        bad = runner.invoke(app, ["deploy", str(fleet), *opts, "--gate-timeout", "60"])
        assert bad.exit_code == 1, bad.output
        assert "estimated maximum model length is 2048" in bad.output
        assert "healthy again" in bad.output
        assert served_len(port) == 1024
        (backup,) = (tmp_path / "backups" / "box").iterdir()
        assert "--max-model-len 1024" in (backup / "tiny" / "start-vllm.sh").read_text()

        listing = runner.invoke(
            app, ["releases", str(fleet), "box", "--ssh-config", str(sshd.config)]
        )
        assert listing.exit_code == 0, listing.output
        assert "failed" in listing.output
    finally:
        for script in workdir.glob("releases/*/tiny/start-vllm.sh"):
            subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=60)


def test_unknown_host_key_is_refused(tmp_path: Path, sshd: SshServer) -> None:
    config = tmp_path / "ssh_config"
    known = tmp_path / "known_hosts"
    _keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")  # a different key
    config.write_text(
        sshd.config.read_text().replace(str(sshd.config.parent / "known_hosts"), str(known))
    )
    host = {
        "address": "127.0.0.1",
        "transport": "ssh",
        "ssh": {"user": getpass.getuser(), "port": sshd.port},
        "workdir": str(tmp_path / "remote"),
    }
    fleet = write_fleet(
        tmp_path / "fleet.yaml",
        host=host,
        python=Path("/bin/false"),
        port=free_port(),
        max_model_len=16,
        kv_tokens=16,
    )
    result = CliRunner().invoke(app, ["deploy", str(fleet), "--ssh-config", str(config)])
    assert result.exit_code == 1
    assert "host key" in result.output.lower()
    assert not (tmp_path / "remote").exists()
