"""``fleetgate up``: a local copy of the fleet, and the command's whole life as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fleetgate.local import free_port, localize
from fleetgate.spec import load_fleet

HOMELAB = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"


def test_localize_rewrites_a_copy_and_leaves_the_fleet_alone() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False, env={}).fleet
    before = fleet.model_dump()
    local = localize(fleet, gateway_port=0)
    assert fleet.model_dump() == before
    assert {h.address for h in local.fleet.hosts.values()} == {"127.0.0.1"}
    assert set(local.ports) == {"wintermute", "armitage"}
    assert {d.port for d in local.fleet.deployments.values()} == set(local.ports.values())
    assert local.fleet.gateway is not None and local.fleet.gateway.listen == "127.0.0.1"
    assert local.gateway_port != 0 and local.fleet.gateway.port == local.gateway_port
    # ${FLEETGATE_API_KEY} was unset: a session key, generated, long and random
    assert set(local.generated_keys) == {"owner"}
    assert local.api_key == local.generated_keys["owner"] and len(local.api_key) > 20
    assert localize(fleet, gateway_port=0).api_key != local.api_key
    # limits are untouched
    assert local.fleet.gateway.routes == fleet.gateway.routes  # type: ignore[union-attr]


def test_localize_keeps_a_key_that_is_set() -> None:
    env = {"FLEETGATE_API_KEY": "a-key-from-the-environment"}
    fleet = load_fleet(HOMELAB, strict_env=False, env=env).fleet
    local = localize(fleet)
    assert local.generated_keys == {}
    assert local.api_key == "a-key-from-the-environment"
    assert local.gateway_port == 4000  # the fleet file's


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_up_serves_the_fleet_until_sigterm() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLEETGATE_API_KEY"}
    env["COLUMNS"] = "200"
    code = "import sys; from fleetgate.cli import main; sys.argv[0] = 'fleetgate'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "up", str(HOMELAB), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        out = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            out.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(out)
        assert f"http://127.0.0.1:{port}" in text, text
        assert "llama31-8b-wintermute-burst" in text and "14000" in text
        key = re.search(r"export FLEETGATE_API_KEY=(\S+)", text)
        assert key, text
        status, body = _get(f"http://127.0.0.1:{port}/v1/models", key.group(1))
        assert status == 200
        ids = {m["id"] for m in body["data"]}
        assert {"llama31-8b-wintermute", "qwen2.5-7b-armitage", "llama", "qwen"} <= ids
        assert _get(f"http://127.0.0.1:{port}/v1/models")[0] == 401
        backend_ports = [int(p) for p in re.findall(r"\(sim :(\d+)\)", text)]
        assert len(set(backend_ports)) == 2
        assert _get(f"http://127.0.0.1:{backend_ports[0]}/v1/models")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    for p in [port, *backend_ports]:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=2)
        except urllib.error.URLError as exc:
            assert isinstance(exc.reason, ConnectionRefusedError)
        else:
            raise AssertionError(f"port {p} still answers after SIGTERM")
