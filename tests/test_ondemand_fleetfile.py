"""The fleet file's on-demand fields: schema, defaults, and the cross checks they need."""

from __future__ import annotations

import pytest

from fleetgate.fleetfile import FleetError, check_fleet, parse_fleet, route_limits

FLEET = """
hosts:
  box:
    transport: local
    gpus: [RTX 3090]
    ram_gib: 64
    default: a
    wake: {mac: "3C-7C-3F-1E-22-B0", address: 192.168.1.255}
    wake_timeout_s: 90
  gw: {transport: local}
deployments:
  a: {host: box, port: 8001, model: Qwen/Qwen2.5-0.5B-Instruct, on_demand: true, swap: sleep,
      idle_stop_s: 120, load_timeout_s: 200, max_model_len: 4096}
  b: {host: box, port: 8002, model: Qwen/Qwen2.5-0.5B-Instruct, on_demand: true,
      max_model_len: 4096}
gateway:
  host: gw
  routes:
    both: {deployments: [a, b], routing: ordered, load_wait_s: 60}
    one: {deployments: [b]}
"""


def _fleet(text: str = FLEET):
    return parse_fleet(text).fleet


def _messages(text: str) -> list[str]:
    return [f"{p.level} {p.path}: {p.message}" for p in check_fleet(_fleet(text))]


def test_fields_parse_with_their_defaults() -> None:
    fleet = _fleet()
    box = fleet.hosts["box"]
    assert box.wake is not None
    assert box.wake.mac == "3c:7c:3f:1e:22:b0"  # normalised
    assert (box.wake.address, box.wake.port, box.wake_timeout_s) == ("192.168.1.255", 9, 90)
    assert box.suspend_after_idle_s is None and box.default == "a"
    a, b = fleet.deployments["a"], fleet.deployments["b"]
    assert (a.on_demand, a.swap, a.idle_stop_s, a.load_timeout_s) == (True, "sleep", 120, 200)
    assert (b.swap, b.idle_stop_s, b.load_timeout_s, b.gpu) == ("restart", 600, 300, 0)
    assert fleet.gateway is not None
    assert fleet.gateway.routes["both"].routing == "ordered"
    assert fleet.gateway.routes["one"].routing == "least_outstanding"
    assert route_limits(fleet, "both").load_wait_s == 60
    assert route_limits(fleet, "one").load_wait_s == 180  # the gateway default
    assert [m for m in _messages(FLEET) if m.startswith("error")] == []


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ('mac: "3C-7C-3F-1E-22-B0"', 'mac: "3c:7c:3f:1e:22"', "is not a MAC address"),
        ('mac: "3C-7C-3F-1E-22-B0"', 'mac: "3c:7c:3f-1e:22:b0"', "is not a MAC address"),
        ("address: 192.168.1.255", "address: wintermute.lan", "is not an IPv4 address"),
        ("swap: sleep", "swap: hibernate", "'restart' or 'sleep'"),
        ("routing: ordered", "routing: random", "'least_outstanding' or 'ordered'"),
        ("idle_stop_s: 120", "idle_stop_s: 0", "greater than 0"),
        ("load_wait_s: 60", "load_wait_s: -1", "greater than 0"),
    ],
)
def test_bad_values_are_refused_with_a_reason(old: str, new: str, said: str) -> None:
    with pytest.raises(FleetError) as info:
        parse_fleet(FLEET.replace(old, new))
    assert said in str(info.value)


def test_mac_without_separators_is_accepted() -> None:
    fleet = _fleet(FLEET.replace('"3C-7C-3F-1E-22-B0"', "3c7c3f1e22b0"))
    assert fleet.hosts["box"].wake.mac == "3c:7c:3f:1e:22:b0"  # type: ignore[union-attr]


def test_default_must_be_a_deployment_of_the_host() -> None:
    text = FLEET.replace("default: a", "default: c")
    assert any(
        "hosts.box.default: 'c' is not a deployment on host 'box'" in m for m in _messages(text)
    )


def test_suspend_needs_wake_and_on_demand_deployments() -> None:
    text = FLEET.replace(
        'wake: {mac: "3C-7C-3F-1E-22-B0", address: 192.168.1.255}', "suspend_after_idle_s: 600"
    )
    assert any(
        m.startswith("error hosts.box.suspend_after_idle_s") and "can never be woken" in m
        for m in _messages(text)
    )
    text = FLEET.replace("wake_timeout_s: 90", "suspend_after_idle_s: 600").replace(
        "on_demand: true, swap: sleep", "swap: sleep"
    )
    said = _messages(text)
    assert any("suspending it takes them down" in m for m in said)
    assert any("deployments.a.on_demand" in m and m.startswith("warning") for m in said)


def test_gpu_index_must_exist() -> None:
    text = FLEET.replace("max_model_len: 4096}\ngateway", "max_model_len: 4096, gpu: 1}\ngateway")
    assert any("deployments.b.gpu: GPU 1" in m for m in _messages(text))
