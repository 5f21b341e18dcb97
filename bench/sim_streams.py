"""How many concurrent streams does the simulator hold on one CPU core?

The simulator runs in its own process pinned to core 0; the client (aiohttp, its own process
pinned to core 1) opens N streaming chat requests at once, each asking for TOKENS tokens at
RATE tokens/s (the sim is told to give every sequence that speed: no sharing). For each N it
prints the per-stream decode speed achieved as a ratio to the target, the worst time to first
token, and the share of its core the simulator used; N=10, measured in the same run, is the
baseline. A stream count is "held" while the ratio stays >= 0.9 and the core is not saturated.

    python bench/sim_streams.py [N ...]        (default: 10 100 250 500 1000)
    SIM_BENCH_RATE=10 SIM_BENCH_TOKENS=50 ...  (per-stream speed and length)

If the client's core is saturated, the client is the bottleneck, not the simulator: the
simulator's own core share is the figure that says how much room it has left.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time

RATE = float(os.environ.get("SIM_BENCH_RATE", "20"))
TOKENS = int(os.environ.get("SIM_BENCH_TOKENS", "100"))


def serve(port_out: mp.connection.Connection, max_seqs: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop

    from fleetgate.sim import SimConfig, SimServer

    config = SimConfig(
        model="bench",
        max_model_len=4096,
        max_num_seqs=max_seqs,
        prefill_tps=1e6,
        decode_tps=RATE,
        batch_tps=RATE * max_seqs * 10,
        reply_tokens=None,
    )

    async def main() -> None:
        async with SimServer(config) as sim:
            port_out.send(sim.port)
            await asyncio.Event().wait()

    uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(session, url: str, start: float) -> tuple[float, float, int]:
    import aiohttp

    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "the quick brown fox"}],
        "max_tokens": TOKENS,
        "stream": True,
    }
    first = last = 0.0
    tokens = 0
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=600)) as resp:
        async for line in resp.content:
            # cheap on purpose (no JSON parsing): the client must not be the bottleneck
            if b'"delta":{"content":"' in line:
                tokens += 1
                last = time.perf_counter()
                if not first:
                    first = last
    ttft = first - start
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return ttft, rate, tokens


async def run_level(port: int, n: int, pid: int) -> dict[str, float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        me = os.getpid()
        cpu0, mine0, t0 = cpu_seconds(pid), cpu_seconds(me), time.perf_counter()
        results = await asyncio.gather(*(one_stream(session, url, t0) for _ in range(n)))
        cpu1, mine1, t1 = cpu_seconds(pid), cpu_seconds(me), time.perf_counter()
    complete = sum(1 for _, _, tok in results if tok == TOKENS)
    return {
        "n": n,
        "complete": complete,
        "rate_ratio": statistics.median(r for _, r, _ in results) / RATE,
        "worst_rate_ratio": min(r for _, r, _ in results) / RATE,
        "ttft_max": max(t for t, _, _ in results),
        "sim_core": (cpu1 - cpu0) / (t1 - t0),
        "client_core": (mine1 - mine0) / (t1 - t0),
    }


def main() -> None:
    levels = [int(a) for a in sys.argv[1:]] or [10, 100, 250, 500, 1000]
    parent, child = mp.Pipe()
    proc = mp.Process(target=serve, args=(child, max(levels)), daemon=True)
    proc.start()
    port = parent.recv()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    import uvloop

    try:
        rows = [uvloop.run(run_level(port, n, proc.pid)) for n in levels]
    finally:
        proc.terminate()
    base = rows[0]
    print(f"target {RATE:g} tok/s per stream, {TOKENS} tokens each; baseline N={base['n']}")
    print(f"{'N':>6} {'done':>6} {'median/target':>14} {'worst/target':>13} {'vs base':>8} "
          f"{'max TTFT s':>11} {'sim core':>9} {'client core':>12}")  # fmt: skip
    for r in rows:
        print(
            f"{r['n']:>6} {r['complete']:>6} {r['rate_ratio']:>14.3f} "
            f"{r['worst_rate_ratio']:>13.3f} {r['rate_ratio'] / base['rate_ratio']:>8.3f} "
            f"{r['ttft_max']:>11.3f} {r['sim_core']:>9.2f} {r['client_core']:>12.2f}"
        )


if __name__ == "__main__":
    main()
