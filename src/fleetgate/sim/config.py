"""What a simulated vLLM server is: its limits, its speed, and the faults it is told to show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BLOCK_SIZE = 16  # vLLM's default KV block size in tokens

FaultMode = Literal["ok", "crash", "dead", "stall"]
FAULT_MODES: tuple[str, ...] = ("ok", "crash", "dead", "stall")


@dataclass
class Faults:
    """Run-time faults.

    ``crash``: the port is closed (connection refused) and in-flight requests are cut.
    ``dead``: the engine died; requests get 500, ``/health`` 503 (the port stays open).
    ``stall``: requests are accepted but no token is ever produced.
    ``error_rate``: fraction of generation requests answered with a 500.
    ``slow_factor``: prefill and decode take this many times longer.
    """

    mode: FaultMode = "ok"
    error_rate: float = 0.0
    slow_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(
                f"fault mode must be one of {', '.join(FAULT_MODES)}, not {self.mode!r}"
            )
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], not {self.error_rate}")
        if self.slow_factor <= 0:
            raise ValueError(f"slow_factor must be positive, not {self.slow_factor}")


@dataclass
class SimConfig:
    """A simulated vLLM deployment.

    ``decode_tps`` is the speed of ONE sequence running alone; ``batch_tps`` caps the tokens per
    second of all running sequences together (default: ``decode_tps``, i.e. the decode speed is
    shared among them). ``kv_cache_tokens`` defaults to room for ``max_num_seqs`` full-length
    sequences. ``reply_tokens`` is the typical natural reply length: a reply ends by itself (EOS,
    finish_reason ``stop``) after a seeded length between half and 1.5 times it; ``None`` means
    never, like a random-weight model (replies then run to ``max_tokens`` or the context end).
    """

    model: str
    max_model_len: int
    max_num_seqs: int
    kv_cache_tokens: int | None = None
    prefill_tps: float = 5000.0
    decode_tps: float = 50.0
    batch_tps: float | None = None
    seed: int = 0
    reply_tokens: int | None = 128
    faults: Faults = field(default_factory=Faults)
    startup_s: float = 0.0
    sleep_mode: bool = False
    wake_s: float = 0.0

    def __post_init__(self) -> None:
        if self.startup_s < 0 or self.wake_s < 0:
            raise ValueError("startup_s and wake_s must not be negative")
        if self.max_model_len < 1 or self.max_num_seqs < 1:
            raise ValueError("max_model_len and max_num_seqs must be at least 1")
        if self.prefill_tps <= 0 or self.decode_tps <= 0 or (self.batch_tps or 1) <= 0:
            raise ValueError("speeds must be positive")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.max_model_len:
            fit = self.kv_cache_tokens // BLOCK_SIZE * BLOCK_SIZE
            raise ValueError(
                f"max_model_len ({self.max_model_len}) does not fit in the KV cache "
                f"({self.kv_cache_tokens} tokens): the estimated maximum model length is {fit}. "
                "Try increasing gpu_memory_utilization or decreasing max_model_len."
            )

    @property
    def kv_blocks(self) -> int:
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens // BLOCK_SIZE
        return self.max_num_seqs * -(-self.max_model_len // BLOCK_SIZE)
