"""Criterion 3: over-limit requests (context, max_tokens, body size, unknown model, bad key, a
full queue) get a 4xx, never a 5xx."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fleetgate.fleetfile import Fleet, public_models
from fleetgate.local.acceptance.report import Criterion
from fleetgate.probes import ApiClient, BurstConfig, Target, run_burst

CHAT = "/v1/chat/completions"
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class _Probe:
    model: str
    what: str
    status: int
    code: str


async def over_limit_criterion(target: Target, fleet: Fleet) -> Criterion:
    """Requests each over one limit, non-streamed and streamed, and a queue overflow."""
    assert fleet.gateway is not None
    probes: list[_Probe] = []
    async with ApiClient(target.url, target.api_key, timeout_s=60) as api:

        async def send(
            model: str, what: str, body: Any, headers: dict[str, str] | None = None
        ) -> None:
            if isinstance(body, bytes):
                reply = await api.request("POST", CHAT, content=body, headers=_JSON)
            else:
                reply = await api.request("POST", CHAT, body, headers=headers)
            probes.append(_Probe(model, what, reply.status, reply.error_code))

        for m in target.models:
            if m.kind == "alias":
                continue
            length = m.max_model_len or 4096
            long_prompt = [{"role": "user", "content": " hello" * (length + 64)}]
            short = [{"role": "user", "content": "hi"}]
            for stream in (False, True):
                tag = " (stream)" if stream else ""
                extra = {"stream": True} if stream else {}
                await send(
                    m.name,
                    "prompt over the context" + tag,
                    {"model": m.name, "messages": long_prompt, "max_tokens": 8, **extra},
                )
                await send(
                    m.name,
                    "max_tokens over max_model_len" + tag,
                    {"model": m.name, "messages": short, "max_tokens": length + 1, **extra},
                )
                if m.max_output_tokens and not m.clamp_max_tokens:
                    await send(
                        m.name,
                        "max_tokens over the route's limit" + tag,
                        {
                            "model": m.name,
                            "messages": short,
                            "max_tokens": m.max_output_tokens + 1,
                            **extra,
                        },
                    )
        first = target.models[0].name
        await send(
            first,
            "unknown model",
            {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        await send(first, "malformed JSON", b"{not json")
        await send(first, "messages missing", {"model": first})
        await send(
            first,
            "body over the size limit",
            {
                "model": first,
                "messages": [{"role": "user", "content": "x" * (fleet.gateway.max_body_bytes + 1)}],
            },
        )
        if target.api_key:
            await send(
                first,
                "wrong API key",
                {"model": first, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer wrong-key-" + secrets.token_hex(4)},
            )

    refusals = [p for p in probes if not 400 <= p.status < 500]
    # A queue overflow: more clients than slots plus queue, no retries: 200s and 429s only.
    route = min(
        (pm for pm in public_models(fleet).values() if pm.kind == "route"),
        key=lambda pm: pm.limits.queue_depth + (pm.limits.concurrency or 0),
    )
    overflow = route.limits.queue_depth + (route.limits.concurrency or 1) + 8
    burst = await run_burst(
        target.url,
        BurstConfig(
            model=route.name,
            concurrency=overflow,
            requests=overflow,
            duration_s=60,
            prompt_tokens=(16, 32),
            max_tokens=(8, 16),
            retry=False,
            timeout_s=120,
        ),
        target.api_key,
    )
    statuses = burst.summary()["by_status"]
    five = {s: n for s, n in statuses.items() if not (s == "200" or s.startswith("4"))}
    ok = not refusals and not five
    detail = (
        f"{len(probes)} over-limit requests: "
        + ", ".join(sorted({str(p.status) for p in probes}))
        + f"; queue overflow ({overflow} clients on {route.name}): {statuses}"
    )
    if refusals:
        detail += "; NOT 4xx: " + "; ".join(f"{p.model} {p.what}: {p.status}" for p in refusals)
    return Criterion(
        3,
        "over-limit requests get a 4xx, never a 5xx",
        ok,
        detail,
        {"probes": [p.__dict__ for p in probes], "overflow_statuses": statuses},
    )
