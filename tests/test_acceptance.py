"""``fleetgate check``: the acceptance criteria pass on the reference fleet, and can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.fleetfile import load_fleet
from fleetgate.local.acceptance import broken_change, burst_model, rollback_fleet
from fleetgate.local.vllm_shim import KV_ENV, SPEED_ENV, parse
from fleetgate.sim import SimConfig, SimServer

HOMELAB = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"
runner = CliRunner()


def test_burst_model_is_the_burst_profile_of_the_concurrency_2_backend() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    assert burst_model(fleet) == "llama31-8b-wintermute-burst"


def test_the_broken_change_does_not_fit_the_kv_cache(tmp_path: Path) -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    good = rollback_fleet(fleet, tmp_path, "/bin/python")
    assert good.gateway is not None and fleet.gateway is not None
    # the whole fleet: every deployment, route, profile and alias
    assert set(good.deployments) == {"wintermute", "armitage"}
    assert good.gateway.routes == fleet.gateway.routes
    assert good.gateway.aliases == {
        "llama": "llama31-8b-wintermute",
        "qwen": "qwen2.5-7b-armitage",
    }
    bad = broken_change(good, "wintermute")
    dep = bad.deployments["wintermute"]
    kv = int(dep.env[KV_ENV])
    assert dep.max_model_len is not None and dep.max_model_len > kv
    assert good.deployments["wintermute"].max_model_len == 16384 <= kv
    # the routes on it take the longer context; the other deployment is left as it was
    assert bad.gateway is not None
    for name, route in bad.gateway.routes.items():
        if "wintermute" in route.deployments:
            assert route.max_input_tokens == dep.max_model_len - (route.max_output_tokens or 1024)
        else:
            assert route == good.gateway.routes[name]
    assert bad.deployments["armitage"] == good.deployments["armitage"]


def test_the_rollback_fleet_is_a_fleet_file_that_loads_back(tmp_path: Path) -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    good = rollback_fleet(fleet, tmp_path, "/bin/python")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(good.model_dump(mode="json", exclude_none=True)))
    loaded = load_fleet(path, strict_env=False)
    assert loaded.fleet == good
    keys = loaded.raw["gateway"]["api_keys"]  # the key stays a reference, never the secret
    assert [(k["name"], k["key"], k["routes"]) for k in keys] == [
        ("check", "${FLEETGATE_API_KEY}", ["*"])
    ]


def test_check_passes_on_the_homelab_fleet() -> None:
    result = runner.invoke(app, ["check", str(HOMELAB), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["ok"] is True
    assert [c["number"] for c in report["criteria"]] == [1, 2, 3, 4]
    rollback = report["criteria"][3]["data"]
    assert rollback["second"]["action"] == "rolled back"
    assert rollback["current"] == rollback["first"]["release"]
    assert "estimated maximum model length" in rollback["second"]["log_tail"]
    # the backend's gate failed, so the gateway's was skipped and the rollback began at once
    assert "gateway: health gate skipped" in " ".join(rollback["second"]["messages"])
    assert report["criteria"][1]["data"]["failed"] <= 1
    # after the rollback every route of the fleet passes its smoke test over HTTP again
    smoke = rollback["smoke_after_rollback"]
    assert smoke["ok"] is True
    checked = {c["model"] for c in smoke["checks"]}
    assert {"llama31-8b-wintermute", "qwen2.5-7b-armitage"} <= checked


def test_check_fails_against_a_backend_that_enforces_no_route_limits() -> None:
    # --url at a bare backend instead of the gateway: nothing enforces the routes' limits
    config = SimConfig(model="llama31-8b-wintermute", max_model_len=16384, max_num_seqs=2)
    with SimServer(config).run_in_thread() as sim:
        result = runner.invoke(
            app, ["check", str(HOMELAB), "--url", sim.url, "--no-rollback", "--json"]
        )
    assert result.exit_code == 1, result.output
    report = json.loads(result.output[result.output.index("{") :])
    by_number = {c["number"]: c for c in report["criteria"]}
    assert by_number[1]["ok"] is False
    assert 4 not in by_number


def test_the_rollback_host_runs_at_the_checks_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = load_fleet(HOMELAB, strict_env=False).fleet
    tps = []
    for speed, text in ((0.5, "0.5"), (40, "40")):
        doc = rollback_fleet(fleet, tmp_path, "/bin/python", speed=speed)
        dep = doc.deployments["wintermute"]
        assert dep.env[SPEED_ENV] == text
        monkeypatch.setenv(SPEED_ENV, dep.env[SPEED_ENV])
        tps.append(parse(["--model", "x", "--max-model-len", "4096"]).decode_tps)
    assert tps[1] == 80 * tps[0]
