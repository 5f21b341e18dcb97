"""vLLM's start-up free-memory check: one verdict for ``plan`` and ``validate``.

It moved here from the fleet file's cross checks: the check needs the vLLM version (NCCL
buffers count from 0.11) and what the host holds, which is the planner's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.fleetfile import load_fleet
from fleetgate.plan import plan_fleet, plan_problems
from fleetgate.plan.startup import startup_check

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homelab" / "fleet.yaml"
ENV = {"FLEETGATE_API_KEY": "sk-test-0123456789"}


def test_linux_headless_holds_only_the_cuda_context() -> None:
    # LMCache#3430: util 0.9764 on a 23.56 GiB A5000 started (0.56 GiB left for the context)
    assert startup_check(23.56, 0.9764).passes
    assert not startup_check(23.56, 0.99).passes


def test_windows_holds_the_wsl2_context_and_the_desktop() -> None:
    check = startup_check(11.76, 0.92, host_os="windows")
    assert not check.passes and not check.certain  # the desktop's share is an estimate
    assert check.held_gib == pytest.approx(2.3)
    assert "likely fails" in check.describe() and "0.8" in check.describe()
    measured = startup_check(11.76, 0.92, host_os="windows", desktop_reserve_gib=0.3)
    assert measured.certain and not measured.passes and measured.max_utilization == 0.86


def test_nccl_buffers_count_in_the_check() -> None:
    assert startup_check(23.55, 0.92).passes
    assert not startup_check(23.55, 0.92, nccl_gib=2.0).passes


@given(
    total=st.floats(min_value=4, max_value=200),
    reserve=st.floats(min_value=0, max_value=3),
    os=st.sampled_from(["linux", "windows"]),
)
def test_the_suggested_utilization_passes(total: float, reserve: float, os: str) -> None:
    check = startup_check(total, 0.99, host_os=os, desktop_reserve_gib=reserve)
    suggested = check.max_utilization
    if suggested > 0:
        again = startup_check(total, suggested, host_os=os, desktop_reserve_gib=reserve)
        assert again.passes
        assert (
            not startup_check(
                total, suggested + 0.01, host_os=os, desktop_reserve_gib=reserve
            ).passes
            or suggested + 0.01 > 1
        )


def _fleet(tmp_path: Path, host: dict[str, object], util: float) -> Path:
    lines = ["hosts:", "  box:"]
    lines += [f"    {k}: {v}" for k, v in host.items()]
    lines += [
        "    gpus: [RTX 3060 12GB]",
        "deployments:",
        "  main:",
        "    host: box",
        "    model: Qwen/Qwen2.5-7B-Instruct-AWQ",
        "    max_model_len: 8192",
        "    max_num_seqs: 2",
        f"    gpu_memory_utilization: {util}",
    ]
    path = tmp_path / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reference_fleet_plan_and_validate_say_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = load_fleet(EXAMPLE, strict_env=False).fleet
    plans = {p.name: p for p in plan_fleet(fleet)}
    problems = {p.path: p for p in plan_problems(fleet)}
    for name, suggested in (("wintermute", 0.8), ("armitage", 0.7)):
        plan = plans[name]
        assert plan.kv_fits and plan.verdict == "fits, but will likely NOT start"
        assert plan.startup is not None and plan.startup.max_utilization == suggested
        problem = problems[f"deployments.{name}.gpu_memory_utilization"]
        assert problem.level == "warning"
        assert plan.startup.describe() in problem.message
        assert f"lower gpu_memory_utilization to {suggested}" in problem.suggestion
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(EXAMPLE)], env=ENV)
    validated = runner.invoke(app, ["validate", str(EXAMPLE)], env=ENV)
    assert planned.exit_code == 0 and validated.exit_code == 0
    flat_plan, flat_validate = (" ".join(r.output.split()) for r in (planned, validated))
    for text in ("likely fails: vLLM needs 10.82 GiB free", "highest utilization that passes"):
        assert text in flat_plan and text in flat_validate


def test_a_measured_desktop_reserve_makes_it_an_error(tmp_path: Path) -> None:
    path = _fleet(tmp_path, {"os": "windows", "desktop_reserve_gib": 1.2}, 0.92)
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", str(path), "--json"])
    assert planned.exit_code == 1
    [p] = json.loads(planned.stdout)
    assert p["verdict"] == "will NOT start" and p["kv_fits"] and not p["fits"]
    assert p["startup"]["max_utilization"] == 0.78
    validated = runner.invoke(app, ["validate", str(path)])
    assert validated.exit_code == 1
    assert "deployments.main.gpu_memory_utilization" in validated.output
    # at the suggested utilization both pass
    fixed = _fleet(tmp_path, {"os": "windows", "desktop_reserve_gib": 1.2}, 0.78)
    assert runner.invoke(app, ["plan", str(fixed)]).exit_code == 0
    assert runner.invoke(app, ["validate", str(fixed)]).exit_code == 0


def test_desktop_reserve_must_not_be_negative(tmp_path: Path) -> None:
    path = _fleet(tmp_path, {"os": "linux", "desktop_reserve_gib": -1}, 0.9)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "desktop_reserve_gib" in result.output


def test_ad_hoc_plan_takes_the_host_os() -> None:
    args = ["plan", "--model", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--gpu", "RTX 4090", "--json"]
    [linux] = json.loads(CliRunner().invoke(app, args).stdout)
    assert linux["startup"]["passes"] and linux["verdict"] == "fits"
    result = CliRunner().invoke(
        app, [*args, "--host-os", "windows", "--desktop-reserve-gib", "1.5"]
    )
    assert result.exit_code == 1
    [windows] = json.loads(result.stdout)
    assert windows["verdict"] == "will NOT start" and windows["startup"]["max_utilization"] == 0.88


def _v026_fleet(tmp_path: Path, util: float) -> Path:
    # the V2 runner of 0.26 serves a dense Qwen2 and does not deduct its CUDA graphs
    path = tmp_path / f"fleet-{util}.yaml"
    path.write_text(
        "hosts:\n  box:\n    os: linux\n    gpus: [RTX 3060 12GB]\n"
        "deployments:\n  main:\n    host: box\n    model: Qwen/Qwen2.5-7B-Instruct-AWQ\n"
        f"    max_model_len: 8192\n    gpu_memory_utilization: {util}\n"
        "    image: vllm/vllm-openai:v0.26.0\n",
        encoding="utf-8",
    )
    return path


def test_graph_capture_room_is_a_warning_in_plan_and_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    tight = _v026_fleet(tmp_path, 0.96)
    planned = runner.invoke(app, ["plan", str(tight), "--json"])
    assert planned.exit_code == 0, planned.output
    [p] = json.loads(planned.stdout)
    assert (p["model_runner"], p["cudagraph_term"]) == ("V2", "zero (V2 runner)")
    assert p["verdict"] == "fits, but may die capturing CUDA graphs" and p["capture_short"]
    assert p["capture_gib"] > p["capture_room_gib"]
    validated = runner.invoke(app, ["validate", str(tight)])
    assert validated.exit_code == 0
    flat = " ".join(validated.output.split())
    assert "CUDA-graph capture may fail" in flat and "enforce_eager" in flat
    text = " ".join(runner.invoke(app, ["plan", str(tight)]).output.split())
    assert "graph capture short: CUDA graphs" in text
    # with more headroom the capture has room
    roomy = json.loads(
        runner.invoke(app, ["plan", str(_v026_fleet(tmp_path, 0.9)), "--json"]).stdout
    )
    assert roomy[0]["verdict"] == "fits" and not roomy[0]["capture_short"]
