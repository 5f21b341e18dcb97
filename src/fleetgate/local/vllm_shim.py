"""A stand-in for vLLM's OpenAI server: the same command-line flags, the simulator behind them.

``python -m fleetgate.local.vllm_shim --model M --served-model-name N --max-model-len L ...``
serves like ``python -m vllm.entrypoints.openai.api_server`` would, so rendered launch scripts
and the deploy layer's health gate can be exercised without a GPU. The KV capacity comes from
``FLEETGATE_SIM_KV_CACHE_TOKENS``; a max_model_len that does not fit refuses to start with
vLLM's own error, the way a real start fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from fleetgate.sim import SimConfig, SimServer

KV_ENV = "FLEETGATE_SIM_KV_CACHE_TOKENS"
SPEED_ENV = "FLEETGATE_SIM_SPEED"


def parse(argv: list[str]) -> SimConfig:
    """vLLM's flags that matter to the simulator; the others are accepted and ignored."""
    parser = argparse.ArgumentParser(prog="vllm_shim", add_help=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    args, _ = parser.parse_known_args(argv)
    kv = os.environ.get(KV_ENV)
    speed = float(os.environ.get(SPEED_ENV, "1"))
    return SimConfig(
        model=args.served_model_name or args.model,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_tokens=int(kv) if kv else None,
        prefill_tps=5000.0 * speed,
        decode_tps=50.0 * speed,
    )


def _address(argv: list[str]) -> tuple[str, int]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args, _ = parser.parse_known_args(argv)
    return args.host, args.port


async def serve(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(config, host=host, port=port) as sim:
        print(f"INFO: simulated vLLM serving {config.model} on {sim.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]:
        argv = argv[2:]
    try:
        config = parse(argv)
    except ValueError as exc:
        print(f"ValueError: {exc}", file=sys.stderr, flush=True)
        return 1
    asyncio.run(serve(config, *_address(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
