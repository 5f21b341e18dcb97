"""The burst report as one self-contained HTML page: tables and inline SVG plots, no network."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

from fleetgate.probes.burst import BurstReport

_W, _H, _PAD = 720, 260, 48


def _fmt(value: object, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value * 1000:.1f} ms" if unit == "s" else f"{value:.2f}"
    return str(value)


def _axes(title: str, xmax: float, ymax: float, xlabel: str, ylabel: str) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_W / 2}" y="16" text-anchor="middle" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - 10}" y2="{_H - _PAD}" stroke="#444"/>',
        f'<line x1="{_PAD}" y1="24" x2="{_PAD}" y2="{_H - _PAD}" stroke="#444"/>',
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" '
        f'text-anchor="middle">{html.escape(ylabel)}</text>',
    ]
    for i in range(5):
        y = _H - _PAD - (_H - _PAD - 24) * i / 4
        parts.append(
            f'<text x="{_PAD - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
            f"{ymax * i / 4:.3g}</text>"
        )
        x = _PAD + (_W - 10 - _PAD) * i / 4
        parts.append(
            f'<text x="{x:.1f}" y="{_H - _PAD + 14}" text-anchor="middle" font-size="10">'
            f"{xmax * i / 4:.3g}</text>"
        )
    return parts


def _xy(x: float, y: float, xmax: float, ymax: float) -> tuple[float, float]:
    return (
        _PAD + (_W - 10 - _PAD) * (x / xmax if xmax else 0),
        _H - _PAD - (_H - _PAD - 24) * (y / ymax if ymax else 0),
    )


def scatter_svg(
    title: str, points: Sequence[tuple[float, float, bool]], xlabel: str, ylabel: str
) -> str:
    """Points (x, y, ok): ok ones blue, failures red on the x axis."""
    xmax = max((p[0] for p in points), default=1.0) or 1.0
    ymax = max((p[1] for p in points), default=1.0) or 1.0
    parts = _axes(title, xmax, ymax, xlabel, ylabel)
    for x, y, ok in points:
        cx, cy = _xy(x, y if ok else 0, xmax, ymax)
        color = "#2563eb" if ok else "#dc2626"
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def series_svg(title: str, values: Sequence[float], xlabel: str, ylabel: str) -> str:
    """One value per second as a polyline."""
    xmax = float(max(len(values) - 1, 1))
    ymax = max(values, default=1.0) or 1.0
    parts = _axes(title, xmax, ymax, xlabel, ylabel)
    pts = " ".join("{:.1f},{:.1f}".format(*_xy(i, v, xmax, ymax)) for i, v in enumerate(values))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#16a34a" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(title: str, values: Sequence[float], xlabel: str, bins: int = 30) -> str:
    if not values:
        return ""
    top = max(values) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int(v / top * bins))] += 1
    ymax = float(max(counts))
    parts = _axes(title, top, ymax, xlabel, "requests")
    width = (_W - 10 - _PAD) / bins
    for i, c in enumerate(counts):
        x, y = _xy(top * i / bins, c, top, ymax)
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width - 1:.1f}" '
            f'height="{_H - _PAD - y:.1f}" fill="#7c3aed"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def per_second(report: BurstReport) -> tuple[list[float], list[float]]:
    """Requests finished and output tokens per one-second bin of the run."""
    seconds = max(1, math.ceil(report.wall_s))
    done, tokens = [0.0] * seconds, [0.0] * seconds
    for r in report.results:
        if r.ok:
            b = min(seconds - 1, int(r.start_s + r.e2e_s))
            done[b] += 1
            tokens[b] += r.completion_tokens or 0
    return done, tokens


# Times are measured by the client from its first send, so they include the wait in the
# gateway's queue; the gateway says how long that was, shown on its own row.
LATENCY_ROWS = (
    ("time to first token (includes the gateway queue wait)", "ttft_s"),
    ("gateway queue wait (x-fleetgate-queue-wait-ms)", "queue_wait_s"),
    ("inter-token latency", "itl_s"),
    ("end to end (includes the gateway queue wait)", "e2e_s"),
)


def burst_html(report: BurstReport) -> str:
    """The page: configuration, summary, latency percentiles, failures, and four plots."""
    s = report.summary()
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(s[k]))}</td></tr>"
        for k in (
            "requests",
            "succeeded",
            "failed",
            "responses_429",
            "retried_requests",
            "wall_s",
            "requests_per_s",
            "output_tokens_per_s",
        )
    )
    lat = "".join(
        f"<tr><th>{name}</th>"
        + "".join(f"<td>{_fmt(s[key][q], 's')}</td>" for q in ("p50", "p90", "p95", "p99", "max"))
        + "</tr>"
        for name, key in LATENCY_ROWS
    )
    reasons = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>"
        for k, v in {**s["by_status"], **s["failures_by_reason"]}.items()
    )
    done, tokens = per_second(report)
    ok = [r for r in report.results if r.ok]
    plots = [
        scatter_svg(
            "End-to-end latency by start time",
            [(r.start_s, r.e2e_s, r.ok) for r in report.results],
            "request start (s)",
            "latency (s)",
        ),
        series_svg("Output tokens per second", tokens, "time (s)", "tokens/s"),
        series_svg("Requests finished per second", done, "time (s)", "requests/s"),
        histogram_svg("End-to-end latency", [r.e2e_s for r in ok], "latency (s)"),
        histogram_svg(
            "Time to first token, including the gateway queue wait",
            [r.ttft_s for r in ok if r.ttft_s is not None],
            "TTFT (s)",
        ),
        histogram_svg(
            "Gateway queue wait",
            [r.queue_wait_s for r in ok if r.queue_wait_s is not None],
            "queue wait (s)",
        ),
    ]
    config = html.escape(json.dumps(report.to_dict()["config"], indent=2))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fleetgate burst: {html.escape(report.config.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #111; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ text-align: left; background: #f4f4f5; }}
svg {{ display: block; margin: 1em 0; font-family: sans-serif; font-size: 12px; }}
</style></head><body>
<h1>Burst against {html.escape(report.config.model)}</h1>
<p>{html.escape(report.url)}</p>
<h2>Summary</h2><table>{rows}</table>
<h2>Latency</h2>
<table><tr><th></th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>{lat}</table>
<h2>Outcomes (final status; failure reasons)</h2><table>{reasons}</table>
<h2>Plots</h2>
{"".join(plots)}
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""
