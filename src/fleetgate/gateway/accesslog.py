"""The access log: one JSON line per request (never the key).

Without a stream, each line is a record of the ``fleetgate.gateway.access`` logger, so tests
and embedders capture it the usual way. A service hands the gateway a stream instead
(``fleetgate serve``: stderr): lines get the same ``<time> <logger> <json>`` shape that
``serve``'s logging setup gives its other lines, are collected, and go out in one write after
the current event-loop turn. At thousands of requests a second, a logging record with its lock,
formatter and flush per line costs a third of what the rest of a request does.

What a line says is an :class:`AccessRecord`, filled in as the request moves through the
gateway and written once when it ends, whatever way it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, TextIO

NAME = "fleetgate.gateway.access"
_logger = logging.getLogger(NAME)
log = logging.getLogger("fleetgate.gateway")


@dataclass(slots=True)
class AccessRecord:
    """One request as its access-log line tells it: the key's name, never the key."""

    endpoint: str  # as /metrics labels it: chat, completions, tokenize
    model: str | None = None  # the public name asked for, once it resolved
    lane: str | None = None
    deployment: str | None = None  # the one that answered (after retries)
    key: str | None = None
    status: int = 0  # 499 when the client went away first
    reason: str | None = None  # why it was refused or failed
    stream: bool = False
    attempts: int = 0
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None

    def line(self, duration_s: float) -> dict[str, Any]:
        """The JSON object of the log line (spelled out: ``dataclasses.asdict`` deep-copies)."""
        return {
            "attempts": self.attempts,
            "deployment": self.deployment,
            "endpoint": self.endpoint,
            "key": self.key,
            "lane": self.lane,
            "model": self.model,
            "queue_wait_s": self.queue_wait_s,
            "reason": self.reason,
            "status": self.status,
            "stream": self.stream,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "ttft_s": self.ttft_s,
            "duration_s": duration_s,
        }


class AccessLog:
    """Where the gateway's per-request lines go: the logger, or straight to ``stream``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        self._failed = False

    def write(self, line: dict[str, Any]) -> None:
        if self._stream is None:
            if _logger.isEnabledFor(logging.INFO):
                _logger.info(json.dumps(line))
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(f"{self._now()} {NAME} {json.dumps(line)}\n")

    def flush(self) -> None:
        """Write out what was collected (also called when the gateway closes)."""
        if not self._pending or self._stream is None:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stream must not fail requests
            if not self._failed:
                self._failed = True
                log.error("cannot write the access log: %s", exc)

    def _now(self) -> str:
        """Local time as logging's default ``asctime`` has it, formatted once a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"
