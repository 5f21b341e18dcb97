"""Requests and tokens per minute, per lane: reserve at admission, settle on real usage.

Each limit is a token bucket holding one minute's allowance that refills continuously, so a
route with ``rpm: 60`` takes a burst of 60 and then one request a second. TPM reserves the
prompt plus the most the answer may cost; :meth:`settle` gives back what the answer did not use
(or takes the overrun). Two backends: in memory (one gateway) and Redis (replicas share limits;
the script runs atomically on the server's clock).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, Protocol

from fleetgate.gateway.errors import GatewayError, rate_limited

log = logging.getLogger("fleetgate.gateway")


@dataclass(frozen=True)
class Quota:
    """What one lane allows per minute (None: unlimited)."""

    lane: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class Level:
    """One limit as a client sees it after its request: OpenAI's ``x-ratelimit-*`` triple."""

    unit: str  # "requests" or "tokens"
    limit: int
    remaining: int
    reset_s: float  # until the limit is whole again


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``2h3m4s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


def rate_limit_headers(levels: list[Level]) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the tightest limit of each
    unit (the fewest remaining; of equals, the one that resets last)."""
    headers: dict[str, str] = {}
    for unit in ("requests", "tokens"):
        mine = [lv for lv in levels if lv.unit == unit]
        if not mine:
            continue
        tight = min(mine, key=lambda lv: (lv.remaining, -lv.reset_s))
        headers[f"x-ratelimit-limit-{unit}"] = str(tight.limit)
        headers[f"x-ratelimit-remaining-{unit}"] = str(tight.remaining)
        headers[f"x-ratelimit-reset-{unit}"] = _duration(tight.reset_s)
    return headers


def _minute_levels(quota: Quota, rpm_left: float | None, tpm_left: float | None) -> list[Level]:
    """The per-minute buckets after a reservation (None: that limit is not set)."""
    out = []
    if quota.rpm is not None and rpm_left is not None:
        left = max(0.0, rpm_left)
        out.append(Level("requests", quota.rpm, int(left), (quota.rpm - left) * 60 / quota.rpm))
    if quota.tpm is not None and tpm_left is not None:
        left = max(0.0, tpm_left)
        out.append(Level("tokens", quota.tpm, int(left), (quota.tpm - left) * 60 / quota.tpm))
    return out


def refused_levels(quota: Quota, error: GatewayError) -> list[Level]:
    """What a refusal by the per-minute limits tells the client: that bucket is empty."""
    wait = error.retry_after or 0.0
    if error.reason == "rpm" and quota.rpm is not None:
        return [Level("requests", quota.rpm, 0, wait)]
    if error.reason == "tpm" and quota.tpm is not None:
        return [Level("tokens", quota.tpm, 0, wait)]
    return []


class RateLimiter(Protocol):
    async def reserve(self, quota: Quota, tokens: int) -> list[Level]: ...

    async def settle(self, quota: Quota, reserved: int, used: int) -> None: ...

    async def close(self) -> None: ...


def _refusal(quota: Quota, which: int, wait_s: float, tokens: int) -> GatewayError:
    if which == 1:
        # A bucket of rpm that refills continuously is below one request only when at least
        # rpm requests arrived within the last minute (more, if some of it refilled meanwhile).
        return rate_limited(
            f"rate limit for {quota.lane!r} reached: at least {quota.rpm} requests were made "
            f"within the last minute and this one would be more; rpm is {quota.rpm} requests "
            "per minute",
            reason="rpm",
            retry_after=wait_s,
        )
    return rate_limited(
        f"token rate limit for {quota.lane!r} reached: this request reserves {tokens} tokens "
        f"(prompt + max_tokens), tpm is {quota.tpm} tokens per minute",
        reason="tpm",
        retry_after=wait_s,
    )


def _check_size(quota: Quota, tokens: int) -> None:
    """A request that could never fit, however long it waited, is the client's to change: a
    400, not a 429 that SDKs retry forever."""
    if quota.tpm is not None and tokens > quota.tpm:
        raise GatewayError(
            400,
            f"this request reserves {tokens} tokens (prompts x (prompt + n x max_tokens)), "
            f"more than {quota.lane!r} allows in a whole minute (tpm {quota.tpm}); lower "
            "max_tokens or n, or send fewer prompts at once",
            reason="over_tpm",
            code="request_over_tpm",
            param="max_tokens",
        )


class MemoryRateLimiter:
    """Buckets in this process: exact for a single gateway replica."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], list[float]] = {}  # -> [level, last update]

    def _level(self, key: tuple[str, str], limit: int, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(limit)
        return min(float(limit), bucket[0] + (now - bucket[1]) * limit / 60.0)

    async def reserve(self, quota: Quota, tokens: int) -> list[Level]:
        _check_size(quota, tokens)
        now = monotonic()
        rpm_level: float | None = None
        tpm_level: float | None = None
        rpm_key, tpm_key = (quota.lane, "rpm"), (quota.lane, "tpm")
        if quota.rpm is not None:
            rpm_level = self._level(rpm_key, quota.rpm, now)
            if rpm_level < 1:
                raise _refusal(quota, 1, (1 - rpm_level) * 60 / quota.rpm, tokens)
        if quota.tpm is not None:
            tpm_level = self._level(tpm_key, quota.tpm, now)
            if tpm_level < tokens:
                raise _refusal(quota, 2, (tokens - tpm_level) * 60 / quota.tpm, tokens)
        if rpm_level is not None:
            self._buckets[rpm_key] = [rpm_level - 1, now]
        if tpm_level is not None:
            self._buckets[tpm_key] = [tpm_level - tokens, now]
        return _minute_levels(
            quota,
            None if rpm_level is None else rpm_level - 1,
            None if tpm_level is None else tpm_level - tokens,
        )

    async def settle(self, quota: Quota, reserved: int, used: int) -> None:
        if quota.tpm is None or reserved == used:
            return
        now = monotonic()
        key = (quota.lane, "tpm")
        level = self._level(key, quota.tpm, now) + reserved - used
        self._buckets[key] = [min(float(quota.tpm), level), now]

    async def close(self) -> None:
        return None


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, limit)
  local v = redis.call('HMGET', key, 'l', 't')
  local l = tonumber(v[1])
  if l == nil then return limit end
  l = l + (now - tonumber(v[2])) * limit / 60
  if l > limit then l = limit end
  return l
end
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rl, tl
if rpm > 0 then
  rl = level(KEYS[1], rpm)
  if rl < 1 then return {1, tostring((1 - rl) * 60 / rpm)} end
end
if tpm > 0 then
  tl = level(KEYS[2], tpm)
  if tl < cost then return {2, tostring((cost - tl) * 60 / tpm)} end
end
if rpm > 0 then
  redis.call('HSET', KEYS[1], 'l', tostring(rl - 1), 't', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'l', tostring(tl - cost), 't', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
return {0, '0', tostring(rl and rl - 1 or -1), tostring(tl and tl - cost or -1)}
"""

_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'l', 't')
local l = tonumber(v[1])
if l == nil then l = limit else l = l + (now - tonumber(v[2])) * limit / 60 end
l = l + delta
if l > limit then l = limit end
redis.call('HSET', KEYS[1], 'l', tostring(l), 't', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return 0
"""


# Each Redis call may take this long; a hung Redis (it accepts, it never answers) then costs a
# request a quarter of a second once, not 5 s per call.
REDIS_TIMEOUT_S = 0.25
# After a failed call, Redis is skipped for this long (the circuit is open).
REDIS_BREAK_S = 10.0


class RedisRateLimiter:
    """Buckets in Redis, so every gateway replica draws from the same allowance.

    If Redis fails (down, or slower than :data:`REDIS_TIMEOUT_S`), it is skipped for
    :data:`REDIS_BREAK_S` and this process's own buckets decide meanwhile: an outage of the
    limiter's store should not turn into an outage (or a stall) of the models. Each outage is
    logged once when it starts and once when it ends, and counted through ``on_failure``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fleetgate:rl:",
        timeout_s: float = REDIS_TIMEOUT_S,
        break_s: float = REDIS_BREAK_S,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._timeout_s = timeout_s
        self._break_s = break_s
        self._open_until: float | None = None  # Redis skipped until then (monotonic)
        self._on_failure = on_failure
        self._local = MemoryRateLimiter()

    @property
    def skipping(self) -> bool:
        """Whether Redis is being skipped after a failure (the circuit is open)."""
        return self._open_until is not None and monotonic() < self._open_until

    def _keys(self, lane: str) -> list[str]:
        return [f"{self._prefix}{lane}:rpm", f"{self._prefix}{lane}:tpm"]

    async def _call(self, script: Any, keys: list[str], args: list[int]) -> Any:
        """The script's answer, or None when Redis failed or is being skipped."""
        if self.skipping:
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await script(keys=keys, args=args)
        except Exception as exc:  # down, hung, or broken: admit on local limits, say so once
            if self._open_until is None:
                log.warning(
                    "rate limiter store unavailable (%s: %s): limits are per process; "
                    "trying it again every %g s",
                    exc.__class__.__name__,
                    exc,
                    self._break_s,
                )
            self._open_until = monotonic() + self._break_s
            if self._on_failure is not None:
                self._on_failure()
            return None
        if self._open_until is not None:
            log.warning("rate limiter store is back: limits are shared again")
            self._open_until = None
        return answer

    async def reserve(self, quota: Quota, tokens: int) -> list[Level]:
        _check_size(quota, tokens)
        if quota.rpm is None and quota.tpm is None:
            return []
        answer = await self._call(
            self._reserve, self._keys(quota.lane), [quota.rpm or 0, quota.tpm or 0, tokens]
        )
        if answer is None:
            return await self._local.reserve(quota, tokens)
        which, wait, *left = answer
        if int(which):
            raise _refusal(quota, int(which), float(wait), tokens)
        rpm_left, tpm_left = (float(v) for v in left)
        return _minute_levels(
            quota,
            rpm_left if quota.rpm is not None else None,
            tpm_left if quota.tpm is not None else None,
        )

    async def settle(self, quota: Quota, reserved: int, used: int) -> None:
        if quota.tpm is None or reserved == used:
            return
        answer = await self._call(
            self._settle, self._keys(quota.lane)[1:], [quota.tpm, reserved - used]
        )
        if answer is None:
            await self._local.settle(quota, reserved, used)

    async def close(self) -> None:
        await self._redis.aclose()


def make_rate_limiter(
    redis_url: str | None, on_failure: Callable[[], None] | None = None
) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(redis_url, on_failure=on_failure)
    return MemoryRateLimiter()
