"""The health gate: is a freshly started unit really serving what its release promises?

A vLLM server passes when ``/health`` answers 200, ``/v1/models`` lists its served name with the
release's ``max_model_len``, and a one-token completion succeeds. The gateway passes when
``/health/ready`` answers 200. HTTP only: nothing here knows how the unit was started.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetgate.render.manifest import GatewayUnit, Unit


@dataclass(frozen=True)
class GateTarget:
    """One unit of a release as its manifest describes it."""

    name: str
    kind: str  # "vllm" | "gateway"
    url: str
    served_model_name: str | None = None
    max_model_len: int | None = None

    @classmethod
    def from_unit(cls, unit: Unit) -> GateTarget:
        if isinstance(unit, GatewayUnit):
            return cls(name=unit.name, kind=unit.kind, url=unit.url)
        return cls(unit.name, unit.kind, unit.url, unit.served_model_name, unit.max_model_len)


@dataclass(frozen=True)
class GateResult:
    ok: bool
    detail: str
    seconds: float = 0.0


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def probe(target: GateTarget, timeout: float = 10) -> GateResult:
    """One pass of the gate's checks; never raises for a network problem."""
    started = time.monotonic()
    try:
        ok, detail = _checks(target, timeout)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        ok, detail = False, f"not answering: {reason}"
    return GateResult(ok, detail, time.monotonic() - started)


def _checks(target: GateTarget, timeout: float) -> tuple[bool, str]:
    if target.kind == "gateway":
        status, body = _request(f"{target.url}/health/ready", timeout=timeout)
        return status == 200, f"/health/ready {status}" + ("" if status == 200 else f": {body}")
    status, _ = _request(f"{target.url}/health", timeout=timeout)
    if status != 200:
        return False, f"/health answered {status}"
    status, body = _request(f"{target.url}/v1/models", timeout=timeout)
    cards = body.get("data", []) if status == 200 and isinstance(body, dict) else []
    card = next((c for c in cards if c.get("id") == target.served_model_name), None)
    if card is None:
        served = [c.get("id") for c in cards]
        return False, f"/v1/models ({status}) does not list {target.served_model_name}: {served}"
    if target.max_model_len is not None and card.get("max_model_len") != target.max_model_len:
        return False, (
            f"serves max_model_len {card.get('max_model_len')}, "
            f"the release expects {target.max_model_len}"
        )
    status, body = _request(
        f"{target.url}/v1/completions",
        {"model": target.served_model_name, "prompt": "Hello", "max_tokens": 1},
        timeout=max(timeout, 60),
    )
    if status != 200 or not (isinstance(body, dict) and body.get("choices")):
        return False, f"one-token completion failed ({status}): {body}"
    return True, f"healthy, max_model_len {card.get('max_model_len')}, one-token completion ok"


def wait_healthy(
    target: GateTarget,
    *,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
    poll_s: float = 2.0,
) -> GateResult:
    """Probe until the gate passes or ``timeout_s`` is over.

    ``alive`` says whether the unit's process still exists; once it is gone there is nothing
    left to wait for, so the gate fails at once instead of at its timeout.
    """
    started = time.monotonic()
    last = GateResult(False, "not probed yet")
    while True:
        last = probe(target)
        elapsed = time.monotonic() - started
        if last.ok:
            return GateResult(True, last.detail, elapsed)
        if alive is not None and not alive():
            return GateResult(False, f"the process exited ({last.detail})", elapsed)
        if elapsed >= timeout_s:
            return GateResult(False, f"not healthy after {timeout_s:g} s: {last.detail}", elapsed)
        time.sleep(poll_s)
