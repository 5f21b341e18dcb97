"""The control layer against simulators started and stopped as units: swaps, drain, sleep and
wake, failed starts, idle stop, return to the host's default, Wake-on-LAN."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

import aiohttp
import pytest

from fleetgate.control import Controller, magic_packet
from fleetgate.fleetfile import Fleet
from fleetgate.local.localize import free_port
from fleetgate.local.ondemand import SimUnit, sim_units
from fleetgate.sim import SimConfig


class Traffic:
    """The gateway's side, as numbers the test sets."""

    def __init__(self) -> None:
        self.flying: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.admitted: dict[str, bool] = {}
        self.arrived: dict[str, float] = {}  # when the oldest queued request came

    def in_flight(self, deployment: str) -> int:
        return self.flying.get(deployment, 0)

    def waiting(self, deployment: str) -> int:
        return self.queued.get(deployment, 0)

    def oldest_waiting(self, deployment: str) -> float | None:
        return self.arrived.get(deployment) if self.waiting(deployment) else None

    def admit(self, deployment: str, on: bool) -> None:
        self.admitted[deployment] = on


def fleet(host: dict[str, Any] | None = None, **deps: dict[str, Any]) -> Fleet:
    return Fleet.model_validate(
        {
            "hosts": {
                "box": {
                    "address": "127.0.0.1",
                    "transport": "local",
                    "gpus": [{"memory_gib": 24, "arch": "ampere"}],
                    **(host or {}),
                }
            },
            "deployments": {
                name: {
                    "host": "box",
                    "port": free_port(),
                    "model": "Qwen/Qwen2.5-0.5B",
                    "max_model_len": 2048,
                    "max_num_seqs": 4,
                    "on_demand": True,
                    **d,
                }
                for name, d in deps.items()
            },
        }
    )


def units(f: Fleet, startup_s: float = 0.2, wake_s: float = 0.05) -> dict[str, SimUnit]:
    ports = {n: d.port for n, d in f.deployments.items()}
    return sim_units(f, ports, speed=1000, startup_s=startup_s, wake_s=wake_s)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def running(c: Controller, u: dict[str, SimUnit]) -> AsyncIterator[Controller]:
    await c.start()
    try:
        async with asyncio.timeout(60):  # a hang fails the test instead of blocking the run
            yield c
    finally:
        await c.close()
        for unit in u.values():
            await unit.stop()


async def test_a_request_for_b_drains_a_stops_it_and_starts_b(caplog: Any) -> None:
    caplog.set_level(logging.INFO, "fleetgate.control")
    f = fleet(a={}, b={})
    u = units(f)
    traffic = Traffic()
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    c.attach(traffic)
    async with running(c, u):
        assert None is await c.ensure_ready("a", monotonic() + 10)
        assert c.state("a") == "ready" and traffic.admitted["a"] and u["a"].server is not None
        traffic.flying["a"] = 1  # a request in flight on a
        wanted = asyncio.ensure_future(c.ensure_ready("b", monotonic() + 10))
        while c.state("a") != "draining":
            await asyncio.sleep(0.01)
        assert traffic.admitted["a"] is False  # nothing new reaches a
        await asyncio.sleep(0.2)
        assert c.state("a") == "draining" and u["a"].server is not None  # in flight: a stays
        traffic.flying["a"] = 0
        assert await wanted is None
        assert (c.state("a"), c.state("b")) == ("off", "ready")
        assert u["a"].server is None and u["b"].server is not None
    steps = [json.loads(r.message) for r in caplog.records if r.name == "fleetgate.control"]
    path = [(s["deployment"], s["to"]) for s in steps]
    assert path == [
        ("a", "starting"),
        ("a", "ready"),
        ("a", "draining"),
        ("a", "stopping"),
        ("a", "off"),
        ("b", "starting"),
        ("b", "ready"),
    ]
    text = c.metrics_text().decode()
    assert 'fleetgate_deployment_transitions_total{deployment="a",state="draining"} 1.0' in text
    assert 'fleetgate_deployment_state{deployment="b",state="ready"} 1.0' in text
    assert c.status()["b"]["state"] == "ready"


async def test_sleep_swap_puts_the_other_to_sleep_and_wakes_it(http: aiohttp.ClientSession) -> None:
    f = fleet(a={"swap": "sleep"}, b={"swap": "sleep", "gpu_memory_utilization": 0.9})
    u = units(f)
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    async with running(c, u):
        assert None is await c.ensure_ready("a", monotonic() + 10)
        assert None is await c.ensure_ready("b", monotonic() + 10)
        assert (c.state("a"), c.state("b")) == ("sleeping", "ready")
        async with http.get(u["a"].server.url + "/is_sleeping") as resp:  # type: ignore[union-attr]
            assert await resp.json() == {"is_sleeping": True}
        assert None is await c.ensure_ready("a", monotonic() + 10)
        assert (c.state("a"), c.state("b")) == ("ready", "sleeping")
        assert u["a"].starts == 1  # woken, not started again
        text = c.metrics_text().decode()
        assert 'fleetgate_deployment_load_seconds_count{deployment="a",kind="wake"} 1.0' in text


async def test_a_start_that_fails_names_the_backends_error_and_default_comes_back() -> None:
    # KV space for 2048 tokens only: the planner's cache of this model on a tiny GPU
    f = fleet({"default": "a"}, a={}, b={"max_model_len": 4096})
    u = units(f)
    u["b"] = SimUnit(
        SimConfig(model="b", max_model_len=16, max_num_seqs=1),
        f.deployments["b"].port,
        start_error="The model's max seq len (4096) is larger than the maximum number of "
        "tokens that can be stored in KV cache (2048). the estimated maximum model length is "
        "2048. Try increasing `gpu_memory_utilization` or decreasing `max_model_len`",
    )
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    async with running(c, u):
        while c.state("a") != "ready":  # the default is brought up at start
            await asyncio.sleep(0.01)
        info = await c.ensure_ready("b", monotonic() + 10)
        assert info is not None
        assert "estimated maximum model length is 2048" in info.message
        assert c.state("b") == "failed" and "estimated maximum" in str(c.status()["b"]["error"])
        while c.state("a") != "ready":  # the host's default returns
            await asyncio.sleep(0.01)
        # refused at once for a while, not started again per request
        assert await c.ensure_ready("b", monotonic() + 10) is not None
        assert u["b"].starts == 1


async def test_idle_stop_then_the_default_returns() -> None:
    f = fleet({"default": "a"}, a={}, b={"idle_stop_s": 0.3})
    u = units(f)
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    async with running(c, u):
        assert None is await c.ensure_ready("b", monotonic() + 10)
        assert (c.state("a"), c.state("b")) == ("off", "ready")
        while c.state("b") != "off":
            await asyncio.sleep(0.02)
        while c.state("a") != "ready":
            await asyncio.sleep(0.02)
        assert u["b"].server is None


async def test_a_load_wait_shorter_than_the_start_refuses_but_the_start_goes_on() -> None:
    f = fleet(a={})
    u = units(f, startup_s=0.6)
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    async with running(c, u):
        info = await c.ensure_ready("a", monotonic() + 0.1)
        assert info is not None
        assert "is still starting" in info.message and "load wait ran out" in info.message
        assert None is await c.ensure_ready("a", monotonic() + 10)
        assert u["a"].starts == 1


async def test_swap_aware_lets_the_loaded_model_finish_its_run() -> None:
    for policy, held in (("swap_aware", True), ("fifo", False)):
        f = fleet(a={}, b={})
        u = units(f)
        traffic = Traffic()
        c = Controller(f, u, policy=policy, tick_s=0.05, poll_s=0.05)
        c.attach(traffic)
        async with running(c, u):
            assert None is await c.ensure_ready("a", monotonic() + 10)
            c.deps["b"].start_s = 0.2  # measured before: b starts in 0.2 s
            # b's request came first; a's run (3 requests still queued for it) came after
            traffic.queued["b"], traffic.arrived["b"] = 1, monotonic()
            traffic.queued["a"], traffic.arrived["a"] = 3, monotonic() + 1
            wanted = asyncio.ensure_future(c.ensure_ready("b", monotonic() + 5))
            await asyncio.sleep(0.3)
            assert (c.state("a") == "ready") is held, policy
            traffic.queued["a"] = 0
            assert await wanted is None
            assert c.state("b") == "ready"


async def test_swap_aware_hold_ends_before_the_waiting_requests_deadline() -> None:
    f = fleet(a={}, b={})
    u = units(f)
    traffic = Traffic()
    c = Controller(f, u, tick_s=0.05, poll_s=0.05)
    c.attach(traffic)
    async with running(c, u):
        assert None is await c.ensure_ready("a", monotonic() + 10)
        c.deps["b"].start_s = 0.2
        traffic.queued["a"] = 100  # a never runs out of work
        deadline = monotonic() + 2.0
        assert None is await c.ensure_ready("b", deadline)  # swapped in time anyway
        assert monotonic() < deadline and c.state("b") == "ready"


async def test_wake_on_lan_sends_the_magic_packet_and_a_host_that_never_wakes_is_refused() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    mac = "3c:7c:3f:1e:22:b0"
    # ssh to a loopback port where nothing listens: the host stays "asleep"
    dead = free_port()
    f = Fleet.model_validate(
        {
            "hosts": {
                "pc": {
                    "address": "127.0.0.1",
                    "transport": "ssh",
                    "ssh": {"port": dead},
                    "gpus": [{"memory_gib": 24, "arch": "ampere"}],
                    "wake": {"mac": mac, "address": "127.0.0.1", "port": port},
                    "wake_timeout_s": 1.0,
                }
            },
            "deployments": {
                "a": {"host": "pc", "port": free_port(), "model": "m", "on_demand": True}
            },
        }
    )
    from fleetgate.control import host_powers

    u = units(f)
    c = Controller(f, u, host_powers(f), tick_s=0.05, poll_s=0.1)
    async with running(c, u):
        started = monotonic()
        info = await c.ensure_ready("a", monotonic() + 30)
        assert info is not None
        assert monotonic() - started >= 1.0
        assert "did not wake within wake_timeout_s (1 s)" in info.message
    packet = await asyncio.get_running_loop().sock_recv(listener, 1024)
    listener.close()
    assert packet == magic_packet(mac)
    assert packet[:6] == b"\xff" * 6 and packet[6:] == bytes.fromhex("3c7c3f1e22b0") * 16
    assert u["a"].starts == 0


async def test_an_idle_host_is_suspended_over_its_transport_then_woken_for_a_request(
    caplog: Any,
) -> None:
    """The suspend command goes over ssh to a loopback port where nothing listens (it is not
    run on this machine); the decision, its log line and the wake that follows are real."""
    caplog.set_level(logging.INFO, "fleetgate.control")
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    f = Fleet.model_validate(
        {
            "hosts": {
                "pc": {
                    "address": "127.0.0.1",
                    "os": "windows",
                    "transport": "ssh",
                    "ssh": {"port": free_port()},
                    "gpus": [{"memory_gib": 24, "arch": "ampere"}],
                    "wake": {
                        "mac": "3c7c3f1e22b0",
                        "address": "127.0.0.1",
                        "port": listener.getsockname()[1],
                    },
                    "wake_timeout_s": 0.5,
                    "suspend_after_idle_s": 0.2,
                }
            },
            "deployments": {
                "a": {"host": "pc", "port": free_port(), "model": "m", "on_demand": True}
            },
        }
    )
    from fleetgate.control import host_powers
    from fleetgate.control.units import SUSPEND_COMMANDS

    u = units(f)
    c = Controller(f, u, host_powers(f), tick_s=0.05, poll_s=0.1)
    async with running(c, u):
        while not any('"host_suspend"' in r.message for r in caplog.records):
            await asyncio.sleep(0.05)
        info = await c.ensure_ready("a", monotonic() + 30)
        assert info is not None and "did not wake" in info.message
    packet = await asyncio.get_running_loop().sock_recv(listener, 1024)
    listener.close()
    assert packet == magic_packet("3c:7c:3f:1e:22:b0")
    assert "SetSuspendState" in SUSPEND_COMMANDS["windows"]
