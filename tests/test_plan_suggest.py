"""``plan --suggest``: the settings table, each figure a full plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.models import load_model_info
from fleetgate.plan import PlanInput, plan_deployment
from fleetgate.plan.suggest import SEQUENCES, suggest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homelab" / "fleet.yaml"


def spec() -> PlanInput:
    info = load_model_info("Qwen/Qwen2.5-7B-Instruct-AWQ")
    return PlanInput(
        "q", info, 11.76, "RTX 3060 12GB", max_model_len=16384, max_num_seqs=4, host_os="windows"
    )


def test_each_dtype_and_sequence_count() -> None:
    s = suggest(spec())
    auto, fp8 = s.options
    assert (auto.kv_cache_dtype, fp8.kv_cache_dtype) == ("auto", "fp8")
    assert fp8.kv_bytes_per_token * 2 == auto.kv_bytes_per_token
    assert s.fp16_cost_tokens == fp8.kv_cache_tokens - auto.kv_cache_tokens > 0
    for o in s.options:
        contexts = [o.largest_context[n] for n in SEQUENCES]
        assert contexts == sorted(contexts, reverse=True)  # more sequences, less context each
        # n sequences of that context fit: re-plan at it and check vLLM's own verdict for one
        for n in SEQUENCES:
            at = plan_deployment(
                replace(
                    spec(),
                    max_num_seqs=n,
                    kv_cache_dtype=o.kv_cache_dtype,
                    max_model_len=o.largest_context[n],
                )
            )
            assert at.kv_fits and at.max_concurrency >= n * 0.99
    # the most full-length sequences matches the plan's concurrency (whole requests)
    asked = plan_deployment(replace(spec(), kv_cache_dtype="fp8"))
    assert fp8.most_sequences == int(asked.max_concurrency)


def test_the_highest_utilization_that_starts() -> None:
    s = suggest(spec())
    assert s.max_utilization == 0.8  # 11.76 GiB, WSL2 context 1.3 + desktop estimate 1.0
    at = plan_deployment(replace(spec(), gpu_memory_utilization=s.max_utilization))
    assert at.startup is not None and at.startup.passes
    assert s.tokens_at_max_utilization == at.kv_cache_tokens


def test_cli_suggest_for_a_fleet_and_ad_hoc() -> None:
    runner = CliRunner()
    env = {"FLEETGATE_API_KEY": "sk-test-0123456789"}
    out = runner.invoke(app, ["plan", str(EXAMPLE), "--suggest", "--json"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [d["name"] for d in data] == ["wintermute", "armitage"]
    assert set(data[0]["options"][0]["largest_context"]) == {"1", "2", "4", "8"}
    human = runner.invoke(
        app,
        ["plan", "--model", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--gpu", "RTX 4090", "--suggest"],
    )
    assert human.exit_code == 0, human.output
    text = " ".join(human.output.split())
    assert "fp16 (auto) instead of fp8 costs" in text
    assert "highest gpu_memory_utilization that passes the start-up check" in text
