"""The fleet owner's acceptance criteria, end to end, each one a pass or a fail.

1. Context: every route and profile accepts exactly its limits and refuses one token more
   (the smoke test), and each backend runs with the planned max_model_len.
2. Backpressure: 20 clients on the burst profile of a concurrency-2 backend finish with at
   most one error.
3. Over-limit requests (context, max_tokens, body size, unknown model, bad key, a full queue)
   get a 4xx, never a 5xx.
4. Rollback: the whole fleet (every deployment, route, profile and alias) is deployed through
   the deploy layer onto one local host, a broken change (the burst route's first deployment
   given a max_model_len its KV cache cannot hold) fails its health gate and is rolled back by
   itself, and over HTTP the previous max_model_len and limits are back on every route.

Criteria 1-3 speak HTTP to a gateway (one brought up locally, or ``url``); criterion 4 runs in
a temporary directory with the simulator standing in for vLLM behind the rendered scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from fleetgate.deploy import HostDeployer, LocalTransport, host_ops
from fleetgate.fleetfile import Fleet, load_fleet, public_models
from fleetgate.local.localize import free_port
from fleetgate.local.simconfig import sim_config_for
from fleetgate.local.up import local_fleet
from fleetgate.probes import (
    ApiClient,
    BurstConfig,
    Target,
    run_burst,
    run_smoke,
    target_from_fleet,
)
from fleetgate.render import render_host, source_of

Step = Callable[[str], None]
# the simulator answers within seconds; this bounds a good release that never comes up
GATE_TIMEOUT_S = 120.0


@dataclass
class Criterion:
    number: int
    title: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class AcceptanceReport:
    url: str
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.criteria) and all(c.ok for c in self.criteria)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "criteria": [c.__dict__ for c in self.criteria],
        }


# -- 1. context -------------------------------------------------------------------------------


async def context_criterion(target: Target) -> Criterion:
    report = await run_smoke(target)
    failed = [c for c in report.checks if c.ok is False]
    skipped = [c for c in report.checks if c.ok is None]
    detail = f"{len(report.checks) - len(failed) - len(skipped)} checks passed"
    if skipped:
        detail += f", {len(skipped)} skipped"
    if failed:
        detail += "; failed: " + "; ".join(f"{c.model} {c.check}: {c.got}" for c in failed)
    return Criterion(
        1, "context window effective at the planned limits", report.ok, detail, report.to_dict()
    )


# -- 2. burst ----------------------------------------------------------------------------------


def burst_model(fleet: Fleet) -> str:
    """A profile (else a route) on the backend with the fewest slots: the owner's burst case."""
    models = [pm for pm in public_models(fleet).values() if pm.kind != "alias"]
    return min(
        models,
        key=lambda pm: (pm.kind != "profile", pm.limits.concurrency or 10**6, pm.name),
    ).name


async def burst_criterion(target: Target, fleet: Fleet, clients: int = 20) -> Criterion:
    model = burst_model(fleet)
    config = BurstConfig(
        model=model,
        concurrency=clients,
        requests=clients * 2,
        duration_s=120,
        stream=True,
        prompt_tokens=(64, 256),
        max_tokens=(16, 48),
        timeout_s=240,
    )
    report = await run_burst(target.url, config, target.api_key)
    s = report.summary()
    detail = (
        f"{clients} clients, {s['requests']} requests on {model}: {s['succeeded']} ok, "
        f"{s['failed']} failed, {s['responses_429']} answers 429 retried; "
        f"p50 e2e {s['e2e_s']['p50'] or 0:.2f} s, p99 {s['e2e_s']['p99'] or 0:.2f} s"
    )
    if s["failures_by_reason"]:
        detail += f"; failures: {s['failures_by_reason']}"
    return Criterion(2, "a burst completes with at most 1 error", report.failed <= 1, detail, s)


# -- 3. over-limit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    model: str
    what: str
    status: int
    code: str


async def _raw(
    session: aiohttp.ClientSession, url: str, body: bytes, key: str | None
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            text = await resp.text()
    except aiohttp.ClientError as exc:
        return 0, type(exc).__name__
    try:
        code = str((json.loads(text).get("error") or {}).get("code"))
    except (json.JSONDecodeError, AttributeError):
        code = ""
    return resp.status, code


async def over_limit_criterion(target: Target, fleet: Fleet) -> Criterion:
    """Requests each over one limit, non-streamed and streamed, and a queue overflow."""
    assert fleet.gateway is not None
    probes: list[_Probe] = []
    chat = target.url + "/v1/chat/completions"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def send(model: str, what: str, body: Any, key: str | None = target.api_key) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            status, code = await _raw(session, chat, data, key)
            probes.append(_Probe(model, what, status, code))

        for m in target.models:
            if m.kind == "alias":
                continue
            length = m.max_model_len or 4096
            long_prompt = [{"role": "user", "content": " hello" * (length + 64)}]
            short = [{"role": "user", "content": "hi"}]
            for stream in (False, True):
                tag = " (stream)" if stream else ""
                extra = {"stream": True} if stream else {}
                await send(
                    m.name,
                    "prompt over the context" + tag,
                    {"model": m.name, "messages": long_prompt, "max_tokens": 8, **extra},
                )
                await send(
                    m.name,
                    "max_tokens over max_model_len" + tag,
                    {"model": m.name, "messages": short, "max_tokens": length + 1, **extra},
                )
                if m.max_output_tokens and not m.clamp_max_tokens:
                    await send(
                        m.name,
                        "max_tokens over the route's limit" + tag,
                        {
                            "model": m.name,
                            "messages": short,
                            "max_tokens": m.max_output_tokens + 1,
                            **extra,
                        },
                    )
        first = target.models[0].name
        await send(
            first,
            "unknown model",
            {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        await send(first, "malformed JSON", b"{not json")
        await send(first, "messages missing", {"model": first})
        await send(
            first,
            "body over the size limit",
            {
                "model": first,
                "messages": [{"role": "user", "content": "x" * (fleet.gateway.max_body_bytes + 1)}],
            },
        )
        if target.api_key:
            await send(
                first,
                "wrong API key",
                {"model": first, "messages": [{"role": "user", "content": "hi"}]},
                key="wrong-key-" + secrets.token_hex(4),
            )

    refusals = [p for p in probes if not 400 <= p.status < 500]
    # A queue overflow: more clients than slots plus queue, no retries: 200s and 429s only.
    route = min(
        (pm for pm in public_models(fleet).values() if pm.kind == "route"),
        key=lambda pm: (pm.limits.queue_depth or 0) + (pm.limits.concurrency or 0),
    )
    overflow = (route.limits.queue_depth or 0) + (route.limits.concurrency or 1) + 8
    burst = await run_burst(
        target.url,
        BurstConfig(
            model=route.name,
            concurrency=overflow,
            requests=overflow,
            duration_s=60,
            prompt_tokens=(16, 32),
            max_tokens=(8, 16),
            retry=False,
            timeout_s=120,
        ),
        target.api_key,
    )
    statuses = burst.summary()["by_status"]
    five = {s: n for s, n in statuses.items() if not (s == "200" or s.startswith("4"))}
    ok = not refusals and not five
    detail = (
        f"{len(probes)} over-limit requests: "
        + ", ".join(sorted({str(p.status) for p in probes}))
        + f"; queue overflow ({overflow} clients on {route.name}): {statuses}"
    )
    if refusals:
        detail += "; NOT 4xx: " + "; ".join(f"{p.model} {p.what}: {p.status}" for p in refusals)
    return Criterion(
        3,
        "over-limit requests get a 4xx, never a 5xx",
        ok,
        detail,
        {"probes": [p.__dict__ for p in probes], "overflow_statuses": statuses},
    )


# -- 4. rollback -------------------------------------------------------------------------------


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def rollback_fleet(
    fleet: Fleet, workdir: Path, python: str, *, speed: float = 10.0
) -> dict[str, Any]:
    """The whole fleet as one local host's fleet document: every deployment run by the
    simulator (at ``speed``, with its planned KV capacity) behind the rendered process
    scripts, and the gateway beside them with every route, profile and alias."""
    assert fleet.gateway is not None
    deployments = {}
    for name, dep in fleet.deployments.items():
        sim = sim_config_for(fleet, name, speed=speed)
        deployments[name] = {
            "host": "node",
            "port": free_port(),
            "model": dep.model,
            "served_model_name": dep.public_name(name),
            "max_model_len": sim.max_model_len,
            "max_num_seqs": sim.max_num_seqs,
            "runtime": "process",
            "python": python,
            "env": {
                "FLEETGATE_SIM_KV_CACHE_TOKENS": str(
                    sim.kv_cache_tokens or sim.max_num_seqs * sim.max_model_len
                ),
                "FLEETGATE_SIM_SPEED": f"{speed:g}",
            },
        }
    gpus = [g.model_dump(exclude_none=True) for h in fleet.hosts.values() for g in h.gpus][:1]
    return {
        "version": 1,
        "name": f"{fleet.name}-rollback-check",
        "hosts": {
            "node": {
                "address": "127.0.0.1",
                "transport": "local",
                "os": "linux",
                "workdir": str(workdir),
                "gpus": gpus,
            }
        },
        "deployments": deployments,
        "gateway": {
            "host": "node",
            "listen": "127.0.0.1",
            "port": free_port(),
            "api_keys": [{"name": "check", "key": "${FLEETGATE_API_KEY}"}],
            "health": {"interval_s": 1.0, "timeout_s": 1.0, "unhealthy_after": 1},
            "defaults": fleet.gateway.defaults.model_dump(exclude_none=True),
            "routes": {
                name: route.model_dump(exclude_none=True)
                for name, route in fleet.gateway.routes.items()
            },
            "aliases": dict(fleet.gateway.aliases),
        },
    }


def broken_change(doc: dict[str, Any], deployment: str) -> dict[str, Any]:
    """Raise one deployment's context past what its KV cache holds, and the input limit of
    the routes on it with it: vLLM (here its stand-in) refuses to start."""
    broken = json.loads(json.dumps(doc))
    dep = broken["deployments"][deployment]
    kv = int(dep["env"]["FLEETGATE_SIM_KV_CACHE_TOKENS"])
    dep["max_model_len"] = kv + 1024
    for route in broken["gateway"]["routes"].values():
        if deployment in route["deployments"]:
            route["max_input_tokens"] = kv + 1024 - route.get("max_output_tokens", 1024)
    return broken


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


def rollback_criterion_sync(
    fleet: Fleet, step: Step, base: Path, speed: float = 10.0
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
    workdir = base / "node"
    workdir.mkdir()
    key = "fg-" + secrets.token_urlsafe(16)
    (workdir / "env").write_text(f"FLEETGATE_API_KEY={key}\nFLEETGATE_BIN={fg}\n")
    good = rollback_fleet(fleet, workdir, str(shim), speed=speed)
    broken_dep = public_models(fleet)[burst_model(fleet)].deployments[0]
    bad = broken_change(good, broken_dep)
    good_file, bad_file = base / "fleet.yaml", base / "fleet-broken.yaml"
    good_file.write_text(yaml.safe_dump(good, sort_keys=False))
    bad_file.write_text(yaml.safe_dump(bad, sort_keys=False))

    env = {**os.environ, "FLEETGATE_API_KEY": key}
    good_loaded = load_fleet(good_file, env=env)
    deployer = HostDeployer(
        "node",
        host_ops(LocalTransport(), "linux", str(workdir)),
        backups=base / "backups",
        gate_timeout_s=GATE_TIMEOUT_S,
        step=step,
    )
    target = target_from_fleet(good_loaded.fleet, api_key=key)
    data: dict[str, Any] = {}

    step("deploying the good release")
    first = deployer.deploy(render_host(source_of(good_loaded), "node"), fleet_file=str(good_file))
    data["first"] = {
        "ok": first.ok,
        "action": first.action,
        "release": first.release,
        "messages": first.messages,
    }
    if not first.ok:
        return Criterion(
            4,
            "rollback restores the previous behaviour",
            False,
            "the good release did not deploy: " + "; ".join(first.messages),
            data,
        ), target
    step("deploying a broken change (max_model_len over the KV cache)")
    second = deployer.deploy(
        render_host(source_of(load_fleet(bad_file, env=env)), "node"),
        fleet_file=str(bad_file),
    )
    data["second"] = {
        "ok": second.ok,
        "action": second.action,
        "release": second.release,
        "messages": second.messages,
        "log_tail": second.log_tail[-2000:],
    }
    state = deployer.releases()
    data["current"] = state.current
    rolled_back = (
        not second.ok and second.action == "rolled back" and state.current == first.release
    )
    detail = (
        f"the fleet's {len(good['deployments'])} deployments and "
        f"{len(good['gateway']['routes'])} routes on one local host: deployed {first.release}; "
        f"broken {broken_dep} in {second.release}: {second.action or 'failed'}; "
        f"host now on {state.current}"
    )
    if "maximum model length" in second.log_tail:
        detail += " (the backend refused to start: max_model_len over the KV cache)"
    return Criterion(
        4, "rollback restores the previous behaviour", rolled_back, detail, data
    ), target


async def rollback_criterion(fleet: Fleet, step: Step, speed: float = 10.0) -> Criterion:
    with tempfile.TemporaryDirectory(prefix="fleetgate-check-") as tmp:
        base = Path(tmp)
        criterion, target = await asyncio.to_thread(
            rollback_criterion_sync, fleet, step, base, speed
        )
        try:
            if criterion.ok:
                step("verifying the previous behaviour over HTTP")
                if not await _wait_ready(target.url):
                    criterion.ok = False
                    criterion.detail += "; the gateway is not ready after the rollback"
                else:
                    smoke = await run_smoke(target)
                    criterion.data["smoke_after_rollback"] = smoke.to_dict()
                    lens = [c.got for c in smoke.checks if c.check == "max_model_len"]
                    if smoke.ok:
                        criterion.detail += (
                            f"; over HTTP the old limits hold again (max_model_len {lens})"
                        )
                    else:
                        criterion.ok = False
                        criterion.detail += "; after the rollback the smoke test FAILED: " + (
                            "; ".join(f"{c.check}: {c.got}" for c in smoke.checks if c.ok is False)
                        )
        finally:
            step("stopping the rollback host's units")
            await asyncio.to_thread(_stop_units, base / "node")
    return criterion


def _stop_units(workdir: Path) -> None:
    current = workdir / "current"
    manifest = current / "manifest.json"
    if not manifest.exists():
        return
    for unit in json.loads(manifest.read_text())["units"]:
        with contextlib.suppress(OSError):
            LocalTransport().exec(f"bash {shlex.quote(str(current / unit['script']))} stop")


# -- all of it ---------------------------------------------------------------------------------


async def run_acceptance(
    fleet: Fleet,
    *,
    url: str | None = None,
    api_key: str | None = None,
    speed: float = 10.0,
    rollback: bool = True,
    step: Step | None = None,
) -> AcceptanceReport:
    """Every criterion; against ``url`` when given, else against a fleet brought up here."""
    say = step or (lambda _text: None)
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            say("bringing the fleet up locally (simulated backends)")
            running = await stack.enter_async_context(
                local_fleet(fleet, gateway_port=0, speed=speed)
            )
            target = target_from_fleet(
                running.fleet, url=running.gateway_url, api_key=running.api_key
            )
            limits_fleet = running.fleet
        else:
            target = target_from_fleet(fleet, url=url, api_key=api_key)
            limits_fleet = fleet
        report = AcceptanceReport(target.url)
        say("1: context smoke test")
        report.criteria.append(await context_criterion(target))
        say("2: burst")
        report.criteria.append(await burst_criterion(target, limits_fleet))
        say("3: over-limit requests")
        report.criteria.append(await over_limit_criterion(target, limits_fleet))
    if rollback:
        say("4: deploy, broken change, rollback")
        report.criteria.append(await rollback_criterion(fleet, say, speed))
    return report
