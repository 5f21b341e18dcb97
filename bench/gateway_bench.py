"""Gateway overhead: the same load straight at a fast backend and through ``fleetgate serve``.

Starts ``bench/fast_backend.py`` and one gateway process (with its access log written, as in
production), then drives both with ``wrk`` (a separate C process, so the load generator is not
the bottleneck) at concurrency 1 and 16, non-streaming chat completions. Prints requests/s and
p50/p99 latency of each and the ratios, measured side by side in one run.

    python bench/gateway_bench.py [--duration 10]

Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 32,
}
LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-key-000"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up") from None
            time.sleep(0.1)


def fleet(backend_port: int, gateway_port: int) -> dict:
    return {
        "version": 1,
        "hosts": {"local": {"address": "127.0.0.1", "transport": "local", "gpus": ["RTX 3090"]}},
        "deployments": {
            "bench": {
                "host": "local",
                "port": backend_port,
                "model": "bench/bench",
                "served_model_name": "bench",
                "max_model_len": 8192,
                "max_num_seqs": 64,
            }
        },
        "gateway": {
            "host": "local",
            "listen": "127.0.0.1",
            "port": gateway_port,
            "api_keys": [{"name": "bench", "key": "sk-bench-key-000"}],
            "routes": {
                "bench": {
                    "deployments": ["bench"],
                    "max_input_tokens": 4096,
                    "max_output_tokens": 1024,
                    "queue_depth": 256,
                }
            },
        },
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def _ms(report: str, percentile: str) -> float:
    """A latency percentile of wrk's ``--latency`` report, in milliseconds."""
    found = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", report, re.MULTILINE)
    if found is None:
        raise SystemExit(f"no {percentile}% latency in wrk's report:\n{report}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} requests failed:\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(out, "50"),
        "p99": _ms(out, "99"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="fleetgate-bench-"))
    backend_port, gateway_port = free_port(), free_port()
    (tmp / "fleet.yaml").write_text(yaml.safe_dump(fleet(backend_port, gateway_port)))
    (tmp / "post.lua").write_text(LUA % json.dumps(BODY))
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "fast_backend.py"), "--port", str(backend_port)]
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from fleetgate.cli import main; main()",
                "serve",
                str(tmp / "fleet.yaml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "gateway.log").open("w"),
            env={**os.environ, "PYTHONUNBUFFERED": "0"},
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/health")
        wait_http(f"http://127.0.0.1:{gateway_port}/health/live")
        direct = f"http://127.0.0.1:{backend_port}/v1/chat/completions"
        gated = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        wrk(gated, tmp / "post.lua", 16, 2)  # warm up connections and code paths
        print(f"{'concurrency':>11} {'path':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for conc in (1, 16):
            a = wrk(direct, tmp / "post.lua", conc, args.duration)
            b = wrk(gated, tmp / "post.lua", conc, args.duration)
            for name, r in (("direct", a), ("gateway", b)):
                print(f"{conc:>11} {name:>8} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f}")
            print(
                f"{conc:>11} {'ratio':>8} {b['rps'] / a['rps']:>9.3f} "
                f"{b['p50'] / a['p50']:>8.2f} {b['p99'] / a['p99']:>8.2f}"
                f"   (added p50: {b['p50'] - a['p50']:.3f} ms)"
            )
        lines = sum(1 for _ in (tmp / "gateway.log").open())
        print(f"gateway access log: {lines} lines written during the run")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
