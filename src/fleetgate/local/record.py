"""Where a running ``fleetgate up`` is, so the commands given the same fleet file find it.

``up`` writes one small JSON file per fleet file (its URL, its keys, its backends' ports, its
pid) into a per-user directory, readable by its owner only (the keys are secrets), and removes
it when it stops. ``smoke``, ``burst``, ``health``, ``check`` and ``top`` read it: given the
fleet file of a running ``up`` they aim at the local fleet, not at the file's real hosts. A
file whose pid is gone (``up`` was killed) is stale: it is ignored and removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetgate.fleetfile import Fleet
from fleetgate.local.localize import localize
from fleetgate.local.up import RunningFleet


@dataclass(frozen=True)
class UpRecord:
    """A running ``fleetgate up``: which fleet file, where its gateway and backends listen."""

    fleet_file: str  # absolute
    pid: int
    url: str
    api_key: str | None
    gateway_port: int
    ports: dict[str, int]  # deployment -> its loopback port
    admin_key: str | None = None  # for `fleetgate top`, when the fleet has one

    def localized(self, fleet: Fleet) -> Fleet:
        """``fleet`` as this ``up`` runs it: loopback hosts, its ports (keys: use ``api_key``)."""
        return localize(fleet, gateway_port=self.gateway_port, ports=self.ports).fleet


def state_dir() -> Path:
    """Per user: ``$XDG_RUNTIME_DIR/fleetgate`` (private, cleared at logout) when there is
    one, else ``$XDG_STATE_HOME/fleetgate`` (default ``~/.local/state/fleetgate``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "fleetgate"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fleetgate"


def record_path(fleet_file: Path) -> Path:
    """One file per fleet file, named by its absolute path (any spelling of it finds it)."""
    digest = hashlib.sha256(str(fleet_file.resolve()).encode()).hexdigest()[:16]
    return state_dir() / f"up-{digest}.json"


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there (and `up` is POSIX only)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid
        return False
    return True


def _parse(data: Any) -> UpRecord | None:
    if not isinstance(data, dict):
        return None
    try:
        record = UpRecord(
            fleet_file=str(data["fleet_file"]),
            pid=int(data["pid"]),
            url=str(data["url"]),
            api_key=None if data["api_key"] is None else str(data["api_key"]),
            gateway_port=int(data["gateway_port"]),
            ports={str(k): int(v) for k, v in dict(data["ports"]).items()},
            admin_key=None if data.get("admin_key") is None else str(data["admin_key"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return record


def find_running(fleet_file: Path) -> UpRecord | None:
    """The ``up`` running ``fleet_file`` now, or None (no record, a stale or unreadable one)."""
    path = record_path(fleet_file)
    try:
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
            return None
        record = _parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    if record is None or record.fleet_file != str(fleet_file.resolve()):
        return None
    if not _alive(record.pid):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return record


@contextlib.contextmanager
def recorded(fleet_file: Path, running: RunningFleet) -> Iterator[UpRecord]:
    """Record ``running`` as the local fleet of ``fleet_file`` until the block ends (however it
    ends: Ctrl-C and SIGTERM included); the file is created 0600 in a 0700 directory."""
    record = UpRecord(
        fleet_file=str(fleet_file.resolve()),
        pid=os.getpid(),
        url=running.gateway_url,
        api_key=running.api_key,
        gateway_port=running.local.gateway_port,
        ports=dict(running.local.ports),
        admin_key=running.fleet.gateway.admin_key if running.fleet.gateway else None,
    )
    path = record_path(fleet_file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{record.pid}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(record), out)
    os.replace(tmp, path)
    try:
        yield record
    finally:
        # only our own record: a later `up` of the same file may have replaced it
        with contextlib.suppress(OSError, ValueError):
            if _parse(json.loads(path.read_text(encoding="utf-8"))) == record:
                path.unlink()
