"""Operations on a host's release tree, the same verbs for Linux (bash) and Windows (PowerShell).

A release is a directory ``releases/NAME`` holding every rendered file and ``release.json``.
It is unpacked under a temporary name and renamed into place, and the pointer to the release in
service is replaced by a rename, so a deploy killed at any point leaves a whole release current.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fleetgate.deploy.transport import Result, Transport, TransportError
from fleetgate.errors import FleetgateError
from fleetgate.kvcache import Drift
from fleetgate.render.quoting import bash, powershell

RELEASE_META = "release.json"


class HostError(FleetgateError):
    """An operation on the host failed; the message carries what the host said."""


@dataclass(frozen=True)
class Release:
    name: str
    failed: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_cache(self) -> dict[str, Drift]:
        """Each server's planned and reported KV tokens, as its deploy recorded them."""
        recorded = self.meta.get("kv_cache")
        if not isinstance(recorded, dict):
            return {}
        entries = {name: Drift.from_json(entry) for name, entry in recorded.items()}
        return {name: d for name, d in entries.items() if d is not None}


@dataclass(frozen=True)
class HostState:
    current: str | None
    releases: list[Release]

    def release(self, name: str) -> Release | None:
        return next((r for r in self.releases if r.name == name), None)

    def previous(self) -> Release | None:
        """The newest good release older than the current one (or the newest, if none is)."""
        good = [r for r in self.releases if not r.failed and r.name != self.current]
        if self.current is not None:
            good = [r for r in good if r.name < self.current]
        return max(good, key=lambda r: r.name, default=None)


def pack(files: dict[str, bytes]) -> bytes:
    """A tar archive of files (sorted, fixed metadata) for the host to unpack."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if path.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(archive: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name.removeprefix("./")] = handle.read()
    return out


def _parse_state(text: str) -> HostState:
    current: str | None = None
    releases = []
    for line in text.splitlines():
        if line.startswith("current "):
            current = line.removeprefix("current ").strip() or None
        elif line.startswith("release "):
            _, name, status, *rest = line.split(" ", 3)
            try:
                meta = json.loads(rest[0]) if rest else {}
            except json.JSONDecodeError:
                meta = {}
            releases.append(Release(name, status == "failed", meta))
    return HostState(current, sorted(releases, key=lambda r: r.name))


class HostOps:
    """The release tree of one host, reached through a transport."""

    def __init__(self, transport: Transport, os: str, workdir: str) -> None:
        self.transport = transport
        self.os = os
        self.workdir = workdir

    def _op(self, op: str, *args: str, stdin: bytes | None = None, timeout: float = 120) -> Result:
        raise NotImplementedError

    def _check(self, result: Result, what: str) -> Result:
        if result.rc != 0:
            raise HostError(f"{what} failed on {self.transport.name}: {result.error}")
        return result

    def state(self) -> HostState:
        return _parse_state(self._check(self._op("state"), "reading releases").text)

    def fetch(self, release: str) -> dict[str, bytes]:
        raise NotImplementedError

    def upload(self, release: str, files: dict[str, bytes]) -> None:
        raise NotImplementedError

    def activate(self, release: str) -> None:
        self._check(self._op("activate", release), f"switching to release {release}")

    def mark_failed(self, release: str, reason: str) -> None:
        self._check(self._op("mark-failed", release, reason), "marking a failed release")

    def write_meta(self, release: str, meta: dict[str, Any]) -> None:
        """Replace a release's release.json (written beside it, then renamed over it)."""
        text = json.dumps(meta, sort_keys=True)
        self._check(self._op("write-meta", release, text), f"recording release {release}")

    def unit(
        self, release: str, script: str, action: str, *args: str, timeout: float = 180
    ) -> Result:
        """Run a unit's launch script action (start, stop, status, logs) from a release."""
        return self._op("unit", release, script, action, *args, timeout=timeout)


class LinuxOps(HostOps):
    def _op(self, op: str, *args: str, stdin: bytes | None = None, timeout: float = 120) -> Result:
        script = resources.files("fleetgate.deploy").joinpath("host.sh").read_text()
        words = ["bash", "-c", script, "fleetgate-host", op, self.workdir, *args]
        command = " ".join(bash.literal(w) for w in words)
        return self.transport.exec(command, stdin=stdin, timeout=timeout)

    def fetch(self, release: str) -> dict[str, bytes]:
        result = self._check(self._op("pack", release, timeout=300), f"reading release {release}")
        return unpack(result.stdout)

    def upload(self, release: str, files: dict[str, bytes]) -> None:
        self._check(
            self._op("unpack", release, stdin=pack(files), timeout=300),
            f"uploading release {release}",
        )


class WindowsOps(HostOps):
    """PowerShell over ssh, and nothing else: every operation is one ``powershell
    -EncodedCommand`` (base64, which the ssh server's cmd.exe passes on untouched), its values
    set first as verbatim PowerShell strings. Releases travel as base64 text of a tar archive
    that Windows' own ``tar.exe`` writes or reads, started by PowerShell, never by cmd.exe.

    Written to the same contract as :class:`LinuxOps` but not run here (no Windows host): the
    tests check what it sends (tests/test_hardening.py).
    """

    def _op(self, op: str, *args: str, stdin: bytes | None = None, timeout: float = 120) -> Result:
        return self.transport.exec(self.command(op, *args), stdin=stdin, timeout=timeout)

    def command(self, op: str, *args: str) -> str:
        """The command line sent for ``op``: PowerShell's, with the script base64-encoded."""
        body = resources.files("fleetgate.deploy").joinpath("host.ps1").read_text()
        prelude = (
            f"$Op = {powershell.literal(op)}\n$Workdir = {powershell.literal(self.workdir)}\n"
            f"$Rest = @({', '.join(powershell.literal(a) for a in args)})\n"
        )
        encoded = base64.b64encode((prelude + body).encode("utf-16-le")).decode()
        return (
            "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass "
            f"-EncodedCommand {encoded}"
        )

    def fetch(self, release: str) -> dict[str, bytes]:
        result = self._check(self._op("pack", release, timeout=300), f"reading release {release}")
        return unpack(base64.b64decode(result.stdout))

    def upload(self, release: str, files: dict[str, bytes]) -> None:
        self._check(
            self._op("unpack", release, stdin=base64.b64encode(pack(files)), timeout=300),
            f"uploading release {release}",
        )


def host_ops(transport: Transport, os: str, workdir: str) -> HostOps:
    if os == "windows":
        if transport.name == "local":
            raise TransportError("a Windows host is driven over ssh (transport: ssh)")
        return WindowsOps(transport, os, workdir)
    return LinuxOps(transport, os, workdir)
