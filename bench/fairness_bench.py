"""Fair queue vs FIFO: one key floods a concurrency-2 route, another sends one request at a time.

The same workload runs twice against the simulator through an in-process gateway: with the
admission queue in plain arrival order (``Admission.fair = False``, the old behaviour) and with
the fair order (priority class, then the key with the fewest slots granted, then arrival).
Key A keeps ``--flood`` requests waiting at all times (closed loop: each finished one is sent
again); key B sends ``--light`` requests one after another. Prints B's queue wait (p50/p95, as
the gateway's access log measures it) and the route's total throughput (over B's requests or
``--seconds``, whichever is longer) for each, and the ratios, measured side by side in one run.

    python bench/fairness_bench.py [--flood 100] [--light 10] [--seconds 10] [--rounds 2]
        [--decode-tps 400]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
from typing import Any

import aiohttp

from fleetgate.fleetfile import Fleet
from fleetgate.gateway import serve
from fleetgate.sim import SimConfig, SimServer

FLOOD_KEY, LIGHT_KEY = "sk-bench-flood-a", "sk-bench-light-b"


def fleet(port: int, flood: int) -> Fleet:
    return Fleet.model_validate(
        {
            "hosts": {"local": {"address": "127.0.0.1", "transport": "local"}},
            "deployments": {
                "d": {
                    "host": "local",
                    "port": port,
                    "model": "t/tiny",
                    "served_model_name": "tiny",
                    "max_model_len": 512,
                }
            },
            "gateway": {
                "host": "local",
                "api_keys": [
                    {"name": "flood", "key": FLOOD_KEY},
                    {"name": "light", "key": LIGHT_KEY},
                ],
                "routes": {
                    "r": {
                        "deployments": ["d"],
                        "concurrency": 2,
                        "queue_depth": flood + 10,
                        "queue_wait_s": 600,
                    }
                },
            },
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(fair: bool, args: argparse.Namespace) -> dict[str, Any]:
    cfg = SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=8, decode_tps=args.decode_tps,
        reply_tokens=None,
    )  # fmt: skip
    log = io.StringIO()
    body = json.dumps(
        {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    )
    async with SimServer(cfg) as sim, serve(fleet(sim.port, args.flood), access_stream=log) as gw:
        gw.gateway.admission.fair = fair
        done = 0
        stop = asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

            async def send(key: str) -> None:
                nonlocal done
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                async with s.post(gw.url + "/v1/chat/completions", data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                done += 1

            async def flooder() -> None:
                while not stop.is_set():
                    await send(FLOOD_KEY)

            flood = [asyncio.create_task(flooder()) for _ in range(args.flood)]
            while gw.gateway.admission.queued("r") < args.flood - 2:
                for task in flood:
                    if task.done():
                        task.result()  # a flooder failed: say why instead of waiting forever
                await asyncio.sleep(0.01)
            started, done = time.perf_counter(), 0
            for _ in range(args.light):
                await send(LIGHT_KEY)
            # throughput over at least --seconds, so the short fair run is not a noisy sample
            await asyncio.sleep(max(0.0, args.seconds - (time.perf_counter() - started)))
            elapsed = time.perf_counter() - started
            served = done
            stop.set()
            await asyncio.gather(*flood)
    waits = [
        rec["queue_wait_s"]
        for line in log.getvalue().splitlines()
        if (rec := json.loads(line.split(" ", 3)[3]))["key"] == "light"
    ]
    return {
        "p50": statistics.median(waits),
        "p95": pct(waits, 0.95),
        "throughput": served / elapsed,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood", type=int, default=100, help="key A's requests kept waiting")
    ap.add_argument("--light", type=int, default=10, help="key B's requests, one at a time")
    ap.add_argument("--rounds", type=int, default=2, help="FIFO/fair pairs, alternated")
    ap.add_argument("--seconds", type=float, default=10.0, help="throughput window, at least")
    ap.add_argument("--decode-tps", type=float, default=400.0, help="simulator decode speed")
    args = ap.parse_args()
    # alternate FIFO and fair --rounds times (the machine's load drifts); keep each one's mean
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for fair_order in (False, True):
            runs[fair_order].append(await run(fair_order, args))
    fifo, fair = (
        {k: statistics.mean(r[k] for r in runs[f]) for k in ("p50", "p95", "throughput")}
        for f in (False, True)
    )
    print(
        f"flood {args.flood} + light {args.light} on a concurrency-2 route, "
        f"mean of {args.rounds} alternated rounds"
    )
    print(f"{'':8}{'light p50 wait':>16}{'light p95 wait':>16}{'throughput':>14}")
    for name, r in (("FIFO", fifo), ("fair", fair)):
        print(f"{name:8}{r['p50']:>15.3f}s{r['p95']:>15.3f}s{r['throughput']:>10.1f} req/s")
    print(
        f"ratios fair/FIFO: p50 wait {fair['p50'] / fifo['p50']:.3f}, "
        f"p95 wait {fair['p95'] / fifo['p95']:.3f}, "
        f"throughput {fair['throughput'] / fifo['throughput']:.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
