"""The on-demand controller: brings deployments up when requests need them, and down when idle.

One controller runs inside ``fleetgate serve``. The gateway asks it to make a deployment ready
(:meth:`Controller.ensure_ready`) and tells it about traffic through :class:`Traffic`; nothing
here proxies a request. Per host one bring-up runs at a time: it wakes the host (Wake-on-LAN),
makes room on the deployment's GPUs (draining the neighbours that do not fit beside it, then
putting them to sleep or stopping them), and starts or wakes the deployment.

Swap-aware ordering: a neighbour whose requests are still queued keeps serving them (its "run")
until the oldest request waiting for the newcomer would otherwise miss its deadline (its load
wait, less the newcomer's expected start time and a margin). With ``policy="fifo"`` the swap
waits only for the requests that arrived before the newcomer's oldest (strict arrival order, as
a plain queue in front of an on-demand loader serves them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetgate.control.states import ON_GPU, State
from fleetgate.control.units import HostPower, Unit
from fleetgate.control.wol import send_magic_packet
from fleetgate.deploy import HostError, TransportError
from fleetgate.fleetfile import Fleet, deployment_url, gpus_of, neighbours
from fleetgate.plan.residency import GpuResidency, gpu_residency

log = logging.getLogger("fleetgate.control")

# After a failed start, requests are refused at once for this long (then a new one retries).
FAILED_HOLD_S = 10.0
# A swap-aware hold ends this long (plus a fifth of the expected start) before the deadline.
HOLD_MARGIN_S = 1.0
POLL_S = 0.05


class NotReady(Exception):
    """The deployment could not be made ready in time; ``message`` says why (the backend's own
    error lines when its start failed)."""

    def __init__(self, deployment: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.deployment = deployment
        self.message = message
        self.retry_after_s = retry_after_s


class Traffic(Protocol):
    """What the controller needs to know from (and tell) the gateway."""

    def in_flight(self, deployment: str) -> int: ...

    def waiting(self, deployment: str) -> int:
        """Requests queued for this deployment, or waiting for its bring-up."""

    def oldest_waiting(self, deployment: str) -> float | None:
        """When the longest-waiting of them arrived (monotonic)."""

    def admit(self, deployment: str, on: bool) -> None:
        """Let new requests reach the deployment (``on``), or hold them back (draining)."""


class NoTraffic:
    """Until a gateway attaches: no requests anywhere."""

    def in_flight(self, deployment: str) -> int:
        return 0

    def waiting(self, deployment: str) -> int:
        return 0

    def oldest_waiting(self, deployment: str) -> float | None:
        return None

    def admit(self, deployment: str, on: bool) -> None:
        return None


@dataclass(eq=False)
class _Deployment:
    name: str
    host: str
    url: str
    on_demand: bool
    swap: str
    idle_stop_s: float
    load_timeout_s: float
    state: State = State.OFF
    since: float = field(default_factory=monotonic)
    last_used: float = field(default_factory=monotonic)
    error: str | None = None
    failed_at: float | None = None
    start_s: float | None = None  # the last cold start, measured
    wake_s: float | None = None  # the last wake from sleep, measured
    task: asyncio.Task[None] | None = None
    deadlines: list[float] = field(default_factory=list)
    swaps: int = 0  # times it was started or woken


class Controller:
    """The lifecycle of every on-demand deployment of a fleet."""

    def __init__(
        self,
        fleet: Fleet,
        units: dict[str, Unit],
        powers: dict[str, HostPower] | None = None,
        *,
        policy: str = "swap_aware",
        tick_s: float = 0.5,
        poll_s: float = 1.0,
    ) -> None:
        if policy not in ("swap_aware", "fifo"):
            raise ValueError(f"policy must be swap_aware or fifo, not {policy!r}")
        self.fleet = fleet
        self.units = units
        self.powers = powers or {}
        self.policy = policy
        self.tick_s = tick_s
        self.poll_s = poll_s
        self.traffic: Traffic = NoTraffic()
        self.deps = {
            name: _Deployment(
                name=name,
                host=d.host,
                url=deployment_url(fleet, name),
                on_demand=d.on_demand,
                swap=d.swap,
                idle_stop_s=d.idle_stop_s,
                load_timeout_s=d.load_timeout_s,
                state=State.OFF if d.on_demand else State.READY,
            )
            for name, d in fleet.deployments.items()
        }
        missing = [n for n, d in self.deps.items() if d.on_demand and n not in units]
        if missing:
            raise ValueError(f"no unit to start on-demand deployment(s) {', '.join(missing)}")
        self._gpus: dict[tuple[str, int], GpuResidency] = {
            (g.host, g.gpu): g for g in gpu_residency(fleet)
        }
        self._locks: dict[str, asyncio.Lock] = {}
        self._host_idle_since: dict[str, float] = {}
        self._suspended: set[str] = set()
        self._http: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.registry = CollectorRegistry()
        self._transitions = Counter(
            "fleetgate_deployment_transitions",
            "Lifecycle transitions of on-demand deployments, by the state entered",
            ["deployment", "state"],
            registry=self.registry,
        )
        self._load = Histogram(
            "fleetgate_deployment_load_seconds",
            "How long a start (cold) or a wake (from sleep) took until the deployment served",
            ["deployment", "kind"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600),
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    # -- the gateway's interface --------------------------------------------------------------

    def attach(self, traffic: Traffic) -> None:
        self.traffic = traffic
        for d in self.deps.values():
            if d.on_demand:
                traffic.admit(d.name, d.state == State.READY)

    def manages(self, name: str) -> bool:
        """Is ``name`` on-demand (brought up by this controller)?"""
        d = self.deps.get(name)
        return d is not None and d.on_demand

    def state(self, name: str) -> str:
        return str(self.deps[name].state)

    def ready(self, name: str) -> bool:
        return self.deps[name].state == State.READY

    def refused(self, name: str) -> NotReady | None:
        """The refusal a request for ``name`` gets right now (a start failed moments ago)."""
        d = self.deps[name]
        if d.state == State.FAILED and d.failed_at and monotonic() - d.failed_at < FAILED_HOLD_S:
            left = FAILED_HOLD_S - (monotonic() - d.failed_at)
            return NotReady(name, d.error or "its start failed", left)
        return None

    async def ensure_ready(self, name: str, deadline: float) -> NotReady | None:
        """None once ``name`` serves; the refusal if its start fails or ``deadline``
        (monotonic) passes first. The start itself goes on past a caller's deadline, bounded
        by the deployment's ``load_timeout_s``."""
        try:
            await self._ensure(name, deadline)
        except NotReady as refusal:
            return refusal
        return None

    async def _ensure(self, name: str, deadline: float) -> None:
        d = self.deps[name]
        d.last_used = monotonic()
        if not d.on_demand:
            return
        if d.state == State.READY:
            # asked although ready: the gateway saw it fail; look, and bring it back if down
            if await self._healthy(d):
                self.traffic.admit(d.name, True)
                return
            self._set(d, State.OFF, reason="not answering /health")
        if (refusal := self.refused(name)) is not None:
            raise refusal
        d.deadlines.append(deadline)
        try:
            if d.task is None or d.task.done():
                d.task = self._spawn(self._bring_up(d))
            remaining = deadline - monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(asyncio.shield(d.task), remaining)
            except TimeoutError:
                raise NotReady(
                    name,
                    f"deployment {name!r} is still {d.state} (for "
                    f"{monotonic() - d.since:.1f} s); the request's load wait ran out",
                    self._expected_ready_s(d),
                ) from None
        finally:
            d.deadlines.remove(deadline)
        d.last_used = monotonic()

    def status(self) -> dict[str, dict[str, object]]:
        """Each deployment's state for ``/health/ready``."""
        now = monotonic()
        out: dict[str, dict[str, object]] = {}
        for d in self.deps.values():
            entry: dict[str, object] = {
                "state": str(d.state),
                "on_demand": d.on_demand,
                "for_s": round(now - d.since, 1),
            }
            if d.error and d.state == State.FAILED:
                entry["error"] = d.error
            out[d.name] = entry
        return out

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find out what is already running, then watch for idle deployments."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        await asyncio.gather(*(self._discover(d) for d in self.deps.values() if d.on_demand))
        for host in self.fleet.hosts:
            self._return_to_default(host)
        self._loop_task = asyncio.create_task(self._watch(), name="fleetgate-control")

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def stop_all(self) -> None:
        """Stop every on-demand deployment that is up (``fleetgate up`` on exit)."""
        for d in self.deps.values():
            if d.on_demand and d.state not in (State.OFF, State.FAILED):
                with contextlib.suppress(HostError, TransportError, OSError):
                    await self.units[d.name].stop()
                self._set(d, State.OFF, reason="shutdown")

    # -- transitions --------------------------------------------------------------------------

    def _set(self, d: _Deployment, state: State, **detail: object) -> None:
        old = d.state
        d.state, d.since = state, monotonic()
        self._transitions.labels(d.name, str(state)).inc()
        line: dict[str, object] = {"event": "deployment_state", "deployment": d.name}
        line.update({"from": str(old), "to": str(state), **detail})
        log.info(json.dumps(line, default=str))
        self.traffic.admit(d.name, state == State.READY)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # a failure is delivered to the waiting requests; nobody waiting is no error to report
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _lock(self, host: str) -> asyncio.Lock:
        return self._locks.setdefault(host, asyncio.Lock())

    async def _bring_up(self, d: _Deployment) -> None:
        async with self._lock(d.host):
            if d.state == State.READY:
                return
            await self._wake_host(d)
            await self._make_room(d)
            if d.state == State.SLEEPING and await self._wake(d):
                return
            await self._start(d)

    # -- the host -----------------------------------------------------------------------------

    async def _wake_host(self, d: _Deployment) -> None:
        power = self.powers.get(d.host)
        host = self.fleet.hosts[d.host]
        if power is None or host.wake is None:
            return
        if d.host not in self._suspended and await power.awake():
            return
        self._set(d, State.WAKING_HOST, mac=host.wake.mac, address=host.wake.address)
        started = monotonic()
        send_magic_packet(host.wake.mac, host.wake.address, host.wake.port)
        resent = started
        while not await power.awake():
            now = monotonic()
            if now - started >= host.wake_timeout_s:
                self._fail(
                    d,
                    f"host {d.host!r} did not wake within wake_timeout_s "
                    f"({host.wake_timeout_s:g} s) after a Wake-on-LAN packet to "
                    f"{host.wake.mac} via {host.wake.address}:{host.wake.port}",
                )
            if now - resent >= 10:  # a lost packet: send again
                send_magic_packet(host.wake.mac, host.wake.address, host.wake.port)
                resent = now
            await asyncio.sleep(self.poll_s)
        self._suspended.discard(d.host)
        self._set(d, State.OFF, reason="host awake", host_wake_s=round(monotonic() - started, 2))

    # -- room on the GPU ----------------------------------------------------------------------

    def _fits(self, d: _Deployment) -> bool:
        names = [d.name, *neighbours(self.fleet, d.name)]
        awake = {n for n in names if self.deps[n].state in ON_GPU or n == d.name}
        asleep = {n for n in names if self.deps[n].state == State.SLEEPING and n != d.name}
        return all(self._gpus[key].fits(awake, asleep) for key in gpus_of(self.fleet, d.name))

    async def _make_room(self, d: _Deployment) -> None:
        while not self._fits(d):
            others = [self.deps[n] for n in neighbours(self.fleet, d.name)]
            awake = [o for o in others if o.on_demand and o.state in ON_GPU]
            asleep = [o for o in others if o.on_demand and o.state == State.SLEEPING]
            if not awake and not asleep:
                self._fail(d, f"{d.name!r} does not fit beside the always-on deployments")
            if awake:
                # the one with the least demand goes first; then the least recently used
                awake.sort(key=lambda o: (self._demand(o.name), o.last_used))
                victim = awake[0]
                await self._hold_for_run(victim, d)
                await self._drain(victim, d)
                if victim.swap == "sleep" and await self._put_to_sleep(victim, d):
                    continue
                await self._stop(victim, reason=f"making room for {d.name}")
            else:
                await self._stop(asleep[0], reason=f"making room for {d.name}")

    @staticmethod
    def _bringing_up(d: _Deployment) -> bool:
        return d.task is not None and not d.task.done()

    def _demand(self, name: str) -> int:
        return self.traffic.waiting(name) + self.traffic.in_flight(name)

    def _expected_ready_s(self, d: _Deployment) -> float:
        """How long ``d`` will likely take to serve: its last wake or start, else the slowest
        start seen on its host, else its whole ``load_timeout_s`` (then nothing is held)."""
        if d.state == State.SLEEPING and d.wake_s is not None:
            return d.wake_s
        if d.start_s is not None:
            return d.start_s
        seen = [o.start_s for o in self.deps.values() if o.host == d.host and o.start_s]
        return max(seen) if seen else d.load_timeout_s

    async def _hold_for_run(self, victim: _Deployment, d: _Deployment) -> None:
        """Before a swap. FIFO: ``victim`` first serves the requests that came before the
        oldest one waiting for ``d``. Swap-aware: it serves everything queued for it (its run)
        while the requests waiting for ``d`` can afford the wait."""
        if self.policy == "fifo":
            while (mine := self.traffic.oldest_waiting(victim.name)) is not None and (
                (theirs := self.traffic.oldest_waiting(d.name)) is None or mine < theirs
            ):
                await asyncio.sleep(POLL_S)
            return
        while self.traffic.waiting(victim.name) > 0 and d.deadlines:
            expected = self._expected_ready_s(d)
            swap_by = min(d.deadlines) - expected * 1.2 - HOLD_MARGIN_S
            if monotonic() >= swap_by:
                return
            await asyncio.sleep(min(POLL_S, swap_by - monotonic()))

    async def _drain(self, victim: _Deployment, d: _Deployment) -> None:
        """No new requests to ``victim``; wait for its in-flight ones to finish."""
        self._set(victim, State.DRAINING, reason=f"making room for {d.name}")
        started = monotonic()
        while self.traffic.in_flight(victim.name) > 0:
            if not d.deadlines and monotonic() - started > d.load_timeout_s:
                self._set(victim, State.READY, reason="drain abandoned: nobody waits")
                raise NotReady(d.name, f"{victim.name!r} did not drain", 5.0)
            await asyncio.sleep(POLL_S)

    # -- start, stop, sleep, wake -------------------------------------------------------------

    async def _start(self, d: _Deployment) -> None:
        unit = self.units[d.name]
        self._set(d, State.STARTING)
        started = monotonic()
        try:
            await unit.start()
        except (HostError, TransportError, OSError) as exc:
            self._fail(d, f"could not start {d.name!r}: {exc}")
        checked = started
        while not await self._healthy(d):
            now = monotonic()
            if now - started >= d.load_timeout_s:
                with contextlib.suppress(HostError, TransportError, OSError):
                    await unit.stop()
                self._fail(
                    d,
                    f"{d.name!r} did not serve within load_timeout_s ({d.load_timeout_s:g} s)",
                )
            if now - checked >= self.poll_s:
                checked = now
                if not await unit.running():
                    lines = await unit.failure_lines()
                    self._fail(d, f"{d.name!r} exited while starting:\n{lines}".rstrip())
            await asyncio.sleep(min(self.poll_s, 0.25))
        d.start_s = monotonic() - started
        d.swaps += 1
        self._load.labels(d.name, "start").observe(d.start_s)
        d.last_used = monotonic()
        self._set(d, State.READY, start_s=round(d.start_s, 2))

    async def _stop(self, d: _Deployment, *, reason: str) -> None:
        self._set(d, State.STOPPING, reason=reason)
        try:
            await self.units[d.name].stop()
        except (HostError, TransportError, OSError) as exc:
            self._fail(d, f"could not stop {d.name!r}: {exc}", stop=False)
        self._set(d, State.OFF, reason=reason)

    async def _put_to_sleep(self, d: _Deployment, for_: _Deployment | None) -> bool:
        """``POST /sleep?level=1``; False (and ``d`` still draining) if it could not, or if
        even asleep it leaves no room."""
        if for_ is not None:
            d.state = State.SLEEPING  # would the newcomer fit beside it asleep?
            fits = self._fits(for_)
            d.state = State.DRAINING
            if not fits:
                return False
        status, _ = await self._call(d, "POST", "/sleep?level=1")
        if status != 200:
            log.warning("deployment %s did not go to sleep (%s): stopping it", d.name, status)
            return False
        self._set(d, State.SLEEPING, reason=f"making room for {for_.name}" if for_ else "idle")
        return True

    async def _wake(self, d: _Deployment) -> bool:
        """``POST /wake_up`` until ``/is_sleeping`` says no; False when the process is gone
        (a cold start follows)."""
        self._set(d, State.WAKING)
        started = monotonic()
        status, _ = await self._call(d, "POST", "/wake_up", timeout=d.load_timeout_s)
        if status != 200:
            self._set(d, State.OFF, reason=f"wake_up answered {status or 'nothing'}")
            return False
        while True:
            status, body = await self._call(d, "GET", "/is_sleeping")
            if status == 200 and isinstance(body, dict) and body.get("is_sleeping") is False:
                break
            if monotonic() - started >= d.load_timeout_s:
                self._fail(d, f"{d.name!r} still asleep after load_timeout_s")
            await asyncio.sleep(POLL_S)
        d.wake_s = monotonic() - started
        d.swaps += 1
        self._load.labels(d.name, "wake").observe(d.wake_s)
        d.last_used = monotonic()
        self._set(d, State.READY, wake_s=round(d.wake_s, 2))
        return True

    def _fail(self, d: _Deployment, message: str, *, stop: bool = True) -> None:
        d.error, d.failed_at = message, monotonic()
        self._set(d, State.FAILED, error=message)
        if stop:
            self._spawn(self._after_failure(d))
        raise NotReady(d.name, message, FAILED_HOLD_S)

    async def _after_failure(self, d: _Deployment) -> None:
        with contextlib.suppress(HostError, TransportError, OSError):
            await self.units[d.name].stop()
        if d.task is not None:  # the failed bring-up itself has to end first
            await asyncio.wait([d.task])
        self._return_to_default(d.host)

    # -- HTTP to the backend ------------------------------------------------------------------

    async def _call(
        self, d: _Deployment, method: str, path: str, timeout: float = 30
    ) -> tuple[int, object]:
        assert self._http is not None, "Controller.start() was not awaited"
        try:
            async with self._http.request(
                method, d.url + path, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                try:
                    body: object = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, None

    async def _healthy(self, d: _Deployment) -> bool:
        status, _ = await self._call(d, "GET", "/health", timeout=5)
        return status == 200

    async def _discover(self, d: _Deployment) -> None:
        if not await self._healthy(d):
            return
        if d.swap == "sleep":
            status, body = await self._call(d, "GET", "/is_sleeping")
            if status == 200 and isinstance(body, dict) and body.get("is_sleeping"):
                self._set(d, State.SLEEPING, reason="found asleep")
                return
        self._set(d, State.READY, reason="found running")

    # -- idle ---------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
            except Exception:  # the watcher must never die
                log.exception("control tick failed")

    async def _tick(self) -> None:
        now = monotonic()
        for d in self.deps.values():
            if not d.on_demand or d.state != State.READY:
                continue
            if self._demand(d.name) > 0:
                d.last_used = now
                continue
            default = self.fleet.hosts[d.host].default
            if d.name != default and now - d.last_used >= d.idle_stop_s:
                self._spawn(self._idle_stop(d))
        for name, host in self.fleet.hosts.items():
            if host.suspend_after_idle_s is None or name in self._suspended:
                continue
            busy = any(
                x.host == name and (x.state in ON_GPU or x.deadlines) for x in self.deps.values()
            )
            if busy:
                self._host_idle_since.pop(name, None)
                continue
            since = self._host_idle_since.setdefault(name, now)
            if now - since >= host.suspend_after_idle_s and name in self.powers:
                self._suspended.add(name)
                log.info(json.dumps({"event": "host_suspend", "host": name}))
                with contextlib.suppress(TransportError, OSError):
                    await self.powers[name].suspend()

    async def _idle_stop(self, d: _Deployment) -> None:
        async with self._lock(d.host):
            if d.state != State.READY or self._demand(d.name) > 0:
                return
            idle = f"idle for {monotonic() - d.last_used:.0f} s (idle_stop_s {d.idle_stop_s:g})"
            self._set(d, State.DRAINING, reason=idle)
            if d.swap == "sleep" and await self._put_to_sleep(d, None):
                pass
            else:
                with contextlib.suppress(NotReady):
                    await self._stop(d, reason=idle)
        self._return_to_default(d.host)

    def _return_to_default(self, host: str) -> None:
        """Bring the host's default deployment back if its GPU is otherwise idle."""
        name = self.fleet.hosts[host].default
        if name is None or name not in self.deps:
            return
        d = self.deps[name]
        if d.state in ON_GPU or self._bringing_up(d):
            return
        if self.refused(name) is not None:
            return
        others = [self.deps[n] for n in neighbours(self.fleet, name)]
        if any(o.on_demand and (o.state in ON_GPU or self._bringing_up(o)) for o in others):
            return
        d.task = self._spawn(self._bring_up(d))


def release_controller(fleet: Fleet, *, policy: str = "swap_aware") -> Controller:
    """The controller ``fleetgate serve`` runs: each on-demand deployment started and stopped
    through the unit of the release in service on its host, hosts woken over the network."""
    from fleetgate.control.units import host_powers, release_units

    return Controller(fleet, release_units(fleet), host_powers(fleet), policy=policy)


class _StateCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "fleetgate_deployment_state",
            "1 for the lifecycle state a deployment is in (on-demand deployments)",
            labels=["deployment", "state"],
        )
        for d in self._controller.deps.values():
            if d.on_demand:
                for state in State:
                    gauge.add_metric([d.name, str(state)], 1 if d.state == state else 0)
        yield gauge
