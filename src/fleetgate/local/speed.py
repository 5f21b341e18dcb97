"""A GPU-like speed for a model of a given size, so a simulated deployment feels like the real one.

Decoding one sequence reads every weight once per token, so its speed is about the GPU's
memory bandwidth over the weights' size. We assume a consumer GPU of ~360 GB/s (RTX 3060 class)
used at ~55 %, and a prefill about 100 times faster than one sequence's decode. Batched
sequences share the weight reads, so together they decode faster than one alone: we let them
reach 75 % of ``max_num_seqs`` times the single-sequence speed.
"""

from __future__ import annotations

from dataclasses import dataclass

EFFECTIVE_BANDWIDTH_GIB_S = 185.0
PREFILL_OVER_DECODE = 100.0
BATCH_EFFICIENCY = 0.75


@dataclass(frozen=True)
class Speed:
    prefill_tps: float
    decode_tps: float
    batch_tps: float


def gpu_like_speed(weights_gib: float, max_num_seqs: int) -> Speed:
    """Tokens per second for a model whose weights take ``weights_gib`` on the GPU."""
    decode = min(500.0, max(5.0, EFFECTIVE_BANDWIDTH_GIB_S / max(weights_gib, 0.1)))
    return Speed(
        prefill_tps=round(decode * PREFILL_OVER_DECODE, 1),
        decode_tps=round(decode, 1),
        batch_tps=round(decode * max(1.0, BATCH_EFFICIENCY * max_num_seqs), 1),
    )
