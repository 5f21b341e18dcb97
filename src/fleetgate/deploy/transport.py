"""How commands reach a host: this machine, or the system's OpenSSH client.

Using ``ssh`` itself (not a Python ssh library) means the user's ``~/.ssh/config``, agent and
known_hosts apply. Host keys are always checked and nothing ever prompts.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Host


class TransportError(FleetgateError):
    """The host could not be reached at all (as opposed to a command failing there)."""


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error(self) -> str:
        return (self.stderr or self.stdout).decode(errors="replace").strip()


class Transport:
    """Runs one command line in the host's default shell."""

    name: str = "transport"

    def exec(self, command: str, *, stdin: bytes | None = None, timeout: float = 120) -> Result:
        raise NotImplementedError

    def _run(self, argv: list[str], stdin: bytes | None, timeout: float) -> Result:
        try:
            proc = subprocess.run(
                argv,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{self.name}: no answer within {timeout:g} s") from exc
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot run {argv[0]}: {exc.strerror}") from exc
        return Result(proc.returncode, proc.stdout, proc.stderr)


class LocalTransport(Transport):
    """The host is this machine."""

    name = "local"

    def exec(self, command: str, *, stdin: bytes | None = None, timeout: float = 120) -> Result:
        return self._run(["bash", "-c", command], stdin, timeout)


class SshTransport(Transport):
    """``ssh`` with BatchMode and StrictHostKeyChecking: an unknown host key is an error."""

    def __init__(
        self,
        address: str,
        *,
        user: str | None = None,
        port: int = 22,
        identity_file: str | None = None,
        config_file: Path | None = None,
        connect_timeout_s: int = 15,
    ) -> None:
        self.destination = f"{user}@{address}" if user else address
        self.name = f"ssh {self.destination}"
        self.options = [
            *(["-F", str(config_file)] if config_file else []),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={connect_timeout_s}",
            "-p",
            str(port),
            *(["-i", identity_file] if identity_file else []),
            "-T",
        ]

    def exec(self, command: str, *, stdin: bytes | None = None, timeout: float = 120) -> Result:
        # `--`: a destination that starts with `-` is a host name to ssh, never an option
        argv = ["ssh", *self.options, "--", self.destination, command]
        result = self._run(argv, stdin, timeout)
        if result.rc == 255:  # ssh's own failure: connection, authentication, host key
            raise TransportError(f"{self.name}: {result.error}")
        return result


def transport_for(host: Host, *, ssh_config: Path | None = None) -> Transport:
    if host.transport == "local":
        return LocalTransport()
    return SshTransport(
        host.address,
        user=host.ssh.user,
        port=host.ssh.port,
        identity_file=host.ssh.identity_file,
        config_file=ssh_config,
    )
