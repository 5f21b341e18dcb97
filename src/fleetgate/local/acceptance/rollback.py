"""Criterion 4: a broken change is rolled back by itself, and the previous behaviour is back.

The whole fleet (every deployment, route, profile and alias) is deployed through the deploy
layer onto one local host, with the simulator standing in for vLLM behind the rendered process
scripts. Then the burst route's first deployment is given a max_model_len its KV cache cannot
hold: it fails its health gate, the deploy rolls back by itself, and over HTTP the previous
max_model_len and limits are back on every route.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fleetgate.deploy import HostDeployer, HostReport, LocalTransport, host_ops
from fleetgate.fleetfile import (
    ApiKey,
    Deployment,
    Fleet,
    Gateway,
    Host,
    LoadedFleet,
    load_fleet,
    public_models,
)
from fleetgate.fleetfile.schema import HealthCheck
from fleetgate.local.acceptance.burst import burst_model
from fleetgate.local.acceptance.report import Criterion, Step
from fleetgate.local.localize import free_port
from fleetgate.local.simconfig import sim_config_for
from fleetgate.local.vllm_shim import KV_ENV, SPEED_ENV
from fleetgate.probes import ApiClient, Target, run_smoke, target_from_fleet
from fleetgate.render import render_host, source_of

HOST = "node"  # the one local host the whole fleet is deployed onto
TITLE = "rollback restores the previous behaviour"
# the simulator answers within seconds; this bounds a good release that never comes up
GATE_TIMEOUT_S = 120.0


def rollback_fleet(fleet: Fleet, workdir: Path, python: str, *, speed: float = 10.0) -> Fleet:
    """The whole fleet on one local host: every deployment run by the simulator (at ``speed``,
    with its planned KV capacity) behind the rendered process scripts, and the gateway beside
    them with every route, profile and alias."""
    assert fleet.gateway is not None
    deployments = {}
    for name, dep in fleet.deployments.items():
        sim = sim_config_for(fleet, name, speed=speed)
        kv_tokens = sim.kv_cache_tokens or sim.max_num_seqs * sim.max_model_len
        deployments[name] = Deployment(
            host=HOST,
            port=free_port(),
            model=dep.model,
            served_model_name=dep.public_name(name),
            max_model_len=sim.max_model_len,
            max_num_seqs=sim.max_num_seqs,
            runtime="process",
            python=python,
            env={KV_ENV: str(kv_tokens), SPEED_ENV: f"{speed:g}"},
        )
    gpus = [g for h in fleet.hosts.values() for g in h.gpus][:1]
    return Fleet(
        name=f"{fleet.name}-rollback-check",
        hosts={
            HOST: Host(
                address="127.0.0.1", transport="local", os="linux", workdir=str(workdir), gpus=gpus
            )
        },
        deployments=deployments,
        gateway=Gateway(
            host=HOST,
            listen="127.0.0.1",
            port=free_port(),
            api_keys=[ApiKey(name="check", key="${FLEETGATE_API_KEY}")],
            health=HealthCheck(interval_s=1.0, timeout_s=1.0, unhealthy_after=1),
            defaults=fleet.gateway.defaults,
            routes=dict(fleet.gateway.routes),
            aliases=dict(fleet.gateway.aliases),
        ),
    )


def broken_change(fleet: Fleet, deployment: str) -> Fleet:
    """Raise one deployment's context past what its KV cache holds, and the input limit of
    the routes on it with it: vLLM (here its stand-in) refuses to start."""
    assert fleet.gateway is not None
    dep = fleet.deployments[deployment]
    too_long = int(dep.env[KV_ENV]) + 1024
    routes = {
        name: route.model_copy(
            update={"max_input_tokens": too_long - (route.max_output_tokens or 1024)}
        )
        if deployment in route.deployments
        else route
        for name, route in fleet.gateway.routes.items()
    }
    broken = fleet.model_copy(
        update={
            "deployments": {
                **fleet.deployments,
                deployment: dep.model_copy(update={"max_model_len": too_long}),
            },
            "gateway": fleet.gateway.model_copy(update={"routes": routes}),
        }
    )
    return Fleet.model_validate(broken.model_dump())  # model_copy does not validate


def _written(fleet: Fleet, path: Path, env: Mapping[str, str]) -> LoadedFleet:
    """The fleet as a fleet file, read back the way ``fleetgate deploy`` reads one."""
    path.write_text(
        yaml.safe_dump(fleet.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
    return load_fleet(path, env=env)


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _outcome(report: HostReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "action": report.action,
        "release": report.release,
        "messages": report.messages,
    }


def rollback_criterion_sync(
    fleet: Fleet, deployer: HostDeployer, base: Path, workdir: Path, speed: float = 10.0
) -> tuple[Criterion, Target]:
    """Criterion 4 in ``base`` (blocking: the deploy layer is synchronous)."""
    bindir = base / "bin"
    bindir.mkdir()
    py = shlex.quote(sys.executable)
    shim = _executable(
        bindir / "vllm-python",
        "#!/bin/sh\n# stands in for the python that has vLLM: the simulator, same flags\n"
        f'[ "$1" = -m ] && shift 2\nexec {py} -m fleetgate.local.vllm_shim "$@"\n',
    )
    fg = _executable(
        bindir / "fleetgate",
        f"#!/bin/sh\nexec {py} -c 'import sys; from fleetgate.cli import main; "
        'sys.argv[0] = "fleetgate"; main()\' "$@"\n',
    )
    key = "fg-" + secrets.token_urlsafe(16)
    (workdir / "env").write_text(f"FLEETGATE_API_KEY={key}\nFLEETGATE_BIN={fg}\n")
    good = rollback_fleet(fleet, workdir, str(shim), speed=speed)
    broken_dep = public_models(fleet)[burst_model(fleet)].deployments[0]
    bad = broken_change(good, broken_dep)
    env = {**os.environ, "FLEETGATE_API_KEY": key}
    good_file, bad_file = base / "fleet.yaml", base / "fleet-broken.yaml"
    good_loaded, bad_loaded = _written(good, good_file, env), _written(bad, bad_file, env)
    target = target_from_fleet(good_loaded.fleet, api_key=key)
    data: dict[str, Any] = {}

    deployer.step("deploying the good release")
    first = deployer.deploy(render_host(source_of(good_loaded), HOST), fleet_file=str(good_file))
    data["first"] = _outcome(first)
    if not first.ok:
        detail = "the good release did not deploy: " + "; ".join(first.messages)
        return Criterion(4, TITLE, False, detail, data), target
    deployer.step("deploying a broken change (max_model_len over the KV cache)")
    second = deployer.deploy(render_host(source_of(bad_loaded), HOST), fleet_file=str(bad_file))
    data["second"] = {**_outcome(second), "log_tail": second.log_tail[-2000:]}
    state = deployer.releases()
    data["current"] = state.current
    rolled_back = (
        not second.ok and second.action == "rolled back" and state.current == first.release
    )
    assert good.gateway is not None
    detail = (
        f"the fleet's {len(good.deployments)} deployments and "
        f"{len(good.gateway.routes)} routes on one local host: deployed {first.release}; "
        f"broken {broken_dep} in {second.release}: {second.action or 'failed'}; "
        f"host now on {state.current}"
    )
    if "maximum model length" in second.log_tail:
        detail += " (the backend refused to start: max_model_len over the KV cache)"
    return Criterion(4, TITLE, rolled_back, detail, data), target


async def _wait_ready(url: str, timeout_s: float = 30) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with ApiClient(url, timeout_s=5) as api:
        while loop.time() < deadline:
            reply = await api.request("GET", "/health/ready")
            if reply.ok:
                return True
            await asyncio.sleep(0.5)
    return False


async def _verify_over_http(criterion: Criterion, target: Target, step: Step) -> None:
    """After the rollback: the gateway is ready and every route passes its smoke test."""
    step("verifying the previous behaviour over HTTP")
    if not await _wait_ready(target.url):
        criterion.ok = False
        criterion.detail += "; the gateway is not ready after the rollback"
        return
    smoke = await run_smoke(target)
    criterion.data["smoke_after_rollback"] = smoke.to_dict()
    lens = [c.got for c in smoke.checks if c.check == "max_model_len"]
    if smoke.ok:
        criterion.detail += f"; over HTTP the old limits hold again (max_model_len {lens})"
    else:
        criterion.ok = False
        criterion.detail += "; after the rollback the smoke test FAILED: " + (
            "; ".join(f"{c.check}: {c.got}" for c in smoke.checks if c.ok is False)
        )


async def rollback_criterion(fleet: Fleet, step: Step, speed: float = 10.0) -> Criterion:
    with tempfile.TemporaryDirectory(prefix="fleetgate-check-") as tmp:
        base = Path(tmp)
        workdir = base / HOST
        workdir.mkdir()
        deployer = HostDeployer(
            HOST,
            host_ops(LocalTransport(), "linux", str(workdir)),
            backups=base / "backups",
            gate_timeout_s=GATE_TIMEOUT_S,
            step=step,
        )
        try:
            criterion, target = await asyncio.to_thread(
                rollback_criterion_sync, fleet, deployer, base, workdir, speed
            )
            if criterion.ok:
                await _verify_over_http(criterion, target, step)
        finally:
            step("stopping the rollback host's units")
            stopped = await asyncio.to_thread(deployer.stop)
    if not stopped.ok:
        criterion.detail += "; stopping the rollback host's units failed: " + "; ".join(
            stopped.messages
        )
    return criterion
