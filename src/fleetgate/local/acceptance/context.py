"""Criterion 1: every route and profile accepts exactly its limits and refuses one token more
(the smoke test), and each backend runs with the planned max_model_len."""

from __future__ import annotations

from fleetgate.local.acceptance.report import Criterion
from fleetgate.probes import Target, run_smoke


async def context_criterion(target: Target) -> Criterion:
    report = await run_smoke(target)
    failed = [c for c in report.checks if c.ok is False]
    skipped = [c for c in report.checks if c.ok is None]
    detail = f"{len(report.checks) - len(failed) - len(skipped)} checks passed"
    if skipped:
        detail += f", {len(skipped)} skipped"
    if failed:
        detail += "; failed: " + "; ".join(f"{c.model} {c.check}: {c.got}" for c in failed)
    return Criterion(
        1, "context window effective at the planned limits", report.ok, detail, report.to_dict()
    )
