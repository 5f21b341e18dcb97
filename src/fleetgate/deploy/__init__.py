"""Getting rendered releases onto hosts: transports, releases, backups, health gate, rollback."""

from fleetgate.deploy.gate import GateResult, GateTarget, probe, wait_healthy
from fleetgate.deploy.hostops import HostError, HostOps, HostState, Release, host_ops
from fleetgate.deploy.releases import HostDeployer, HostReport, diff_releases, save_backup
from fleetgate.deploy.transport import (
    LocalTransport,
    SshTransport,
    Transport,
    TransportError,
    transport_for,
)

__all__ = [
    "GateResult",
    "GateTarget",
    "HostDeployer",
    "HostError",
    "HostOps",
    "HostReport",
    "HostState",
    "LocalTransport",
    "Release",
    "SshTransport",
    "Transport",
    "TransportError",
    "diff_releases",
    "host_ops",
    "probe",
    "save_backup",
    "transport_for",
    "wait_healthy",
]
