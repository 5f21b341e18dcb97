"""The context smoke test: does each model accept exactly its limits and refuse one more?

Per public model (aliases are skipped: they share their target's limits):

- ``exact input``: a prompt of exactly max_input_tokens with max_tokens = max_output_tokens
  gets a 200;
- ``input + 1``: one token more gets a 4xx that says context length;
- ``max_tokens + 1``: max_tokens over max_output_tokens gets a 4xx (or, on a route that clamps,
  a 200 with no more than max_output_tokens generated);
- ``max_model_len``: the backend's own max_model_len (from its tokenizer's answer) equals the
  planned one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetgate.probes.http import ApiClient, Reply
from fleetgate.probes.prompts import Messages, PromptFitError, fit_prompt, messages_for
from fleetgate.probes.targets import ModelUnderTest, Target


@dataclass(frozen=True)
class SmokeCheck:
    model: str
    check: str
    ok: bool | None  # None: skipped (nothing to compare against)
    expected: str
    got: str


@dataclass
class SmokeReport:
    url: str
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


class TokenCounter:
    """Counts a chat prompt's tokens as the backend will: through the gateway's ``/tokenize``
    when it has one, else straight from the model's first backend (fleet-file targets)."""

    def __init__(self, gateway: ApiClient, model: ModelUnderTest) -> None:
        self.gateway = gateway
        self.model = model
        self.backend_max_model_len: int | None = None
        self.source = "gateway"

    async def __call__(self, messages: Messages) -> int:
        if self.source == "gateway":
            reply = await self.gateway.tokenize(self.model.name, messages)
            if reply.ok and isinstance(reply.body, dict) and "count" in reply.body:
                return self._take(reply)
            if not self.model.backends:
                raise PromptFitError(
                    f"the gateway cannot count tokens for {self.model.name} "
                    f"(POST /tokenize answered {reply.summary()}) and no "
                    "fleet file names its backend"
                )
            self.source = "backend"
        backend = self.model.backends[0]
        async with ApiClient(backend.url, timeout_s=60) as api:
            body = {"model": backend.served_model, "messages": messages}
            reply = await api.request("POST", "/tokenize", body)
        if reply.ok and isinstance(reply.body, dict) and "count" in reply.body:
            return self._take(reply)
        raise PromptFitError(
            f"backend {backend.name} ({backend.url}) cannot count tokens: {reply.summary()}"
        )

    def _take(self, reply: Reply) -> int:
        body = reply.body
        if isinstance(body.get("max_model_len"), int):
            self.backend_max_model_len = body["max_model_len"]
        return int(body["count"])


def _says_context_length(reply: Reply) -> bool:
    text = f"{reply.error.get('code')} {reply.message}".lower()
    return "context_length" in text or "context length" in text


async def _chat(api: ApiClient, model: str, messages: Messages, max_tokens: int) -> Reply:
    return await api.chat(
        {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    )


async def smoke_model(api: ApiClient, model: ModelUnderTest) -> list[SmokeCheck]:
    """Run the four checks on one model."""
    name = model.name
    checks: list[SmokeCheck] = []
    counter = TokenCounter(api, model)
    max_out = model.max_output_tokens
    max_in = model.max_input_tokens
    if max_in is None and model.max_model_len is not None:
        max_in = model.max_model_len - (max_out or 1)
    if max_out is None and model.max_model_len is not None and max_in is not None:
        max_out = max(1, model.max_model_len - max_in)

    if max_in is None or max_out is None:
        checks.append(
            SmokeCheck(name, "exact input", None, "known limits", "no max_input_tokens given")
        )
    else:
        try:
            exact, _ = await fit_prompt(counter, max_in)
            over, _ = await fit_prompt(counter, max_in + 1)
        except PromptFitError as exc:
            checks.append(SmokeCheck(name, "exact input", False, f"{max_in} tokens", str(exc)))
        else:
            reply = await _chat(api, name, exact, max_out)
            checks.append(
                SmokeCheck(
                    name,
                    "exact input",
                    reply.status == 200,
                    f"200 for {max_in} in + {max_out} out",
                    reply.summary(),
                )
            )
            reply = await _chat(api, name, over, max_out)
            checks.append(
                SmokeCheck(
                    name,
                    "input + 1",
                    400 <= reply.status < 500
                    # a bare vLLM at exactly max_model_len complains about max_tokens (0 left)
                    and (_says_context_length(reply) or model.max_input_tokens is None),
                    f"4xx context length for {max_in + 1} in",
                    reply.summary(),
                )
            )

    # Over the route's output limit; a bare vLLM has none, so over its max_model_len instead.
    out_limit = model.max_output_tokens or model.max_model_len
    if out_limit is not None:
        reply = await _chat(api, name, messages_for("Say hi."), out_limit + 1)
        if model.clamp_max_tokens and model.max_output_tokens is not None:
            used = (reply.body or {}).get("usage", {}) if isinstance(reply.body, dict) else {}
            done = used.get("completion_tokens")
            ok = reply.status == 200 and isinstance(done, int) and done <= out_limit
            expected = f"200 clamped to <= {out_limit} tokens"
        else:
            ok = 400 <= reply.status < 500
            expected = f"4xx for max_tokens {out_limit + 1}"
        checks.append(SmokeCheck(name, "max_tokens + 1", ok, expected, reply.summary()))

    if counter.backend_max_model_len is None:
        with contextlib.suppress(PromptFitError):
            await counter(messages_for("hi"))
    backend_len = counter.backend_max_model_len
    if model.max_model_len is None or backend_len is None:
        checks.append(
            SmokeCheck(
                name,
                "max_model_len",
                None,
                str(model.max_model_len or "planned value"),
                str(backend_len or "not reported by the backend"),
            )
        )
    else:
        checks.append(
            SmokeCheck(
                name,
                "max_model_len",
                backend_len == model.max_model_len,
                str(model.max_model_len),
                f"{backend_len} (via {counter.source})",
            )
        )
    return checks


async def run_smoke(
    target: Target, models: list[str] | None = None, *, include_aliases: bool = False
) -> SmokeReport:
    """Smoke-test the target's models (all routes and profiles by default), concurrently."""
    chosen = [
        m
        for m in target.models
        if (models is None or m.name in models) and (include_aliases or m.kind != "alias")
    ]
    report = SmokeReport(target.url)
    async with ApiClient(target.url, target.api_key) as api:
        results = await asyncio.gather(*(smoke_model(api, m) for m in chosen))
    for checks in results:
        report.checks.extend(checks)
    return report
