"""Concurrency slots per deployment and a bounded queue, with a deadline, per lane.

A lane is a route or one of its profiles: lanes that point at the same deployment share its
slots, but each has its own queue depth and wait. Slots are handed straight from a finishing
request to the next waiter, so nobody barges past the queue. Which waiter is next is the fair
order (:meth:`Admission._next_for`): the highest priority class first, then the key that has
been granted the fewest slots (a start-time fair queue with unit cost: a key that queued 100
requests takes turns with a key that queued one), then arrival. A waiter past half its wait is
promoted above every class, so low-priority work is served before its deadline however much
high-priority work keeps arriving. A key at its ``max_concurrency`` waits until one of its own
requests ends. ``Admission(fair=False)`` is the plain FIFO by arrival (the benchmark's baseline).

On-demand deployments: when none of a request's deployments serves, the request waits (counted
in its lane's queue, bounded by its load wait) while the :class:`Readiness` brings one up. A
deployment the controller drains admits nothing new; its queued waiters go back to asking for
a bring-up. The admission state is the controller's view of the traffic (:class:`Traffic`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from time import monotonic

from fleetgate.gateway.errors import (
    GatewayError,
    all_down,
    bad_request,
    rate_limited,
    retry_after_seconds,
    unavailable,
)
from fleetgate.gateway.readiness import Readiness

# With nothing finished and nothing running to go by, assume this long per request.
_DEFAULT_SERVICE_S = 1.0
# Retry-After never says more than this, so the common clients wait for it and retry: the
# official openai client sleeps for a Retry-After of at most 60 s in its 1.x releases (past it,
# its own short backoff), and in its current ones does not retry at all past 120 s
# (openai-python `_base_client.py`: `_calculate_retry_timeout` and `_should_retry` with
# `MAX_RETRY_AFTER_DELAY = 2 * 60` in `_constants.py`, read in 3.57.0). A wait longer than
# that belongs in the queue (a profile with a deeper queue and a longer queue_wait_s).
MAX_RETRY_AFTER_S = 60
_EWMA = 0.2


@dataclass(eq=False)
class SlotPool:
    """One deployment's in-flight requests, capped at its concurrency."""

    name: str
    capacity: int
    in_use: int = 0
    healthy: bool = True
    on_demand: bool = False
    admitting: bool = True  # False while the controller has it down, starting or draining
    service_s: float | None = None  # moving average of how long a slot is held
    # when each held slot was handed out (monotonic), one entry per slot in use
    running_since: list[float] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return self.healthy and self.admitting

    @property
    def free(self) -> bool:
        return self.serving and self.in_use < self.capacity

    def take(self, count: int = 1) -> None:
        self.in_use += count
        self.running_since.extend([monotonic()] * count)

    def give_back(self, held_s: float | None, count: int = 1) -> None:
        """Free ``count`` slots; their hand-out time is the one closest to ``now - held_s`` (the
        holder's own clock reading differs by microseconds), or the newest if it did not say."""
        self.in_use -= count
        since = self.running_since
        for _ in range(count):
            if not since:
                return
            if held_s is None or len(since) == 1:
                since.pop()
                continue
            target = monotonic() - held_s
            since.remove(min(since, key=lambda s: abs(s - target)))


@dataclass(frozen=True)
class Claimant:
    """Who a waiter waits for: a key's name, its priority class (higher first) and how many of
    its requests may hold slots at once (None: no cap)."""

    key: str
    priority: int = 10
    max_concurrency: int | None = None


ANONYMOUS = Claimant("")
# A waiter past this share of its queue wait outranks every priority class.
AGING_SHARE = 0.5
_PROMOTED = 1 << 16


@dataclass(eq=False)
class _Waiter:
    seq: int
    lane: str
    route: str
    candidates: tuple[str, ...]
    future: asyncio.Future[SlotPool]
    slots: int = 1  # sequences the request runs at once (n, or a batch of prompts)
    claimant: Claimant = ANONYMOUS
    age_at: float = math.inf  # monotonic time from which it is promoted
    since: float = field(default_factory=monotonic)


class _Requeue(Exception):
    """A queued request's deployments stopped serving (drained for a swap): ask again."""


class Admission:
    """Hands out deployment slots; queues the rest, bounded per lane."""

    def __init__(self, *, fair: bool = True) -> None:
        self.pools: dict[str, SlotPool] = {}
        self.fair = fair
        self.recheck_s = 5.0  # how often a down deployment is checked again (Retry-After of 503)
        self._queues: dict[str, deque[_Waiter]] = {}
        self._seq = itertools.count()
        self._running: dict[str, int] = {}  # key -> its requests holding slots
        self._granted: dict[str, int] = {}  # key -> virtual time: grants so far (fair order)
        self.readiness: Readiness | None = None
        # deployment -> when each request waiting for its bring-up arrived
        self._loading: dict[str, list[float]] = {}
        self._loading_lanes: dict[str, int] = {}

    # -- configuration and health -------------------------------------------------------------

    def configure(
        self,
        capacities: dict[str, int],
        recheck_s: float | None = None,
        on_demand: frozenset[str] = frozenset(),
        *,
        renamed: dict[str, str] | None = None,
    ) -> None:
        """Set every deployment's capacity (slots held by in-flight requests are kept), how
        often the health checks look at a down deployment again, and which deployments are
        brought up on demand (they admit nothing until the controller says they serve).

        ``renamed`` maps a new name to the old name of the same backend: its pool (the slots in
        use, its health) moves to the new name and its waiters stay queued, so a rename
        neither fails the queue nor lets the backend be admitted twice over."""
        if recheck_s is not None:
            self.recheck_s = recheck_s
        for new, old in (renamed or {}).items():
            pool = self.pools.pop(old, None)
            if pool is None:
                continue
            pool.name = new
            self.pools[new] = pool
            for queue in self._queues.values():
                for waiter in queue:
                    waiter.candidates = tuple(new if c == old else c for c in waiter.candidates)
        for name, capacity in capacities.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = SlotPool(name, capacity)
                pool.admitting = name not in on_demand
            else:
                pool.capacity = capacity
            pool.on_demand = name in on_demand
        for name in [n for n in self.pools if n not in capacities]:
            del self.pools[name]  # holders still release into the old object
        self._fail_stranded("removed by a reload")
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
            self._fail_stranded()

    def any_healthy(self, candidates: Iterable[str]) -> bool:
        """One of them serves now, or can be brought up on demand."""
        return any(
            (p := self.pools.get(c)) is not None and (p.serving or self._startable(p))
            for c in candidates
        )

    def _startable(self, pool: SlotPool) -> bool:
        return (
            pool.on_demand
            and self.readiness is not None
            and self.readiness.refused(pool.name) is None
        )

    def _serving(self, candidates: Iterable[str]) -> bool:
        return any((p := self.pools.get(c)) is not None and p.serving for c in candidates)

    def require_healthy(self, route: str, candidates: tuple[str, ...]) -> None:
        """503 unless one of the route's deployments is up (or can be brought up): the one
        place that refusal is made."""
        if self.any_healthy(candidates):
            return
        if self.readiness is not None:
            for name in candidates:
                refusal = self.readiness.refused(name) if self.readiness.manages(name) else None
                if refusal is not None:
                    raise unavailable(
                        f"no deployment of {route!r} is up; {name!r} failed to start: "
                        f"{refusal.message}",
                        retry_after=refusal.retry_after_s,
                    )
        raise all_down(route, candidates, self.recheck_s)

    # -- the controller's view (Traffic) ------------------------------------------------------

    def in_flight(self, deployment: str) -> int:
        pool = self.pools.get(deployment)
        return pool.in_use if pool else 0

    def waiting(self, deployment: str) -> int:
        """Requests queued for ``deployment`` or waiting for its bring-up."""
        queued = sum(
            1
            for queue in self._queues.values()
            for w in queue
            if not w.future.done() and deployment in w.candidates
        )
        return queued + len(self._loading.get(deployment, ()))

    def oldest_waiting(self, deployment: str) -> float | None:
        """When the longest-waiting request for ``deployment`` arrived (monotonic), if any."""
        times = [
            w.since
            for queue in self._queues.values()
            for w in queue
            if not w.future.done() and deployment in w.candidates
        ]
        times += self._loading.get(deployment, ())
        return min(times, default=None)

    def admit(self, deployment: str, on: bool) -> None:
        """The controller's word: ``deployment`` serves (it passed its checks just now), or it
        takes nothing new (draining, stopped, asleep)."""
        pool = self.pools.get(deployment)
        if pool is None:
            return
        if on:
            pool.admitting = pool.healthy = True
            self._dispatch(pool)
        elif pool.admitting:
            pool.admitting = False
            self._fail_stranded()

    # -- the request path ---------------------------------------------------------------------

    def try_acquire(
        self,
        candidates: Iterable[str],
        exclude: str | None = None,
        slots: int = 1,
        *,
        ordered: bool = False,
    ) -> SlotPool | None:
        """``slots`` free slots on the serving deployment with the fewest requests in flight
        (or, with ``ordered``, the first in order that has them), if any."""
        best = None
        for name in candidates:
            pool = self.pools.get(name)
            if (
                pool is not None
                and name != exclude
                and pool.serving
                and pool.in_use + slots <= pool.capacity
                and (best is None or pool.in_use < best.in_use)
            ):
                best = pool
                if ordered:
                    break
        if best is not None:
            best.take(slots)
        return best

    async def acquire(
        self,
        lane: str,
        candidates: tuple[str, ...],
        depth: int,
        wait_s: float,
        *,
        route: str | None = None,
        load_wait_s: float | None = None,
        ordered: bool = False,
        slots: int = 1,
        claimant: Claimant = ANONYMOUS,
    ) -> SlotPool:
        """``slots`` slots on one deployment now (a request running ``slots`` sequences holds
        that many), or a place in the lane's queue until they free up or ``wait_s`` passes;
        where no deployment serves but one can be brought up on demand, first its bring-up
        (bounded by ``load_wait_s``).

        Raises 400 when no candidate has that many slots at all, 429 when the queue is full or
        the wait runs out, 503 when every candidate of ``route`` (default: the lane) is down or
        its start failed. A cancelled caller (client gone) leaves the queue. Give the slots
        back with :meth:`release` and the same ``claimant``.
        """
        route = route or lane
        most = max((p.capacity for c in candidates if (p := self.pools.get(c))), default=0)
        if slots > most:
            raise bad_request(
                f"this request runs {slots} sequences at once (n times the prompts), more than "
                f"the {most} concurrency slots a deployment of {route!r} has; lower n or send "
                "fewer prompts per request",
                param="n",
            )
        arrived = monotonic()
        load_deadline = arrived + (load_wait_s if load_wait_s is not None else wait_s)
        while True:
            if not self._capped(claimant):
                pool = self.try_acquire(candidates, slots=slots, ordered=ordered)
                if pool is not None:
                    self._grant(claimant)
                    return pool
            self.require_healthy(route, candidates)
            if not self._serving(candidates):
                await self.bring_up(lane, route, candidates, depth, load_deadline, arrived)
                continue
            try:
                return await self._wait_in_queue(
                    lane, route, candidates, depth, wait_s, slots, claimant
                )
            except _Requeue:
                continue

    async def ensure_serving(
        self, lane: str, route: str, candidates: tuple[str, ...], depth: int, load_wait_s: float
    ) -> None:
        """Before asking a backend anything (its token count): if none of ``candidates``
        serves, wait while one is brought up."""
        if self.readiness is not None and not self._serving(candidates):
            self.require_healthy(route, candidates)
            now = monotonic()
            await self.bring_up(lane, route, candidates, depth, now + load_wait_s, now)

    async def bring_up(
        self,
        lane: str,
        route: str,
        candidates: tuple[str, ...],
        depth: int,
        deadline: float,
        arrived: float,
    ) -> None:
        """Wait (a place in the lane's queue) while the first startable candidate is brought
        up; 503 with the controller's reason if it cannot be by ``deadline``."""
        readiness = self.readiness
        target = next(
            (c for c in candidates if (p := self.pools.get(c)) is not None and self._startable(p)),
            None,
        )
        if readiness is None or target is None:
            self.require_healthy(route, candidates)
            raise all_down(route, candidates, self.recheck_s)
        queued = len(self._queues.get(lane, ())) + self._loading_lanes.get(lane, 0)
        if queued >= depth:
            raise rate_limited(
                f"queue for {lane!r} is full: {queued} requests waiting in it while "
                f"{target!r} is brought up, queue_depth is {depth}",
                reason="queue_full",
                retry_after=max(1.0, deadline - monotonic()),
            )
        waiting = self._loading.setdefault(target, [])
        waiting.append(arrived)
        self._loading_lanes[lane] = self._loading_lanes.get(lane, 0) + 1
        try:
            refusal = await readiness.ensure_ready(target, deadline)
        finally:
            waiting.remove(arrived)
            self._loading_lanes[lane] -= 1
        if refusal is not None:
            raise unavailable(
                f"{route!r}: deployment {target!r} could not be brought up: {refusal.message}",
                retry_after=refusal.retry_after_s,
            )

    async def _wait_in_queue(
        self,
        lane: str,
        route: str,
        candidates: tuple[str, ...],
        depth: int,
        wait_s: float,
        slots: int = 1,
        claimant: Claimant = ANONYMOUS,
    ) -> SlotPool:
        queue = self._queues.setdefault(lane, deque())
        if len(queue) + self._loading_lanes.get(lane, 0) >= depth:
            ahead = self._waiting_ahead(candidates)
            # A place in this queue frees up when its first waiter gets a slot.
            head = next((w for w in queue if not w.future.done()), None)
            first = 1 if head is None else self._waiting_ahead(candidates, before=head.seq) + 1
            raise rate_limited(
                f"queue for {lane!r} is full: {len(queue)} requests waiting in it "
                f"({ahead} for its deployments in all), queue_depth is {depth}",
                reason="queue_full",
                retry_after=self.estimate_wait(candidates, first),
            )
        loop = asyncio.get_running_loop()
        self._catch_up(claimant)
        now = monotonic()
        waiter = _Waiter(
            next(self._seq),
            lane,
            route,
            candidates,
            loop.create_future(),
            slots,
            claimant,
            now + AGING_SHARE * wait_s,
            now,
        )
        queue.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                return await waiter.future
        except TimeoutError:
            ahead = self._waiting_ahead(candidates, before=waiter.seq)
            granted = self._leave(queue, waiter)
            if granted is not None:
                return granted
            waited = monotonic() - waiter.since
            raise rate_limited(
                f"waited {waited:.1f} s in the queue for {lane!r} and was still at position "
                f"{ahead + 1} ({ahead} ahead) for {len(candidates)} deployment(s); "
                f"queue_wait_s is {wait_s:g}",
                reason="queue_timeout",
                retry_after=self.estimate_wait(candidates, ahead + 1),
            ) from None
        except asyncio.CancelledError:
            granted = self._leave(queue, waiter)
            if granted is not None:
                self.release(granted, slots=slots, claimant=claimant)
            raise

    def release(
        self,
        pool: SlotPool,
        held_s: float | None = None,
        slots: int = 1,
        *,
        claimant: Claimant | None = None,
    ) -> None:
        """Give slots back. ``claimant`` is the one they were acquired for (None: a retry moving
        its slots to another deployment, which keeps the key's count as it is)."""
        pool.give_back(held_s, slots)
        if held_s is not None:
            prev = pool.service_s
            pool.service_s = held_s if prev is None else prev + _EWMA * (held_s - prev)
        if claimant is not None:
            left = self._running.get(claimant.key, 1) - 1
            if left > 0:
                self._running[claimant.key] = left
            else:
                self._running.pop(claimant.key, None)
            if claimant.max_concurrency is not None:
                # its own waiters may now go, on whichever deployment is free
                for other in self.pools.values():
                    self._dispatch(other)
                return
        self._dispatch(pool)

    def running(self) -> dict[str, int]:
        """Requests holding slots per key now (the /ui page and tests read it)."""
        return dict(self._running)

    def estimate_wait(self, candidates: Iterable[str], position: int) -> int:
        """Whole seconds (1 to :data:`MAX_RETRY_AFTER_S`) until the ``position``-th waiter would
        get a slot: its position times the recent service time per slot (slots free up one
        after another, not in rounds), an estimate rather than the worst case.

        A request's time is the recent service time, but at least how long the requests now
        running have been at it on average: one that has run 6 s is unlikely to end in 1 s.
        """
        now = monotonic()
        capacity = 0
        times: list[float] = []
        elapsed = 0.0
        running = 0
        for name in candidates:
            pool = self.pools.get(name)
            if pool is None or not pool.healthy:
                continue
            capacity += pool.capacity
            if pool.service_s is not None:
                times.append(pool.service_s)
            running += len(pool.running_since)
            elapsed += sum(now - s for s in pool.running_since)
        service = sum(times) / len(times) if times else _DEFAULT_SERVICE_S
        if running:
            service = max(service, elapsed / running)
        return min(MAX_RETRY_AFTER_S, retry_after_seconds(position * service / (capacity or 1)))

    def queued(self, lane: str) -> int:
        queue = self._queues.get(lane)
        return len(queue) if queue else 0

    def queue_depths(self) -> dict[str, int]:
        return {lane: len(q) for lane, q in self._queues.items()}

    # -- internals ----------------------------------------------------------------------------

    def _waiting_ahead(self, candidates: tuple[str, ...], before: int | None = None) -> int:
        """Waiters in any lane that compete for one of ``candidates`` (queued before ``before``)."""
        wanted = set(candidates)
        return sum(
            1
            for queue in self._queues.values()
            for w in queue
            if not w.future.done()
            and (before is None or w.seq < before)
            and not wanted.isdisjoint(w.candidates)
        )

    def _leave(self, queue: deque[_Waiter], waiter: _Waiter) -> SlotPool | None:
        """Take a waiter out; return the slot it was handed in the meantime, if any."""
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        with suppress(ValueError):
            queue.remove(waiter)
        return None

    def _capped(self, claimant: Claimant) -> bool:
        cap = claimant.max_concurrency
        return cap is not None and self._running.get(claimant.key, 0) >= cap

    def _grant(self, claimant: Claimant) -> None:
        self._running[claimant.key] = self._running.get(claimant.key, 0) + 1
        self._granted[claimant.key] = self._granted.get(claimant.key, 0) + 1

    def _catch_up(self, claimant: Claimant) -> None:
        """A key that starts waiting joins at the virtual time of those already waiting: it
        cannot bank turns while it was idle and then crowd everyone out."""
        waiting = {w.claimant.key for q in self._queues.values() for w in q}
        if claimant.key in waiting or not waiting:
            return
        floor = min(self._granted.get(k, 0) for k in waiting)
        if self._granted.get(claimant.key, 0) < floor:
            self._granted[claimant.key] = floor

    def _next_for(self, pool: SlotPool) -> _Waiter | None:
        """The waiter that gets ``pool``'s next free slots: FIFO, or the fair order (module
        doc). Keys at their ``max_concurrency`` are passed over."""
        best: _Waiter | None = None
        best_rank: tuple[int, int, int] | None = None
        now = monotonic()
        for queue in self._queues.values():
            while queue and queue[0].future.done():
                queue.popleft()  # cancelled while queued
            for w in queue:
                if w.future.done() or pool.name not in w.candidates or self._capped(w.claimant):
                    continue
                if not self.fair:
                    rank = (0, 0, w.seq)
                else:
                    cls = _PROMOTED if now >= w.age_at else w.claimant.priority
                    rank = (-cls, self._granted.get(w.claimant.key, 0), w.seq)
                if best_rank is None or rank < best_rank:
                    best, best_rank = w, rank
                if not self.fair:
                    break  # a lane's queue is in arrival order: its first eligible is its oldest
        return best

    def _dispatch(self, pool: SlotPool) -> None:
        while pool.free:
            waiter = self._next_for(pool)
            if waiter is None or pool.in_use + waiter.slots > pool.capacity:
                return  # the next waits for enough slots; nobody passes it meanwhile
            self._queues[waiter.lane].remove(waiter)
            pool.take(waiter.slots)
            self._grant(waiter.claimant)
            waiter.future.set_result(pool)

    def fail_waiting(self, error: Callable[[], GatewayError]) -> None:
        """Fail every queued request with an ``error()`` (the gateway is shutting down)."""
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(error())

    def _fail_stranded(self, state: str = "down") -> None:
        """Fail the waiters none of whose deployments is up, saying in what ``state`` they are;
        send back those that one can be brought up for."""
        for queue in self._queues.values():
            for waiter in list(queue):
                if waiter.future.done() or self._serving(waiter.candidates):
                    continue
                queue.remove(waiter)
                if self.any_healthy(waiter.candidates):
                    waiter.future.set_exception(_Requeue())
                else:
                    waiter.future.set_exception(
                        all_down(waiter.route, waiter.candidates, self.recheck_s, state=state)
                    )
