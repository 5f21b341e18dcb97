"""Drawing a GPU's memory split as a bar, for terminals; the same split as data, for pages."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from fleetgate.plan.memory import DeploymentPlan

SEGMENTS = (
    ("weights", "weights_gib", "magenta", "█"),
    ("activation", "activation_gib", "yellow", "▓"),
    ("overhead", "overhead_gib", "red", "▒"),
    ("KV cache", "available_kv_gib", "green", "▆"),
    ("headroom", "headroom_gib", "bright_black", "░"),
)


def memory_bar(plan: DeploymentPlan, width: int = 60) -> Text:
    """One bar, ``width`` cells for the GPU's total memory, then a legend with GiB figures.

    Segment lengths are rounded by the largest-remainder method so they always sum to
    ``width``; a negative KV share (does not fit) draws as an empty segment.
    """
    values = [max(0.0, float(getattr(plan, attr))) for _, attr, _, _ in SEGMENTS]
    total = sum(values)
    if total <= 0:  # nothing known: all headroom
        values[-1], total = 1.0, 1.0
    exact = [v / total * width for v in values]
    cells = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - cells[i], reverse=True)
    for i in by_remainder[: width - sum(cells)]:
        cells[i] += 1
    bar = Text("[")
    for (_, _, style, char), n in zip(SEGMENTS, cells, strict=True):
        bar.append(char * n, style=style)
    bar.append("]")
    legend = Text()
    for (label, attr, style, char), _v in zip(SEGMENTS, values, strict=True):
        shown = getattr(plan, attr)
        legend.append(f" {char} ", style=style)
        legend.append(f"{label} {shown:.2f}" + (" (over budget)" if shown < 0 else ""))
    return Text.assemble(bar, "\n", legend)


def memory_split(plan: DeploymentPlan) -> dict[str, Any]:
    """The bar's segments as plain data (the gateway's /ui page draws it; it does not plan)."""
    return {
        "gpu": plan.gpu,
        "total_gib": plan.gpu_memory_gib,
        "fits": plan.fits,
        "segments": [
            {"label": label, "gib": round(float(getattr(plan, attr)), 2)}
            for label, attr, _, _ in SEGMENTS
        ],
    }
