"""Keys created at run time, and every key's usage, in SQLite (one gateway) or PostgreSQL
(several gateways sharing one fleet).

Only a key's SHA-256 digest is stored; the key itself is returned once, when it is made.
Usage is kept per key, route and local day; a budget check sums the days of its period plus
the reservations still in flight (each with an expiry, so a gateway that died mid-request does
not hold budget forever). The check and the reservation are one transaction under a per-key
lock (PostgreSQL: an advisory transaction lock; SQLite: ``BEGIN IMMEDIATE``), so gateways
sharing a store cannot both spend the last of a budget.

Every method blocks: the gateway calls them in a worker thread.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import PERIODS, Budgets, KeySpec, priority_value
from fleetgate.gateway.config import hash_key
from fleetgate.gateway.periods import Period, local_day, period_of

KEY_PREFIX = "fg-"

_meta = sa.MetaData()
_keys = sa.Table(
    "fleetgate_keys",
    _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("routes", sa.Text, nullable=False),  # JSON list
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("max_concurrency", sa.Integer),
    sa.Column("budgets", sa.Text, nullable=False),  # JSON object
    sa.Column("created_at", sa.Float, nullable=False),
)
_hashes = sa.Table(
    "fleetgate_key_hashes",
    _meta,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("expires_at", sa.Float),  # None: the current key; set when it was rotated away
)
_usage = sa.Table(
    "fleetgate_usage",
    _meta,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("route", sa.String(200), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
)
_refusals = sa.Table(
    "fleetgate_refusals",
    _meta,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("route", sa.String(200), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("reason", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, default=0),
)
_reservations = sa.Table(
    "fleetgate_reservations",
    _meta,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(200), nullable=False, index=True),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


class KeyStoreError(FleetgateError):
    """A key operation that cannot be done (a name taken, a key unknown, a store unreachable)."""


@dataclass(frozen=True)
class StoredKey:
    """A run-time key as the store keeps it (its digests, never the key)."""

    name: str
    routes: tuple[str, ...]
    priority: int
    max_concurrency: int | None
    budgets: Budgets
    created_at: float
    # digest -> when it stops working (None: it is the current key)
    digests: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetLevel:
    """One budget after a reservation: what is allowed, what is spent or held, when it resets."""

    unit: str  # "tokens" or "requests"
    period: Period
    allowed: int
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.allowed - self.used)


class BudgetSpent(Exception):
    """A key's budget has nothing left for this request."""

    def __init__(self, key: str, level: BudgetLevel) -> None:
        super().__init__(key, level)
        self.key = key
        self.level = level


@dataclass(frozen=True)
class Reservation:
    id: str
    key: str
    route: str
    tokens: int
    levels: tuple[BudgetLevel, ...]


@dataclass(frozen=True)
class UsageRow:
    key: str
    route: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    refusals: dict[str, int]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def engine_for(url: str | None) -> Engine:
    """``None``: a private in-memory SQLite; a ``postgresql://`` DSN: PostgreSQL through
    psycopg; anything else: a SQLite file path."""
    if url is None:
        return sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        rest = url.split("://", 1)[1]
        return sa.create_engine(f"postgresql+psycopg://{rest}", pool_pre_ping=True)
    if url.startswith("sqlite:"):
        raise KeyStoreError(f"give the store as a file path, not a SQLAlchemy URL: {url!r}")
    try:
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyStoreError(f"cannot make the key store's directory for {url!r}: {exc}") from None
    engine = sa.create_engine(
        sa.engine.URL.create("sqlite", database=str(Path(url).expanduser())),
        connect_args={"timeout": 30},
    )

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None  # we say BEGIN ourselves, IMMEDIATE
        # a write-ahead log synced at checkpoints: a commit per request costs no fsync, and a
        # crash loses at most the last moments of usage, never the file
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class KeyStore:
    """Run-time keys and usage counters over one database."""

    def __init__(
        self, url: str | None, *, zone: str = "UTC", clock: Callable[[], float] = time.time
    ) -> None:
        self.zone = zone
        self.clock = clock
        self._engine = engine_for(url)
        self._postgres = self._engine.dialect.name == "postgresql"
        # SQLite serializes writers anyway; one lock keeps this process's threads off each
        # other's connection (the in-memory store has exactly one).
        self._lock = threading.Lock() if not self._postgres else None
        try:
            _meta.create_all(self._engine)
        except sa.exc.SQLAlchemyError as exc:
            raise KeyStoreError(
                f"cannot open the key store: {exc.__class__.__name__}: {exc}"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        if self._lock is None:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._lock, self._engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    # -- keys -----------------------------------------------------------------------------------

    def create(self, spec: KeySpec) -> str:
        """Make a key; return it (this is the only time it is seen)."""
        key = new_key()
        name = spec.name
        with self._tx() as conn:
            if conn.execute(sa.select(_keys.c.name).where(_keys.c.name == name)).first():
                raise KeyStoreError(f"a key named {name!r} exists already")
            conn.execute(
                _keys.insert().values(
                    name=name,
                    routes=json.dumps(spec.routes),
                    priority=priority_value(spec.priority),
                    max_concurrency=spec.max_concurrency,
                    budgets=spec.budgets.model_dump_json(exclude_none=True),
                    created_at=self.clock(),
                )
            )
            conn.execute(_hashes.insert().values(digest=hash_key(key), name=name))
        return key

    def rotate(self, name: str, grace_s: float) -> str:
        """A new key for ``name``; the ones it had keep working for ``grace_s`` seconds."""
        key = new_key()
        until = self.clock() + grace_s
        with self._tx() as conn:
            self._require(conn, name)
            conn.execute(
                _hashes.update()
                .where(_hashes.c.name == name)
                .where(sa.or_(_hashes.c.expires_at.is_(None), _hashes.c.expires_at > until))
                .values(expires_at=until)
            )
            conn.execute(_hashes.insert().values(digest=hash_key(key), name=name))
        return key

    def revoke(self, name: str) -> None:
        """Remove a key now; its usage stays in the report."""
        with self._tx() as conn:
            self._require(conn, name)
            conn.execute(_hashes.delete().where(_hashes.c.name == name))
            conn.execute(_keys.delete().where(_keys.c.name == name))

    def list_keys(self) -> list[StoredKey]:
        """Every key with the digests that still work."""
        now = self.clock()
        with self._tx() as conn:
            rows = conn.execute(sa.select(_keys).order_by(_keys.c.name)).all()
            digests: dict[str, dict[str, float | None]] = {}
            for d in conn.execute(
                sa.select(_hashes).where(
                    sa.or_(_hashes.c.expires_at.is_(None), _hashes.c.expires_at > now)
                )
            ):
                digests.setdefault(d.name, {})[d.digest] = d.expires_at
        return [
            StoredKey(
                name=r.name,
                routes=tuple(json.loads(r.routes)),
                priority=r.priority,
                max_concurrency=r.max_concurrency,
                budgets=Budgets.model_validate_json(r.budgets),
                created_at=r.created_at,
                digests=digests.get(r.name, {}),
            )
            for r in rows
        ]

    def _require(self, conn: Connection, name: str) -> None:
        if not conn.execute(sa.select(_keys.c.name).where(_keys.c.name == name)).first():
            raise KeyStoreError(f"no key named {name!r} in the store")

    # -- budgets and usage ----------------------------------------------------------------------

    def reserve(
        self,
        key: str,
        route: str,
        tokens: int,
        budgets: Iterable[tuple[str, str, int]],
        hold_s: float,
    ) -> Reservation:
        """Hold ``tokens`` and one request against ``key``'s budgets, or raise
        :class:`BudgetSpent` naming the first that is spent.

        A token budget admits while anything is left (so the last request may overrun it by
        at most its own reservation); a request budget admits exactly up to its count.
        """
        now = self.clock()
        limits = list(budgets)
        rid = str(uuid.uuid4())
        with self._tx() as conn:
            if self._postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(key))))
            levels: list[BudgetLevel] = []
            held_tokens, held_requests = self._held(conn, key, now)
            for unit, kind, allowed in limits:
                period = period_of(kind, now, self.zone)
                requests, prompt, completion = self._spent(conn, key, period)
                if unit == "tokens":
                    used = prompt + completion + held_tokens
                    if used >= allowed:
                        raise BudgetSpent(key, BudgetLevel(unit, period, allowed, used))
                    levels.append(BudgetLevel(unit, period, allowed, used + tokens))
                else:
                    used = requests + held_requests
                    if used + 1 > allowed:
                        raise BudgetSpent(key, BudgetLevel(unit, period, allowed, used))
                    levels.append(BudgetLevel(unit, period, allowed, used + 1))
            conn.execute(
                _reservations.insert().values(
                    id=rid, key=key, tokens=tokens, expires_at=now + hold_s
                )
            )
        return Reservation(rid, key, route, tokens, tuple(levels))

    def settle(
        self, reservation: Reservation | None, key: str, route: str, prompt: int, completion: int
    ) -> None:
        """Drop the reservation (if any) and count one request with the tokens really used."""
        self.add_usage({(key, route, self.today()): (1, prompt, completion)}, reservation)

    def add_usage(
        self,
        counts: Mapping[tuple[str, str, date], tuple[int, int, int]],
        reservation: Reservation | None = None,
    ) -> None:
        """Add (requests, prompt, completion) per (key, route, local day), in one transaction
        with dropping ``reservation``."""
        with self._tx() as conn:
            if reservation is not None:
                conn.execute(_reservations.delete().where(_reservations.c.id == reservation.id))
            for (key, route, day), (n, prompt, completion) in counts.items():
                stmt = self._insert(_usage).values(
                    key=key,
                    route=route,
                    day=day,
                    requests=n,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["key", "route", "day"],
                        set_={
                            "requests": _usage.c.requests + n,
                            "prompt_tokens": _usage.c.prompt_tokens + prompt,
                            "completion_tokens": _usage.c.completion_tokens + completion,
                        },
                    )
                )

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose request never reached a backend (nothing is counted)."""
        with self._tx() as conn:
            conn.execute(_reservations.delete().where(_reservations.c.id == reservation.id))

    def today(self) -> date:
        return local_day(self.clock(), self.zone)

    def add_refusals(self, counts: Mapping[tuple[str, str, str, date], int]) -> None:
        """Count refusals by (key, route, reason, local day)."""
        if not counts:
            return
        with self._tx() as conn:
            for (key, route, reason, day), n in counts.items():
                stmt = self._insert(_refusals).values(
                    key=key, route=route, day=day, reason=reason, count=n
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["key", "route", "day", "reason"],
                        set_={"count": _refusals.c.count + n},
                    )
                )

    def levels(self, key: str, budgets: Iterable[tuple[str, str, int]]) -> list[BudgetLevel]:
        """Each budget's state now, reserving nothing."""
        now = self.clock()
        out = []
        with self._tx() as conn:
            held_tokens, held_requests = self._held(conn, key, now)
            for unit, kind, allowed in budgets:
                period = period_of(kind, now, self.zone)
                requests, prompt, completion = self._spent(conn, key, period)
                used = prompt + completion + held_tokens if unit == "tokens" else requests
                if unit == "requests":
                    used += held_requests
                out.append(BudgetLevel(unit, period, allowed, used))
        return out

    def usage(self, period: str = "day", key: str | None = None) -> list[UsageRow]:
        """Per key and route, what the current ``period`` (day, week, month) has seen."""
        if period not in PERIODS:
            raise KeyStoreError(f"unknown period {period!r}: use day, week or month")
        p = period_of(period, self.clock(), self.zone)
        u, r = _usage.c, _refusals.c
        q = (
            sa.select(
                u.key,
                u.route,
                sa.func.sum(u.requests),
                sa.func.sum(u.prompt_tokens),
                sa.func.sum(u.completion_tokens),
            )
            .where(u.day.between(p.first, p.last))
            .group_by(u.key, u.route)
        )
        rq = (
            sa.select(r.key, r.route, r.reason, sa.func.sum(r.count))
            .where(r.day.between(p.first, p.last))
            .group_by(r.key, r.route, r.reason)
        )
        if key is not None:
            q, rq = q.where(u.key == key), rq.where(r.key == key)
        with self._tx() as conn:
            rows = {
                (k, rt): [int(n or 0), int(pt or 0), int(ct or 0)]
                for k, rt, n, pt, ct in conn.execute(q)
            }
            refused: dict[tuple[str, str], dict[str, int]] = {}
            for k, rt, reason, n in conn.execute(rq):
                refused.setdefault((k, rt), {})[reason] = int(n)
                rows.setdefault((k, rt), [0, 0, 0])
        return [
            UsageRow(k, rt, n, pt, ct, refused.get((k, rt), {}))
            for (k, rt), (n, pt, ct) in sorted(rows.items())
        ]

    def _held(self, conn: Connection, key: str, now: float) -> tuple[int, int]:
        res = _reservations.c
        tokens, count = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(res.tokens), 0), sa.func.count())
            .where(res.key == key)
            .where(res.expires_at > now)
        ).one()
        return int(tokens), int(count)

    def _spent(self, conn: Connection, key: str, period: Period) -> tuple[int, int, int]:
        u = _usage.c
        n, pt, ct = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(u.requests), 0),
                sa.func.coalesce(sa.func.sum(u.prompt_tokens), 0),
                sa.func.coalesce(sa.func.sum(u.completion_tokens), 0),
            )
            .where(u.key == key)
            .where(u.day.between(period.first, period.last))
        ).one()
        return int(n), int(pt), int(ct)
