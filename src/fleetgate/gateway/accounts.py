"""Whose request it is and what they may still spend: the fleet file's keys and the store's.

The store's keys are cached and re-read every :data:`REFRESH_S` seconds (and at once after a
change through this gateway's admin endpoints), so a key made, rotated or revoked by the CLI
or by another gateway sharing the store works here without a restart. Budgets are reserved
in the store when a request is admitted and settled on the backend's reported usage when it
ends, as RPM/TPM are; refusals are counted in memory and written with the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextlib import suppress
from datetime import date
from time import time

from fleetgate.fleetfile import KeySpec
from fleetgate.gateway.config import GatewayConfig, KeyConfig
from fleetgate.gateway.errors import GatewayError
from fleetgate.gateway.keystore import (
    BudgetLevel,
    BudgetSpent,
    KeyStore,
    KeyStoreError,
    Reservation,
    StoredKey,
    UsageRow,
)
from fleetgate.gateway.ratelimit import Level

log = logging.getLogger("fleetgate.gateway")

REFRESH_S = 1.0
# A budget that resets within this long says so in Retry-After too; a longer wait is only in
# the message (a client told "retry in 9 days" by a header just sleeps).
SHORT_PERIOD_S = 24 * 3600


def quota_exceeded(spent: BudgetSpent) -> GatewayError:
    lv = spent.level
    wait = lv.period.resets_at - time()
    return GatewayError(
        429,
        f"the {lv.unit} budget per {lv.period.kind} of key {spent.key!r} is spent: "
        f"{lv.used} {lv.unit} used of {lv.allowed} allowed; it resets at "
        f"{lv.period.reset_text()}",
        reason="quota_exceeded",
        code="quota_exceeded",
        param=f"{lv.unit}_per_{lv.period.kind}",
        retry_after=wait if wait <= SHORT_PERIOD_S else None,
    )


def budget_levels(levels: tuple[BudgetLevel, ...] | list[BudgetLevel]) -> list[Level]:
    now = time()
    return [Level(b.unit, b.allowed, b.remaining, b.period.resets_at - now) for b in levels]


def _key_config(stored: StoredKey) -> KeyConfig:
    return KeyConfig(
        stored.name,
        frozenset(stored.routes),
        stored.priority,
        stored.max_concurrency,
        tuple(stored.budgets.limits()),
    )


class Accounts:
    """The keys a gateway knows and their budgets, over one :class:`KeyStore`."""

    def __init__(self, config: GatewayConfig, *, store: KeyStore | None = None) -> None:
        self.config = config
        self.store = store or KeyStore(config.store, zone=config.timezone)
        self._stored: dict[str, KeyConfig] = {}  # digest -> key, from the store
        self._refused: Counter[tuple[str, str, str, date]] = Counter()
        # usage of keys without budgets, written with the next refresh (nothing waits on it)
        self._unbudgeted: dict[tuple[str, str, date], tuple[int, int, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.refresh_now()

    def configure(self, config: GatewayConfig) -> None:
        if (config.store, config.timezone) != (self.config.store, self.config.timezone):
            log.warning("gateway.store or gateway.timezone changed: takes effect on restart")
        self.config = config

    # -- who -----------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """No key in the fleet file nor in the store: anyone may use every route."""
        return not self.config.keys and not self._stored

    def find(self, digest: str) -> KeyConfig | None:
        return self.config.keys.get(digest) or self._stored.get(digest)

    def names(self) -> list[str]:
        """Every key's name: the fleet file's, then the store's (the /ui page lists them)."""
        fleet = [k.name for k in self.config.keys.values()]
        return list(dict.fromkeys([*fleet, *(k.name for k in self._stored.values())]))

    def refresh_now(self) -> None:
        """Re-read the store's keys (blocking: at start and in a worker thread after)."""
        self._stored = {
            digest: _key_config(k) for k in self.store.list_keys() for digest in k.digests
        }

    async def refresh(self) -> None:
        try:
            await asyncio.to_thread(self.refresh_now)
        except Exception as exc:  # the store is away: keep the keys we know, try again
            log.warning("key store unavailable, keeping the last keys read: %s", exc)
        await self._flush()

    async def _flush(self) -> None:
        """Write the counts kept in memory; if the store is away they wait for the next try."""
        refused, self._refused = self._refused, Counter()
        used, self._unbudgeted = self._unbudgeted, {}
        try:
            if refused:
                await asyncio.to_thread(self.store.add_refusals, refused)
                refused = Counter()
            if used:
                await asyncio.to_thread(self.store.add_usage, used)
        except Exception as exc:
            log.warning("key store unavailable, usage kept to write later: %s", exc)
            self._refused.update(refused)
            for slot, (n, p, c) in used.items():
                n0, p0, c0 = self._unbudgeted.get(slot, (0, 0, 0))
                self._unbudgeted[slot] = (n0 + n, p0 + p, c0 + c)

    async def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(REFRESH_S)
                await self.refresh()

        self._task = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self.refresh()  # the last refusals
        self.store.close()

    # -- spending ------------------------------------------------------------------------------

    async def reserve(
        self, key: KeyConfig, route: str, tokens: int, hold_s: float
    ) -> Reservation | None:
        """Hold ``tokens`` and one request against ``key``'s budgets (429 quota_exceeded).

        If the store cannot be reached the request is admitted unreserved (None) and the log
        says so, as the RPM/TPM limiter does: a store outage is not a model outage.
        """
        try:
            return await asyncio.to_thread(
                self.store.reserve, key.name, route, tokens, key.budgets, hold_s
            )
        except BudgetSpent as spent:
            raise quota_exceeded(spent) from None
        except Exception as exc:
            log.warning("key store unavailable, admitting %r unreserved: %s", key.name, exc)
            return None

    async def settle(
        self,
        reservation: Reservation | None,
        key: KeyConfig,
        route: str,
        prompt: int,
        completion: int,
    ) -> None:
        """Count a request that reached a backend, with the tokens it really used. A key
        without budgets is counted in memory and written with the next refresh."""
        if not key.budgets and reservation is None:
            slot = (key.name, route, self.store.today())
            n, p, c = self._unbudgeted.get(slot, (0, 0, 0))
            self._unbudgeted[slot] = (n + 1, p + prompt, c + completion)
            return
        try:
            await asyncio.to_thread(
                self.store.settle, reservation, key.name, route, prompt, completion
            )
        except Exception as exc:
            log.warning("key store unavailable, usage of %r not counted: %s", key.name, exc)

    async def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose request never reached a backend."""
        try:
            await asyncio.to_thread(self.store.release, reservation)
        except Exception as exc:
            log.warning("key store unavailable, reservation left to expire: %s", exc)

    def refused(self, key: str, route: str, reason: str) -> None:
        self._refused[(key, route, reason, self.store.today())] += 1

    # -- reading and changing keys (admin endpoints, /ui) ----------------------------------------

    async def usage(self, period: str, key: str | None = None) -> list[UsageRow]:
        await self._flush()
        return await asyncio.to_thread(self.store.usage, period, key)

    async def levels(self, key: KeyConfig) -> list[BudgetLevel]:
        return await asyncio.to_thread(self.store.levels, key.name, key.budgets)

    async def create(self, spec: KeySpec) -> str:
        """A store key; the key itself is returned once."""
        if spec.name in {k.name for k in self.config.keys.values()}:
            raise KeyStoreError(f"a key named {spec.name!r} is in the fleet file already")
        raw = await asyncio.to_thread(self.store.create, spec)
        await self.refresh()
        return raw

    async def rotate(self, name: str, grace_s: float) -> str:
        raw = await asyncio.to_thread(self.store.rotate, name, grace_s)
        await self.refresh()
        return raw

    async def revoke(self, name: str) -> None:
        await asyncio.to_thread(self.store.revoke, name)
        await self.refresh()
