"""Percentiles and summaries of a sample, the way load-test reports show them."""

from __future__ import annotations

import math
from collections.abc import Sequence

QUANTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50/p90/p95/p99 and max; ``None`` for an empty sample (JSON-friendly)."""
    data = sorted(values)
    if not data:
        return {"count": 0, "mean": None, **{f"p{q}": None for q in QUANTILES}, "max": None}
    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        **{f"p{q}": percentile(data, q) for q in QUANTILES},
        "max": data[-1],
    }
