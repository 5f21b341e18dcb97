"""What the acceptance check reports: one pass or fail per criterion, with its evidence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Step = Callable[[str], None]  # reports progress, one line at a time


@dataclass
class Criterion:
    number: int
    title: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class AcceptanceReport:
    url: str
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.criteria) and all(c.ok for c in self.criteria)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "criteria": [c.__dict__ for c in self.criteria],
        }
