"""The simulated engine: vLLM's scheduling, KV-cache accounting and timing, without a model.

At most ``max_num_seqs`` sequences run; the rest wait in an unbounded FIFO queue, as in vLLM. A
waiting sequence is admitted when a slot is free and the KV cache has blocks for its prompt;
a running sequence that needs a new block when none is free preempts the newest running one
(which goes back to the head of the queue and recomputes later). The first token comes after a
prefill that grows with the prompt; later tokens come at the decode speed shared among the
running sequences. Each sequence has one timer on the event loop: no per-token busy work.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fleetgate.sim.config import BLOCK_SIZE, Faults, SimConfig
from fleetgate.sim.metrics import SimMetrics
from fleetgate.sim.tokenizer import ReplyText

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass
class Output:
    """What one timer tick hands to the request: new text, and the end when it comes."""

    text: str
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None

    @property
    def failed(self) -> bool:
        """The engine died under this request (vLLM answers it with an engine error)."""
        return self.finish_reason == "error"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    prompt_len: int
    max_tokens: int
    reply: ReplyText
    eos_at: int | None
    stops: tuple[str, ...] = ()
    deliver: Callable[[Output], None] = lambda out: None
    generated: int = 0
    blocks: int = 0
    state: Literal["waiting", "running", "finished"] = "waiting"
    arrival: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _due: float = 0.0  # loop time the current token was due at
    _text: str = ""
    _sent: int = 0
    _stop_room: int = 0

    def __post_init__(self) -> None:
        self._stop_room = max((len(s) for s in self.stops), default=1) - 1


@dataclass
class EngineStats:
    running: int
    waiting: int
    max_running_seen: int
    kv_blocks_used: int
    kv_blocks_total: int
    preemptions: int
    finished: int
    aborted: int


class SimEngine:
    """Schedules sequences on the running event loop and feeds them tokens."""

    def __init__(self, config: SimConfig, metrics: SimMetrics) -> None:
        self.config = config
        self.faults = config.faults
        self.metrics = metrics
        self.total_blocks = config.kv_blocks
        self.free_blocks = self.total_blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.max_running_seen = 0
        self.preemptions = 0
        self.finished = 0
        self.aborted = 0
        self._stalled: list[Sequence] = []
        self._rng = random.Random(config.seed)
        # vLLM's sleep: None awake, else the level; while asleep new requests queue unscheduled
        self.sleep_level: int | None = None
        self._frozen: list[Sequence] = []

    # -- public -------------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._schedule()

    def abort(self, seq: Sequence) -> None:
        """The client went away: free the sequence's slot and blocks (a no-op once finished)."""
        if seq.state == "finished":
            return
        if seq.state == "waiting":
            self.waiting.remove(seq)
        self._finish(seq, "abort")

    def fail_all(self) -> None:
        """The engine died (or the process crashed): every sequence ends with an error."""
        for seq in [*self.running, *self.waiting]:
            if seq.state == "waiting":
                self.waiting.remove(seq)
            self._finish(seq, "error")
            seq.deliver(Output("", "error"))

    def sleep(self, level: int, mode: str = "abort") -> None:
        """vLLM's ``EngineCore.sleep``: pause the scheduler; ``abort`` ends what runs and waits
        (finish_reason ``abort``), ``wait`` lets what runs finish, ``keep`` freezes it where it
        is. New requests queue until :meth:`wake_up`."""
        if mode == "abort":
            for seq in [*self.running, *self.waiting]:
                if seq.state == "waiting":
                    self.waiting.remove(seq)
                self._finish(seq, "abort")
                seq.deliver(Output("", "abort"))
        elif mode == "keep":
            for seq in self.running:
                if seq._timer is not None:
                    seq._timer.cancel()
                    seq._timer = None
                self._frozen.append(seq)
        self.sleep_level = level

    def wake_up(self) -> None:
        """Resume scheduling: frozen sequences go on, queued ones are admitted."""
        self.sleep_level = None
        frozen, self._frozen = self._frozen, []
        for seq in frozen:
            if seq.state == "running":
                self._arm(seq, self._decode_interval())
        self._schedule()

    def set_faults(self, faults: Faults) -> None:
        was_stalled = self.faults.mode == "stall"
        self.faults = faults
        if was_stalled and faults.mode != "stall":
            stalled, self._stalled = self._stalled, []
            for seq in stalled:
                if seq.state == "running":
                    self._arm(seq, self._decode_interval())

    def roll_error(self) -> bool:
        """True for the share of requests that the ``error_rate`` fault fails."""
        return self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            max_running_seen=self.max_running_seen,
            kv_blocks_used=self.total_blocks - self.free_blocks,
            kv_blocks_total=self.total_blocks,
            preemptions=self.preemptions,
            finished=self.finished,
            aborted=self.aborted,
        )

    @property
    def kv_usage(self) -> float:
        return (self.total_blocks - self.free_blocks) / self.total_blocks

    # -- scheduling ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Admit waiting sequences, oldest first, while there is a slot and KV room."""
        if self.sleep_level is not None:
            return
        now = time.monotonic()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            # a preempted sequence recomputes its prompt and what it has generated so far
            context = seq.prompt_len + seq.generated
            need = _blocks(context + 1)
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            seq.blocks = need
            self.free_blocks -= need
            seq.state = "running"
            if seq.scheduled_at is None:
                seq.scheduled_at = now
                self.metrics.queue_time.observe(now - seq.arrival)
            self.running.append(seq)
            prefill = context / self.config.prefill_tps * self.faults.slow_factor
            self._arm(seq, prefill)
        self.max_running_seen = max(self.max_running_seen, len(self.running))

    def _decode_interval(self) -> float:
        cfg = self.config
        shared = len(self.running) / (cfg.batch_tps or cfg.decode_tps)
        return max(1.0 / cfg.decode_tps, shared) * self.faults.slow_factor

    def _arm(self, seq: Sequence, delay: float, *, cadence: bool = False) -> None:
        """Run ``_step`` after ``delay``; with ``cadence``, after the previous token's due time,
        so the event loop's own lateness does not slow decoding down (up to a second's lag)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = seq._due + delay if cadence else now + delay
        seq._due = due if due > now - 1.0 else now
        seq._timer = loop.call_at(seq._due, self._step, seq)

    def _preempt_for(self, seq: Sequence) -> bool:
        """Free blocks for ``seq`` by preempting the newest other running sequence."""
        victims = [s for s in self.running if s is not seq]
        if not victims:
            return False
        victim = victims[-1]
        if victim._timer is not None:
            victim._timer.cancel()
            victim._timer = None
        self.running.remove(victim)
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.state = "waiting"
        self.waiting.appendleft(victim)
        self.preemptions += 1
        self.metrics.preemptions.inc()
        return True

    # -- one token ----------------------------------------------------------------------------

    def _step(self, seq: Sequence) -> None:
        seq._timer = None
        if seq.state != "running" or seq in self._frozen:
            return
        if self.faults.mode == "stall":
            self._stalled.append(seq)
            return
        while _blocks(seq.prompt_len + seq.generated + 1) > seq.blocks:
            if self.free_blocks > 0:
                self.free_blocks -= 1
                seq.blocks += 1
            elif not self._preempt_for(seq):
                break
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.metrics.ttft.observe(now - seq.arrival)
            self.metrics.prompt_tokens.inc(seq.prompt_len)
        elif seq.last_token_at is not None:
            self.metrics.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        seq.generated += 1
        self.metrics.generation_tokens.inc()

        out = self._next_output(seq)
        if out.finish_reason is None:
            self._arm(seq, self._decode_interval(), cadence=True)
        else:
            self._finish(seq, out.finish_reason)
        seq.deliver(out)

    def _next_output(self, seq: Sequence) -> Output:
        if seq.eos_at is not None and seq.generated >= seq.eos_at:
            return Output(seq._text[seq._sent :], "stop")  # EOS: counted, adds no text
        seq._text += seq.reply.next_piece()
        if seq.stops:
            start = max(0, seq._sent - seq._stop_room)
            hits = [(i, s) for s in seq.stops if (i := seq._text.find(s, start)) >= 0]
            if hits:
                index, stop = min(hits)
                seq._text = seq._text[:index]
                delta, seq._sent = seq._text[seq._sent :], len(seq._text)
                return Output(delta, "stop", stop)
        if seq.generated >= seq.max_tokens:
            delta, seq._sent = seq._text[seq._sent :], len(seq._text)
            return Output(delta, "length")
        safe = len(seq._text) - seq._stop_room if seq.stops else len(seq._text)
        delta = seq._text[seq._sent : max(seq._sent, safe)]
        seq._sent += len(delta)
        return Output(delta)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq._timer is not None:
            seq._timer.cancel()
            seq._timer = None
        if seq.state == "running":
            self.running.remove(seq)
        self.free_blocks += seq.blocks
        seq.blocks = 0
        seq.state = "finished"
        if reason in ("abort", "error"):
            self.aborted += 1
        else:
            self.finished += 1
            self.metrics.e2e.observe(time.monotonic() - seq.arrival)
        self.metrics.success_labels(reason).inc()
        self._schedule()


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)
