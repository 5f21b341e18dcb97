"""Talking to the deployments: one shared HTTP client, health probing, retries, /tokenize.

Retries happen only before anything reached the client and only where the backend cannot be
generating already: a refused or dropped connection, or a 502/503 answer. Never on a 4xx,
never on a timeout (the first attempt may still be running).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleetgate.gateway.admission import Admission, SlotPool
from fleetgate.gateway.config import DeploymentConfig, GatewayConfig
from fleetgate.gateway.errors import GatewayError, bad_gateway, rate_limited
from fleetgate.gateway.http import (
    ConnectFailed,
    Disconnected,
    HttpClient,
    ProtocolError,
    Response,
    UpstreamError,
)

log = logging.getLogger("fleetgate.gateway")

RETRY_BASE_S = 0.05
# Token counts one deployment is asked for at once (client /tokenize and admission's counting
# together): a burst of huge prompts to count must not stall the generations running there.
COUNTS_PER_DEPLOYMENT = 2
RETRYABLE_STATUS = frozenset({502, 503})
# vLLM's 503 when --max-num-queued-reqs / --max-num-queued-tokens is reached (QueueOverflowError,
# MaxQueuedTokensError in vllm/exceptions.py): the server is busy, not down.
_BUSY_MESSAGES = (
    "The engine is currently busy and cannot accept new requests",
    "The engine has reached its prefill token backlog limit",
)


def is_busy(status: int, message: str) -> bool:
    """A vLLM refusal because its own queue is capped."""
    return status == 503 and message.startswith(_BUSY_MESSAGES)


_CONNECTION_ERRORS = (ConnectFailed, Disconnected)


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter around it, so retries of a burst spread out."""
    return RETRY_BASE_S * (2**attempt) * random.uniform(0.5, 1.5)


def error_message(body: bytes) -> str:
    """The message of an OpenAI/vLLM error body (either shape), or the start of the text."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    return body[:200].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Tokenized:
    """A backend's ``/tokenize`` answer: who counted, the count, and the whole body."""

    deployment: str
    count: int
    body: dict[str, Any]


class SlotHolder(Protocol):
    """What a send needs from the request it serves: the slot it holds, which a retry moves to
    another deployment in place (so the holder always gives back the slot it really holds),
    and its body for a deployment's served model name."""

    pool: SlotPool
    slots: int  # how many slots it holds on that deployment

    def payload_for(self, served_model: str) -> bytes: ...


class Upstream:
    """The deployments as the proxy sees them: send with retries, count tokens, probe health."""

    def __init__(self, admission: Admission, on_health: Callable[[str, bool], None]) -> None:
        self.admission = admission
        self.deployments: dict[str, DeploymentConfig] = {}
        self.retries = 0
        self.max_response_bytes: int | None = None
        self._failures: dict[str, int] = {}
        self._counting: dict[str, asyncio.Semaphore] = {}
        self._unhealthy_after = 1
        self._on_health = on_health
        self.on_probed_down: Callable[[str], None] = lambda name: None
        self._client: HttpClient | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_interval = 5.0
        self._probe_timeout = 2.0

    @property
    def client(self) -> HttpClient:
        assert self._client is not None, "Upstream.start() was not awaited"
        return self._client

    def configure(self, config: GatewayConfig) -> None:
        self.deployments = dict(config.deployments)
        self.retries = config.retries
        self.max_response_bytes = config.max_response_bytes
        self._unhealthy_after = config.health.unhealthy_after
        self._probe_interval = config.health.interval_s
        self._probe_timeout = config.health.timeout_s
        for name in list(self._failures):
            if name not in self.deployments:
                del self._failures[name]

    async def start(self) -> None:
        self._client = HttpClient()
        self._probe_task = asyncio.create_task(self._probe_forever(), name="fleetgate-health")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    # -- health -------------------------------------------------------------------------------

    def healthy(self, name: str) -> bool:
        pool = self.admission.pools.get(name)
        return pool is not None and pool.healthy

    def serving(self, name: str) -> bool:
        """Healthy and admitting (an on-demand deployment the controller has up)."""
        pool = self.admission.pools.get(name)
        return pool is not None and pool.serving

    def record(self, name: str, ok: bool) -> bool:
        """One probe or request outcome: down after N failures in a row, up after a success.
        True when this outcome took the deployment down."""
        if ok:
            self._failures[name] = 0
            if not self.healthy(name):
                log.warning("deployment %s is back up", name)
                self._on_health(name, True)
            return False
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        if count >= self._unhealthy_after and self.healthy(name):
            log.warning("deployment %s is down after %d failed checks", name, count)
            self._on_health(name, False)
            return True
        return False

    async def probe(self, dep: DeploymentConfig) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):
                resp = await self.client.request("GET", dep.url, "/health")
                await resp.read()
                return resp.status == 200
        except (UpstreamError, TimeoutError, OSError):
            return False

    async def probe_all(self) -> None:
        # an on-demand deployment the controller has down is its business, not a failure
        deps = [
            d
            for d in self.deployments.values()
            if (p := self.admission.pools.get(d.name)) is None or p.admitting
        ]
        results = await asyncio.gather(*(self.probe(d) for d in deps))
        for dep, ok in zip(deps, results, strict=True):
            if dep.name in self.deployments and self.record(dep.name, ok):
                # Its health checks go unanswered: requests waiting on it would wait out their
                # timeout. (A refused connection, seen by the requests themselves, is not this:
                # they fail fast and retry elsewhere by themselves.)
                self.on_probed_down(dep.name)

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a probe round must never kill the prober
                log.exception("health probe round failed")
            await asyncio.sleep(self._probe_interval)

    # -- requests -----------------------------------------------------------------------------

    async def send(
        self, holder: SlotHolder, candidates: tuple[str, ...], path: str
    ) -> tuple[Response, int]:
        """POST to the deployment of the holder's slot, retrying where that is safe.

        Returns the open response (the caller reads and releases it) and how many attempts it
        took; ``holder.pool`` is then the slot it came from (a retry may move to another
        deployment), and stays the slot held if this raises.
        """
        last = "no attempt made"
        attempt = 0
        busy = 0  # attempts a backend refused as busy (its queue capped), not as down
        while True:
            pool = holder.pool
            dep = self.deployments.get(pool.name)
            if dep is None:
                raise bad_gateway(f"deployment {pool.name!r} was removed by a reload")
            try:
                resp = await self.client.request(
                    "POST", dep.url, path, holder.payload_for(dep.served_model)
                )
            except _CONNECTION_ERRORS as exc:
                self.record(dep.name, False)
                last = f"deployment {dep.name!r}: {exc.__class__.__name__}: {exc}"
            except ProtocolError as exc:
                # an answer that is not HTTP: the request may be running, so no retry
                raise bad_gateway(f"deployment {dep.name!r} sent a broken answer: {exc}") from None
            else:
                if resp.status not in RETRYABLE_STATUS:
                    return resp, attempt + 1
                try:
                    body = await resp.read(self.max_response_bytes)
                except ProtocolError as exc:
                    body = str(exc).encode()
                message = error_message(body)
                busy += is_busy(resp.status, message)
                last = f"deployment {dep.name!r} answered {resp.status}: {message}"
            if attempt >= self.retries:
                if busy == attempt + 1:
                    raise rate_limited(
                        f"every deployment tried is busy (its own queue is full) after "
                        f"{attempt + 1} attempt(s); {last}",
                        reason="backend_busy",
                        retry_after=max(1.0, pool.service_s or 1.0),
                    )
                raise bad_gateway(f"upstream failed after {attempt + 1} attempt(s); {last}")
            await asyncio.sleep(backoff_s(attempt))
            attempt += 1
            other = self.admission.try_acquire(candidates, exclude=pool.name, slots=holder.slots)
            if other is not None:
                self.admission.release(pool, slots=holder.slots)
                holder.pool = other

    async def count_tokens(self, candidates: tuple[str, ...], payload: dict[str, Any]) -> int:
        """The backend's token count for one prompt (chat template applied for messages)."""
        return (await self.tokenize(candidates, payload)).count

    async def tokenize(self, candidates: tuple[str, ...], payload: dict[str, Any]) -> Tokenized:
        """The answer of a healthy deployment's ``/tokenize`` to ``payload`` (which carries no
        ``model``: each deployment gets its served name), the least busy one tried first.

        A backend's 4xx is the client's fault and raised as such; anything else moves on to the
        next deployment, and 502 when none answered with a count.
        """
        names = sorted(
            (n for n in candidates if self.serving(n) and n in self.deployments),
            key=lambda n: self.admission.pools[n].in_use,
        )
        last = "no healthy deployment"
        for name in names[: self.retries + 1]:
            dep = self.deployments[name]
            body = json.dumps({**payload, "model": dep.served_model}).encode()
            counting = self._counting.get(name)
            if counting is None:
                counting = self._counting[name] = asyncio.Semaphore(COUNTS_PER_DEPLOYMENT)
            try:
                async with counting:
                    resp = await self.client.request("POST", dep.url, "/tokenize", body)
                    raw = await resp.read(self.max_response_bytes)
            except _CONNECTION_ERRORS as exc:
                self.record(name, False)
                last = f"deployment {name!r}: {exc.__class__.__name__}"
                continue
            except ProtocolError as exc:  # counting is safe to ask again elsewhere
                last = f"deployment {name!r} sent a broken answer: {exc}"
                continue
            if resp.status == 200:
                try:
                    answer = json.loads(raw)
                except (ValueError, RecursionError):
                    answer = None
                count = answer.get("count") if isinstance(answer, dict) else None
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    return Tokenized(name, count, answer)
                last = f"deployment {name!r} sent a /tokenize answer without a count"
            elif 400 <= resp.status < 500 and resp.status != 404:
                raise GatewayError(
                    resp.status,
                    error_message(raw),
                    reason="bad_request",
                    param=None,
                    code=None,
                )
            else:
                last = f"deployment {name!r} answered /tokenize with {resp.status}"
        raise bad_gateway(f"could not count the prompt's tokens: {last}")
