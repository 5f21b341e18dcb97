"""Concurrency slots per deployment and a bounded FIFO queue, with a deadline, per lane.

A lane is a route or one of its profiles: lanes that point at the same deployment share its
slots, but each has its own queue depth and wait. Slots are handed straight from a finishing
request to the oldest waiter (by arrival, across lanes), so nobody barges past the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from time import monotonic

from fleetgate.gateway.errors import rate_limited, unavailable

# Until a deployment has finished a request, assume this long per request for Retry-After.
_DEFAULT_SERVICE_S = 1.0
_EWMA = 0.2


@dataclass(eq=False)
class SlotPool:
    """One deployment's in-flight requests, capped at its concurrency."""

    name: str
    capacity: int
    in_use: int = 0
    healthy: bool = True
    service_s: float | None = None  # moving average of how long a slot is held

    @property
    def free(self) -> bool:
        return self.healthy and self.in_use < self.capacity


@dataclass(eq=False)
class _Waiter:
    seq: int
    lane: str
    candidates: tuple[str, ...]
    future: asyncio.Future[SlotPool]
    since: float = field(default_factory=monotonic)


class Admission:
    """Hands out deployment slots; queues the rest, bounded per lane."""

    def __init__(self) -> None:
        self.pools: dict[str, SlotPool] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._seq = itertools.count()

    # -- configuration and health -------------------------------------------------------------

    def configure(self, capacities: dict[str, int]) -> None:
        """Set every deployment's capacity; slots held by in-flight requests are kept."""
        for name, capacity in capacities.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = SlotPool(name, capacity)
            else:
                pool.capacity = capacity
        for name in [n for n in self.pools if n not in capacities]:
            del self.pools[name]  # holders still release into the old object
        self._fail_stranded("the route's deployments were removed by a reload")
        for pool in self.pools.values():
            self._dispatch(pool)

    def set_healthy(self, name: str, healthy: bool) -> None:
        pool = self.pools.get(name)
        if pool is None or pool.healthy == healthy:
            return
        pool.healthy = healthy
        if healthy:
            self._dispatch(pool)
        else:
            self._fail_stranded("every deployment of this route is down")

    def any_healthy(self, candidates: Iterable[str]) -> bool:
        return any((p := self.pools.get(c)) is not None and p.healthy for c in candidates)

    # -- the request path ---------------------------------------------------------------------

    def try_acquire(self, candidates: Iterable[str], exclude: str | None = None) -> SlotPool | None:
        """A free slot on the healthy deployment with the fewest requests in flight, if any."""
        best = None
        for name in candidates:
            pool = self.pools.get(name)
            if (
                pool is not None
                and name != exclude
                and pool.healthy
                and pool.in_use < pool.capacity
                and (best is None or pool.in_use < best.in_use)
            ):
                best = pool
        if best is not None:
            best.in_use += 1
        return best

    async def acquire(
        self, lane: str, candidates: tuple[str, ...], depth: int, wait_s: float
    ) -> SlotPool:
        """A slot now, or a place in the lane's queue until one frees up or ``wait_s`` passes.

        Raises 429 when the queue is full or the wait runs out, 503 when every candidate is down.
        A cancelled caller (client gone) leaves the queue.
        """
        pool = self.try_acquire(candidates)
        if pool is not None:
            return pool
        if not self.any_healthy(candidates):
            raise unavailable(
                "every deployment of this route is down", retry_after=_DEFAULT_SERVICE_S
            )
        queue = self._queues.setdefault(lane, deque())
        if len(queue) >= depth:
            retry = self.estimate_wait(candidates, len(queue) + 1)
            raise rate_limited(
                f"queue for {lane!r} is full: {len(queue)} requests waiting, "
                f"queue_depth is {depth}",
                reason="queue_full",
                retry_after=retry,
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(next(self._seq), lane, candidates, loop.create_future())
        queue.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                return await waiter.future
        except TimeoutError:
            granted = self._leave(queue, waiter)
            if granted is not None:
                return granted
            raise rate_limited(
                f"waited {wait_s:g} s in the queue for {lane!r} (queue_wait_s is {wait_s:g}) "
                "without a free slot",
                reason="queue_timeout",
                retry_after=self.estimate_wait(candidates, len(queue) + 1),
            ) from None
        except asyncio.CancelledError:
            granted = self._leave(queue, waiter)
            if granted is not None:
                self.release(granted)
            raise

    def release(self, pool: SlotPool, held_s: float | None = None) -> None:
        pool.in_use -= 1
        if held_s is not None:
            prev = pool.service_s
            pool.service_s = held_s if prev is None else prev + _EWMA * (held_s - prev)
        self._dispatch(pool)

    def estimate_wait(self, candidates: Iterable[str], position: int) -> float:
        """Seconds until the ``position``-th waiter would get a slot, from recent service times."""
        pools = [p for c in candidates if (p := self.pools.get(c)) is not None and p.healthy]
        capacity = sum(p.capacity for p in pools) or 1
        times = [p.service_s for p in pools if p.service_s is not None]
        service = sum(times) / len(times) if times else _DEFAULT_SERVICE_S
        return math.ceil(position / capacity) * service

    def queued(self, lane: str) -> int:
        queue = self._queues.get(lane)
        return len(queue) if queue else 0

    def queue_depths(self) -> dict[str, int]:
        return {lane: len(q) for lane, q in self._queues.items()}

    # -- internals ----------------------------------------------------------------------------

    def _leave(self, queue: deque[_Waiter], waiter: _Waiter) -> SlotPool | None:
        """Take a waiter out; return the slot it was handed in the meantime, if any."""
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        with suppress(ValueError):
            queue.remove(waiter)
        return None

    def _dispatch(self, pool: SlotPool) -> None:
        while pool.healthy and pool.in_use < pool.capacity:
            oldest: deque[_Waiter] | None = None
            for queue in self._queues.values():
                while queue and queue[0].future.done():
                    queue.popleft()  # cancelled while queued
                if (
                    queue
                    and pool.name in queue[0].candidates
                    and (oldest is None or queue[0].seq < oldest[0].seq)
                ):
                    oldest = queue
            if oldest is None:
                return
            waiter = oldest.popleft()
            pool.in_use += 1
            waiter.future.set_result(pool)

    def _fail_stranded(self, why: str) -> None:
        for queue in self._queues.values():
            for waiter in list(queue):
                if waiter.future.done() or self.any_healthy(waiter.candidates):
                    continue
                queue.remove(waiter)
                waiter.future.set_exception(unavailable(why, retry_after=_DEFAULT_SERVICE_S))
