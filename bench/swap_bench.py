"""Swap-aware ordering vs plain FIFO for on-demand models sharing one simulated GPU.

Three on-demand deployments (each takes 0.9 of the GPU, so one runs at a time) behind the real
gateway and control layer; the same seeded mixed workload (requests for the three models in
short bursts, interleaved) runs four times in one process: swap by restart (a cold start of
RESTART_S) and by sleep (a wake of WAKE_S), each with the swap-aware policy and with FIFO
(strict arrival order). For each it prints the swaps, the requests served and refused, the
throughput, and the p50/p95 wait (arrival to answer); then the ratios swap-aware / FIFO.

    python bench/swap_bench.py                       (defaults below)
    SWAP_BENCH_REQUESTS=150 SWAP_BENCH_RESTART_S=3 SWAP_BENCH_WAKE_S=0.5 ...
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass

import aiohttp

from fleetgate.fleetfile import parse_fleet
from fleetgate.local import local_fleet

REQUESTS = int(os.environ.get("SWAP_BENCH_REQUESTS", "120"))
RESTART_S = float(os.environ.get("SWAP_BENCH_RESTART_S", "2.0"))
WAKE_S = float(os.environ.get("SWAP_BENCH_WAKE_S", "0.3"))
LOAD_WAIT_S = float(os.environ.get("SWAP_BENCH_LOAD_WAIT_S", "60"))
SEED = int(os.environ.get("SWAP_BENCH_SEED", "1"))
MODELS = ("m1", "m2", "m3")

FLEET = """
hosts:
  box: {{gpus: [{{memory_gib: 24, arch: ampere}}]}}
  gw: {{}}
deployments:
{deployments}
gateway:
  host: gw
  defaults: {{queue_depth: 512, queue_wait_s: {wait}, load_wait_s: {wait}}}
  routes:
{routes}
"""


def fleet_text(swap: str) -> str:
    deps = "\n".join(
        f"  {m}: {{host: box, port: {8001 + i}, model: Qwen/Qwen2.5-0.5B, max_model_len: 2048,"
        f" max_num_seqs: 8, on_demand: true, swap: {swap}}}"
        for i, m in enumerate(MODELS)
    )
    routes = "\n".join(f"    {m}: {{deployments: [{m}]}}" for m in MODELS)
    return FLEET.format(deployments=deps, routes=routes, wait=LOAD_WAIT_S)


def workload() -> list[tuple[float, str]]:
    """(arrival offset in s, model): bursts of 3-8 requests for one model, models interleaved,
    a burst every 0.15 s on average."""
    rng = random.Random(SEED)
    out: list[tuple[float, str]] = []
    t = 0.0
    while len(out) < REQUESTS:
        model = rng.choice(MODELS)
        for _ in range(rng.randint(3, 8)):
            out.append((t + rng.uniform(0, 0.05), model))
        t += rng.expovariate(1 / 0.15)
    return sorted(out[:REQUESTS])


@dataclass
class Result:
    label: str
    swaps: int
    served: int
    refused: int
    makespan_s: float
    waits: list[float]

    @property
    def throughput(self) -> float:
        return self.served / self.makespan_s

    def pct(self, q: float) -> float:
        if not self.waits:
            return float("nan")
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(swap: str, policy: str) -> Result:
    fleet = parse_fleet(fleet_text(swap)).fleet
    plan = workload()
    async with (
        local_fleet(
            fleet,
            gateway_port=0,
            speed=200,
            policy=policy,
            startup_s=RESTART_S,
            wake_s=WAKE_S,
        ) as running,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LOAD_WAIT_S * 3)) as http,
    ):
        url = running.gateway_url + "/v1/chat/completions"
        began = time.monotonic()

        async def one(at: float, model: str) -> tuple[int, float]:
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            sent = time.monotonic()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 32,
            }
            async with http.post(url, json=body) as resp:
                await resp.read()
                return resp.status, time.monotonic() - sent

        results = await asyncio.gather(*(one(at, m) for at, m in plan))
        makespan = time.monotonic() - began
        assert running.controller is not None
        starts = sum(d.swaps for d in running.controller.deps.values())
    ok = [w for status, w in results if status == 200]
    # the first start of the first model is no swap
    return Result(
        f"{swap:7} {policy:10}", starts - 1, len(ok), len(results) - len(ok), makespan, ok
    )


async def main() -> None:
    print(
        f"{REQUESTS} requests over {len(MODELS)} models on one GPU; restart {RESTART_S:g} s, "
        f"wake {WAKE_S:g} s, load wait {LOAD_WAIT_S:g} s, seed {SEED}",
        flush=True,
    )
    print(
        f"{'swap    policy':20} {'swaps':>6} {'served':>7} {'refused':>8} {'req/s':>7} "
        f"{'p50 s':>7} {'p95 s':>7}"
    )
    rows: dict[tuple[str, str], Result] = {}
    for swap in ("restart", "sleep"):
        for policy in ("swap_aware", "fifo"):
            r = rows[(swap, policy)] = await run(swap, policy)
            print(
                f"{r.label:20} {r.swaps:6d} {r.served:7d} {r.refused:8d} "
                f"{r.throughput:7.2f} {r.pct(0.5):7.2f} {r.pct(0.95):7.2f}",
                flush=True,
            )
    print("\nswap-aware / FIFO (same run):")
    for swap in ("restart", "sleep"):
        a, f = rows[(swap, "swap_aware")], rows[(swap, "fifo")]
        print(
            f"  {swap:7}: swaps {a.swaps / max(f.swaps, 1):.2f}x, "
            f"throughput {a.throughput / f.throughput:.2f}x, "
            f"p50 wait {a.pct(0.5) / f.pct(0.5):.2f}x, p95 wait {a.pct(0.95) / f.pct(0.95):.2f}x"
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
