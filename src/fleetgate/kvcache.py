"""What a vLLM server says its KV cache holds, and how far a plan was from it.

The planner (``plan --from-log``) and the deploy health gate both read vLLM's own start-up
line; it lives here, at the top of the package, so both read it with the same code and deploy
does not have to import the planner to record what a release's servers reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A plan more than this far from what vLLM reported is a warning with both numbers.
DRIFT_WARN = 0.10
# vLLM before V1 logged blocks, not tokens, and its blocks held 16 tokens by default.
V0_BLOCK_TOKENS = 16

_SIZE = re.compile(r"(GPU|CPU) KV cache size: ([\d,]+) tokens")
_BLOCKS = re.compile(r"(?:^|#\s*|\]\s)(?:GPU|cuda|CUDA) blocks: (\d+)")


def kv_cache_line(line: str) -> tuple[int, str] | None:
    """The KV tokens one log line reports and on which device ("gpu", "cpu"); None if none.

    V1 (0.8 on): "GPU KV cache size: 158,656 tokens" (CPU on the CPU backend); V0 (0.6, 0.7):
    "# GPU blocks: 1952, # CPU blocks: 2048" or "# cuda blocks: ...".
    """
    if m := _SIZE.search(line):
        return int(m.group(2).replace(",", "")), m.group(1).lower()
    if m := _BLOCKS.search(line):
        return int(m.group(1)) * V0_BLOCK_TOKENS, "gpu"
    return None


def reported_kv_tokens(text: str) -> int | None:
    """The KV cache size a server's log reports: the last one, so that a restart's own line
    wins over an earlier start's still in the same log; None when it reports none."""
    found = None
    for line in text.splitlines():
        if (kv := kv_cache_line(line)) is not None:
            found = kv[0]
    return found


@dataclass(frozen=True)
class Drift:
    """Planned against reported KV tokens of one deployment; either may be unknown (a model
    the planner does not know, a log without the line)."""

    planned_tokens: int | None
    reported_tokens: int | None

    @property
    def relative(self) -> float | None:
        if self.planned_tokens is None or not self.reported_tokens:
            return None
        return self.planned_tokens / self.reported_tokens - 1

    @property
    def warning(self) -> str | None:
        """Both numbers, when the plan was more than DRIFT_WARN off."""
        if self.relative is None or abs(self.relative) <= DRIFT_WARN:
            return None
        return self.describe()

    def describe(self) -> str:
        planned, reported = self.planned_tokens, self.reported_tokens
        if planned is not None and reported is not None:
            off = f" ({self.relative:+.0%})" if self.relative is not None else ""
            return f"planned {planned:,} KV tokens, vLLM reported {reported:,}{off}"
        if reported is not None:
            return f"vLLM reported {reported:,} KV tokens (no plan: the planner cannot size it)"
        if planned is not None:
            return f"planned {planned:,} KV tokens; the server's log shows no KV cache size"
        return "no plan, and the server's log shows no KV cache size"

    def to_json(self) -> dict[str, Any]:
        return {"planned_tokens": self.planned_tokens, "reported_tokens": self.reported_tokens}

    @classmethod
    def from_json(cls, data: object) -> Drift | None:
        """A recorded entry; None for anything that is not one (a hand-edited file)."""
        if not isinstance(data, dict):
            return None
        planned, reported = data.get("planned_tokens"), data.get("reported_tokens")
        if not all(v is None or (type(v) is int and v >= 0) for v in (planned, reported)):
            return None
        return cls(planned, reported)
