"""The gateway's own counters and histograms over the last few minutes, for live views.

Prometheus keeps history for dashboards; the page and ``fleetgate top`` have no Prometheus
behind them, so a sampler keeps a few minutes of cumulative values and a view subtracts the
oldest sample still in the window from the values read now.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from time import monotonic

from prometheus_client import CollectorRegistry

# (sample name, sorted label pairs) -> cumulative value
Series = tuple[str, tuple[tuple[str, str], ...]]
Values = dict[Series, float]

WINDOW_S = 300.0
SAMPLE_S = 5.0


def read_cumulative(registry: CollectorRegistry) -> Values:
    """Every counter and histogram sample of ``registry`` (gauges are read live, not here)."""
    values: Values = {}
    for family in registry.collect():
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


class Window:
    """Cumulative samples over the last ``window_s``; the first one is the all-zero start."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, Values]] = deque([(monotonic(), {})])

    def add(self, values: Values, at: float | None = None) -> None:
        now = monotonic() if at is None else at
        self._samples.append((now, values))
        # keep one sample at or before the window's start, so the window stays full
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def delta(self, now_values: Values, at: float | None = None) -> Delta:
        """What happened since the window's start (and how many seconds that covers)."""
        now = monotonic() if at is None else at
        start, base = self._samples[0]
        for t, values in self._samples:
            if t <= now - self.window_s:
                start, base = t, values
        diff = {k: v - base.get(k, 0.0) for k, v in now_values.items()}
        return Delta(diff, max(now - start, 1e-9))


class Delta:
    """What the counters and histograms did over a window, indexed by sample name."""

    def __init__(self, values: Mapping[Series, float], seconds: float) -> None:
        self.seconds = seconds
        self._by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for (name, labels), v in values.items():
            self._by_name.setdefault(name, []).append((dict(labels), v))

    def _matching(self, name: str, match: dict[str, str]) -> Iterable[tuple[dict[str, str], float]]:
        for labels, v in self._by_name.get(name, ()):
            if all(labels.get(k) == want for k, want in match.items()):
                yield labels, v

    def total(self, name: str, **match: str) -> float:
        """The sum of ``name``'s series whose labels include ``match``."""
        return sum(v for _, v in self._matching(name, match))

    def quantile(self, histogram: str, q: float, **match: str) -> float | None:
        """``histogram_quantile`` as Prometheus computes it, over the matching series."""
        buckets: dict[float, float] = {}
        for labels, v in self._matching(f"{histogram}_bucket", match):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        return quantile_of_buckets(buckets.items(), q)


def quantile_of_buckets(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Linear interpolation inside the bucket holding rank ``q``; None with no observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    count = ordered[-1][1]
    rank = q * count
    lower_bound, lower_count = 0.0, 0.0
    for le, cum in ordered:
        if cum >= rank:
            if math.isinf(le):
                return lower_bound  # above the highest finite bucket: its bound is all we know
            if cum == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (cum - lower_count)
        lower_bound, lower_count = le, cum
    return ordered[-1][0]
