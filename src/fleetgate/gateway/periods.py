"""Calendar budget periods (day, week from Monday, month) in the fleet's time zone.

Usage is stored per local day, so a week or a month is a range of days: the period a moment
falls in is named by its first day, and it resets at the next period's first midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Period:
    """One calendar period: its first and last local day, and when it ends (epoch seconds)."""

    kind: str
    first: date
    last: date
    resets_at: float
    zone: str

    def reset_text(self) -> str:
        """The reset moment as the fleet's clock says it, e.g. ``2026-12-02 00:00 UTC``."""
        local = datetime.fromtimestamp(self.resets_at, ZoneInfo(self.zone))
        return f"{local:%Y-%m-%d %H:%M} {self.zone}"


def local_day(now: float, zone: str) -> date:
    return datetime.fromtimestamp(now, ZoneInfo(zone)).date()


def period_of(kind: str, now: float, zone: str) -> Period:
    """The ``kind`` (day, week or month) period that ``now`` falls in."""
    today = local_day(now, zone)
    if kind == "day":
        first, after = today, today + timedelta(days=1)
    elif kind == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif kind == "month":
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {kind!r}: use day, week or month")
    tz = ZoneInfo(zone)
    resets_at = datetime(after.year, after.month, after.day, tzinfo=tz).timestamp()
    return Period(kind, first, after - timedelta(days=1), resets_at, zone)
