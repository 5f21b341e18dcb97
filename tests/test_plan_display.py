"""The memory bar: exactly ``width`` cells, segments in proportion, an overcommitted KV empty."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.plan import DeploymentPlan, memory_bar
from fleetgate.plan.display import SEGMENTS

STYLES = [style for _, _, style, _ in SEGMENTS]


def make_plan(**values: float) -> DeploymentPlan:
    """A plan on a 12 GiB GPU at util 0.9: weights 5, activation 0.5, overhead 0.3, KV 5."""
    plan = DeploymentPlan(
        name="d",
        model="m",
        gpu="RTX 3060 12GB",
        gpu_memory_gib=12.0,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.9,
        budget_gib=10.8,
        max_model_len=8192,
        max_num_seqs=2,
        max_num_batched_tokens=2048,
        kv_cache_dtype="auto",
        quantization="awq",
        weights_gib=5.0,
        activation_gib=0.5,
        overhead_gib=0.3,
        available_kv_gib=5.0,
        kv_bytes_per_token=131072,
        kv_cache_tokens=40960,
        max_concurrency=5.0,
        max_model_len_fit=40944,
        fits=True,
    )
    return replace(plan, **values)


def cells(plan: DeploymentPlan, width: int = 60) -> dict[str, int]:
    """Cells per segment style in the bar line (the first line of the rendered text)."""
    text = memory_bar(plan, width)
    bar_end = text.plain.index("\n")
    counts = dict.fromkeys(STYLES, 0)
    for span in text.spans:
        if span.end <= bar_end and span.style in counts:
            counts[str(span.style)] += span.end - span.start
    return counts


def bar_line(plan: DeploymentPlan, width: int = 60) -> str:
    return memory_bar(plan, width).plain.split("\n")[0]


@pytest.mark.parametrize("width", [5, 10, 37, 60, 80, 123])
def test_bar_is_exactly_width_cells(width: int) -> None:
    line = bar_line(make_plan(), width)
    assert line.startswith("[") and line.endswith("]")
    assert len(line) == width + 2
    assert sum(cells(make_plan(), width).values()) == width


def test_segments_are_proportional() -> None:
    # 12 GiB in 60 cells: 5 cells per GiB
    c = cells(
        make_plan(weights_gib=4.0, activation_gib=0.4, overhead_gib=0.4, available_kv_gib=6.0)
    )
    assert c == {"magenta": 20, "yellow": 2, "red": 2, "green": 30, "bright_black": 6}


def test_rounding_keeps_the_total() -> None:
    # thirds of a cell everywhere: largest remainders get the spare cells, total stays 60
    plan = make_plan(
        gpu_memory_gib=9.0,
        budget_gib=8.1,
        weights_gib=3.05,
        activation_gib=1.55,
        overhead_gib=0.65,
        available_kv_gib=2.85,
    )
    c = cells(plan)
    assert sum(c.values()) == 60
    for (_, attr, style, _), got in zip(SEGMENTS, c.values(), strict=True):
        exact = getattr(plan, attr) / 9.0 * 60
        assert abs(got - exact) < 1, (style, got, exact)


def test_negative_kv_draws_empty() -> None:
    # a 70B model on 12 GiB: weights alone exceed the budget, KV is negative
    plan = make_plan(weights_gib=16.0, available_kv_gib=-5.9, fits=False, kv_cache_tokens=0)
    c = cells(plan)
    assert c["green"] == 0
    assert sum(c.values()) == 60
    assert c["magenta"] > 50  # weights fill the bar
    legend = memory_bar(plan).plain.split("\n")[1]
    assert "KV cache -5.90" in legend  # the legend still tells the real figure


def test_legend_lists_every_segment_in_gib() -> None:
    legend = memory_bar(make_plan()).plain.split("\n")[1]
    for label, value in [
        ("weights", "5.00"),
        ("activation", "0.50"),
        ("overhead", "0.30"),
        ("KV cache", "5.00"),
        ("headroom", "1.20"),
    ]:
        assert f"{label} {value}" in legend


def test_all_zero_plan_still_draws_a_full_bar() -> None:
    plan = make_plan(
        gpu_memory_gib=0.0,
        budget_gib=0.0,
        weights_gib=0.0,
        activation_gib=0.0,
        overhead_gib=0.0,
        available_kv_gib=0.0,
    )
    assert len(bar_line(plan, 20)) == 22


@given(
    weights=st.floats(0.01, 200.0),
    activation=st.floats(0.0, 10.0),
    overhead=st.floats(0.0, 10.0),
    kv=st.floats(-50.0, 200.0),
    headroom=st.floats(0.0, 10.0),
    width=st.integers(1, 200),
)
def test_width_holds_for_any_split(
    weights: float, activation: float, overhead: float, kv: float, headroom: float, width: int
) -> None:
    plan = make_plan(
        gpu_memory_gib=20.0 + headroom,
        budget_gib=20.0,
        weights_gib=weights,
        activation_gib=activation,
        overhead_gib=overhead,
        available_kv_gib=kv,
    )
    c = cells(plan, width)
    assert sum(c.values()) == width
    assert len(bar_line(plan, width)) == width + 2
    if kv <= 0:
        assert c["green"] == 0
