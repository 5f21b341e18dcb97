"""The burst test: many clients at once against one model, every outcome counted.

Closed loop (``concurrency`` clients, each sending its next request when the last one ends) or
open loop (``rate`` requests per second, Poisson arrivals). Bounded in count (``requests``) and
in time: no request starts after ``duration_s``, and each attempt gives up after ``timeout_s``.
A 429 is retried after its Retry-After unless ``retry`` is off; the request fails only if it
never succeeds.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from time import monotonic, time
from typing import Any

from fleetgate.probes.http import ApiClient, Reply
from fleetgate.probes.prompts import messages_for
from fleetgate.probes.stats import summarize

_WORD = " hello"


@dataclass(frozen=True)
class BurstConfig:
    model: str
    concurrency: int | None = None  # closed loop; the default when neither is given: 10
    rate: float | None = None  # open loop, requests per second
    requests: int = 100
    duration_s: float = 60.0
    stream: bool = False
    prompt_tokens: tuple[int, int] = (128, 128)  # approximate: words of one token each
    max_tokens: tuple[int, int] = (64, 64)
    timeout_s: float = 300.0
    retry: bool = True
    max_attempts: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.rate is not None:
            raise ValueError("give concurrency or rate, not both")
        if self.requests < 1 or self.duration_s <= 0:
            raise ValueError("requests and duration must be positive")


@dataclass
class RequestResult:
    """One request's final outcome; times in seconds from the run's start or the first send."""

    index: int
    start_s: float
    status: int = 0
    code: str = "ok"  # an error code, status or transport fault when it failed
    message: str = ""
    attempts: int = 0
    got_429: int = 0
    ttft_s: float | None = None  # from the first send: includes time queued at the gateway
    queue_wait_s: float | None = None  # the gateway's queue wait (its x-fleetgate-queue-wait-ms)
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.code == "ok"


@dataclass
class BurstReport:
    url: str
    config: BurstConfig
    started_at: float  # unix time
    wall_s: float
    results: list[RequestResult]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.ok]
        tokens = sum(r.completion_tokens or 0 for r in ok)
        wall = self.wall_s or float("nan")
        return {
            "requests": len(self.results),
            "succeeded": len(ok),
            "failed": self.failed,
            "by_status": dict(Counter(str(r.status) for r in self.results)),
            "failures_by_reason": dict(Counter(r.code for r in self.results if not r.ok)),
            "responses_429": sum(r.got_429 for r in self.results),
            "retried_requests": sum(r.attempts > 1 for r in self.results),
            "wall_s": self.wall_s,
            "requests_per_s": len(ok) / wall,
            "output_tokens_per_s": tokens / wall,
            "output_tokens": tokens,
            "ttft_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
            "queue_wait_s": summarize([r.queue_wait_s for r in ok if r.queue_wait_s is not None]),
            "itl_s": summarize([x for r in ok for x in r.itl_s]),
            "e2e_s": summarize([r.e2e_s for r in ok]),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "config": asdict(self.config),
            "started_at": self.started_at,
            "summary": self.summary(),
            "results": [asdict(r) for r in self.results],
        }


class _Run:
    def __init__(
        self, api: ApiClient, config: BurstConfig, on_done: Callable[[RequestResult], None] | None
    ) -> None:
        self.api = api
        self.config = config
        self.on_done = on_done
        self.rng = random.Random(config.seed)
        self.t0 = monotonic()
        self.deadline = self.t0 + config.duration_s + config.timeout_s
        self.results: list[RequestResult] = []
        self.issued = 0

    def _can_issue(self) -> bool:
        return self.issued < self.config.requests and monotonic() - self.t0 < self.config.duration_s

    def _body(self) -> dict[str, Any]:
        cfg = self.config
        words = self.rng.randint(*cfg.prompt_tokens)
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages_for(_WORD * max(0, words)),
            "max_tokens": self.rng.randint(*cfg.max_tokens),
            "temperature": 0.7,
        }
        if cfg.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def one(self, index: int) -> None:
        result = RequestResult(index, monotonic() - self.t0)
        body = self._body()
        first_send = monotonic()
        while True:
            result.attempts += 1
            timeout = max(1.0, min(self.config.timeout_s, self.deadline - monotonic()))
            reply = await self._attempt(body, result, first_send, timeout)
            if reply is None or reply.status != 429:
                break
            result.got_429 += 1
            wait = reply.retry_after()
            wait = 1.0 if wait is None else wait
            if (
                not self.config.retry
                or result.attempts >= self.config.max_attempts
                or monotonic() + wait >= self.deadline
            ):
                break
            await asyncio.sleep(wait)
        result.e2e_s = monotonic() - first_send
        self.results.append(result)
        if self.on_done is not None:
            self.on_done(result)

    async def _attempt(
        self, body: dict[str, Any], result: RequestResult, first_send: float, timeout: float
    ) -> Reply | None:
        """One try; fills ``result``; returns the reply when it was refused (for retries)."""
        result.code, result.message, result.itl_s = "ok", "", []
        if not self.config.stream:
            reply = await self.api.chat(body, timeout_s=timeout)
            result.status, result.queue_wait_s = reply.status, reply.queue_wait_s()
            if not reply.ok:
                result.code, result.message = reply.error_code, reply.message
                return reply
            usage = reply.body.get("usage", {}) if isinstance(reply.body, dict) else {}
            result.prompt_tokens = usage.get("prompt_tokens")
            result.completion_tokens = usage.get("completion_tokens")
            return None
        reply, events = await self.api.stream_chat(body, timeout_s=timeout)
        result.status, result.queue_wait_s = reply.status, reply.queue_wait_s()
        if events is None:
            result.code, result.message = reply.error_code, reply.message
            return reply
        last: float | None = None
        finished = False
        try:
            async for event in events:
                data = event.data
                if "error" in data:
                    err = data["error"] if isinstance(data["error"], dict) else {}
                    result.code = str(err.get("code") or "stream_error")
                    result.message = str(err.get("message", ""))
                    continue
                for choice in data.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = monotonic()
                        if last is None:
                            result.ttft_s = now - first_send
                        else:
                            result.itl_s.append(now - last)
                        last = now
                    if choice.get("finish_reason"):
                        finished = True
                usage = data.get("usage")
                if isinstance(usage, dict):
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
        except TimeoutError:
            result.code, result.message = "timeout", "the stream did not finish in time"
        except Exception as exc:  # a broken stream is an outcome to count, not a crash
            result.code, result.message = "disconnected", f"{type(exc).__name__}: {exc}"
        if result.code == "ok" and not finished:
            result.code, result.message = "incomplete_stream", "the stream ended without finishing"
        return None

    async def closed_loop(self, clients: int) -> None:
        async def client() -> None:
            while self._can_issue():
                self.issued += 1
                await self.one(self.issued - 1)

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(self, rate: float) -> None:
        tasks = []
        next_at = monotonic()
        while self._can_issue():
            delay = next_at - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if not self._can_issue():
                    break
            self.issued += 1
            tasks.append(asyncio.create_task(self.one(self.issued - 1)))
            next_at += self.rng.expovariate(rate)
        await asyncio.gather(*tasks)


async def run_burst(
    url: str,
    config: BurstConfig,
    api_key: str | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
) -> BurstReport:
    """Run the load described by ``config`` against ``url`` and report every request."""
    started_at = time()
    connections = config.concurrency or 1024
    async with ApiClient(url, api_key, timeout_s=config.timeout_s, connections=connections) as api:
        run = _Run(api, config, on_done)
        if config.rate is not None:
            await run.open_loop(config.rate)
        else:
            await run.closed_loop(config.concurrency or 10)
    results = sorted(run.results, key=lambda r: r.index)
    return BurstReport(url, config, started_at, monotonic() - run.t0, results)
