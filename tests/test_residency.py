"""What can be resident together on one GPU (plan/residency.py), and what validate says."""

from __future__ import annotations

from typing import Any

from fleetgate.fleetfile import Fleet, gpu_sharing
from fleetgate.plan import gpu_residency, plan_problems, sleep_ram_gib


def fleet(deps: dict[str, dict[str, Any]], **host: Any) -> Fleet:
    return Fleet.model_validate(
        {
            "hosts": {"box": {"gpus": [{"memory_gib": 24, "arch": "ampere"}], **host}},
            "deployments": {
                name: {"host": "box", "port": 8001 + i, "model": "Qwen/Qwen2.5-0.5B", **d}
                for i, (name, d) in enumerate(deps.items())
            },
        }
    )


def test_two_on_demand_at_090_take_turns() -> None:
    f = fleet({"a": {"on_demand": True}, "b": {"on_demand": True}})
    (gpu,) = gpu_residency(f)
    assert gpu.budgets == {"a": 0.9 * 24, "b": 0.9 * 24}
    assert gpu.resident_sets() == (("a",), ("b",))
    assert gpu.fits(["a"]) and not gpu.fits(["a", "b"])
    assert plan_problems(f) == []


def test_small_budgets_share_the_gpu() -> None:
    f = fleet(
        {
            "a": {"on_demand": True, "gpu_memory_utilization": 0.45},
            "b": {"on_demand": True, "gpu_memory_utilization": 0.45},
            "c": {"on_demand": True, "gpu_memory_utilization": 0.5},
        }
    )
    (gpu,) = gpu_residency(f)
    assert gpu.resident_sets() == (("a", "b"), ("a", "c"), ("b", "c"))


def test_a_sleeping_neighbour_keeps_its_residue() -> None:
    f = fleet(
        {
            "a": {"on_demand": True, "gpu_memory_utilization": 0.95, "swap": "sleep"},
            "b": {"on_demand": True, "gpu_memory_utilization": 0.99, "swap": "sleep"},
        }
    )
    (gpu,) = gpu_residency(f)
    assert gpu.fits(["a"], asleep=["b"])  # 22.8 + 0.5 <= 24
    assert not gpu.fits(["b"], asleep=["a"])  # 23.76 + 0.5 > 24


def test_an_on_demand_that_never_fits_beside_the_always_on_is_explained() -> None:
    f = fleet(
        {
            "base": {"gpu_memory_utilization": 0.6},
            "extra": {"on_demand": True, "gpu_memory_utilization": 0.5},
        }
    )
    (problem,) = plan_problems(f)
    assert problem.path == "deployments.extra.gpu_memory_utilization"
    assert "needs 12.00 GiB of GPU 0 on 'box'" in problem.message
    assert "14.40 GiB held by the always-on base" in problem.message
    # 24 GiB less the CUDA context (0.3) and base's 14.40 leaves 9.30: 0.38 x 24 = 9.12 fits
    assert "at most 0.38," in (problem.suggestion or "")


def test_always_on_deployments_over_the_gpu_are_an_error() -> None:
    f = fleet({"a": {}, "b": {}})
    (problem,) = plan_problems(f)
    assert problem.path == "hosts.box.gpus.0"
    assert (
        "a 21.60 + b 21.60 = 43.20 GiB together, the GPU has 23.70 GiB (24.00 less 0.30 held "
        "before vLLM starts)" in problem.message
    )


def test_windows_desktop_reserve_counts() -> None:
    f = fleet(
        {
            "a": {"on_demand": True, "gpu_memory_utilization": 0.5},
            "b": {"on_demand": True, "gpu_memory_utilization": 0.5},
        },
        os="windows",
    )
    (gpu,) = gpu_residency(f)
    # the start-up check's WSL2 CUDA context (1.3) and the desktop estimate (1.0)
    assert gpu.reserve_gib == 2.3 and gpu.resident_sets() == (("a",), ("b",))


def test_sleeping_weights_must_fit_host_ram() -> None:
    seven_b = {"on_demand": True, "swap": "sleep", "model": "Qwen/Qwen2.5-7B"}
    deps = {"a": seven_b, "b": seven_b}
    need = sleep_ram_gib(fleet(deps), "box")
    assert set(need) == {"a", "b"} and 14 < need["a"] < 16  # Qwen2.5-7B in bf16
    problems = plan_problems(fleet(deps, ram_gib=16))
    (problem,) = [p for p in problems if p.path == "hosts.box.ram_gib"]
    assert "when all sleep, the host has 16 GiB" in problem.message
    assert not [p for p in plan_problems(fleet(deps, ram_gib=64)) if p.path == "hosts.box.ram_gib"]


def test_tensor_parallel_spans_gpus() -> None:
    f = Fleet.model_validate(
        {
            "hosts": {"box": {"gpus": ["RTX 3090", "RTX 3090"]}},
            "deployments": {
                "big": {"host": "box", "model": "m", "tensor_parallel_size": 2, "on_demand": True},
                "small": {"host": "box", "port": 8001, "model": "m", "gpu": 1, "on_demand": True},
            },
        }
    )
    assert gpu_sharing(f) == {("box", 0): ("big",), ("box", 1): ("big", "small")}


def test_plan_shows_each_shared_gpus_resident_sets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from fleetgate.cli.app import app

    path = tmp_path / "fleet.yaml"
    path.write_text(
        "hosts:\n  box: {gpus: [{memory_gib: 24, arch: ampere}]}\n"
        "deployments:\n"
        "  a: {host: box, port: 8001, model: Qwen/Qwen2.5-0.5B, on_demand: true}\n"
        "  b: {host: box, port: 8002, model: Qwen/Qwen2.5-0.5B, on_demand: true,"
        " gpu_memory_utilization: 0.45}\n"
        "  c: {host: box, port: 8003, model: Qwen/Qwen2.5-0.5B, on_demand: true,"
        " gpu_memory_utilization: 0.45}\n"
    )
    result = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "GPU 0 of box" in result.output
    assert "resident together: b + c = 21.60 GiB" in result.output
    assert "resident together: a = 21.60 GiB" in result.output
