"""The rendered monitoring files against a real Prometheus (Debian's ``prometheus`` package):
``promtool check config`` passes, and a Prometheus started here scrapes a running local fleet
until every PromQL expression of the Grafana dashboard returns data through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.support.fleets import OWNER_KEY, views_fleet

from fleetgate.fleetfile import load_fleet
from fleetgate.local import free_port, local_fleet
from fleetgate.render import source_of
from fleetgate.render.monitoring import (
    dashboard_queries,
    render_dashboard,
    render_monitoring,
    render_prometheus,
)
from fleetgate.render.source import Source

ROOT = Path(__file__).resolve().parent.parent
HOMELAB = ROOT / "examples" / "homelab" / "fleet.yaml"
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (bash .ci/run installs it)",
)


def _promtool(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )


@needs_prometheus
def test_promtool_accepts_the_rendered_scrape_config(tmp_path: Path) -> None:
    files = render_monitoring(source_of(load_fleet(HOMELAB, strict_env=False)))
    path = tmp_path / "prometheus.yml"
    path.write_text(files["monitoring/prometheus.yml"])
    checked = _promtool(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fleetgate"]["static_configs"] == [
        {"targets": ["motoko.lan:4000"], "labels": {"host": "motoko"}}
    ]
    vllm = {c["labels"]["deployment"]: c for c in jobs["vllm"]["static_configs"]}
    assert vllm["wintermute"] == {
        "targets": ["wintermute.lan:8000"],
        "labels": {
            "host": "wintermute",
            "deployment": "wintermute",
            "route": "llama31-8b-wintermute",
        },
    }


def test_the_dashboard_reads_old_and_new_vllm_names() -> None:
    text = render_dashboard(source_of(load_fleet(HOMELAB, strict_env=False)))
    dashboard = json.loads(text)
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    for wanted in (
        "Requests by status", "Refusals by reason", "Queue depth", "Queue wait",
        "Slots in use", "Time to first token (gateway to backend)", "vLLM running / waiting",
        "vLLM KV cache usage", "vLLM preemptions", "vLLM tokens/s",
    ):  # fmt: skip
        assert wanted in titles
    kv = next(p for p in dashboard["panels"] if p["title"] == "vLLM KV cache usage")
    (expr,) = [t["expr"] for t in kv["targets"]]
    assert "vllm:kv_cache_usage_perc" in expr and " or " in expr
    assert "vllm:gpu_cache_usage_perc" in expr
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


class Prometheus:
    def __init__(self, config: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "prometheus.log"
        self.args = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]


@pytest.fixture
def prometheus_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "prometheus.yml", tmp_path / "data"


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


@needs_prometheus
async def test_prometheus_scrapes_a_local_fleet_and_every_panel_has_data(
    prometheus_dirs: tuple[Path, Path],
) -> None:
    config_path, data = prometheus_dirs
    fleet = views_fleet(routes=2, per_route=1, hosts=2)
    async with local_fleet(fleet, gateway_port=0, speed=1.0) as running:
        source = Source(fleet=running.fleet, raw={}, fleet_file="fleet.yaml")
        config_path.write_text(render_prometheus(source, scrape_interval="1s"))
        checked = _promtool(config_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        queries = dashboard_queries(render_dashboard(source))
        headers = {"Authorization": f"Bearer {OWNER_KEY}"}
        with Prometheus(config_path, data) as prom:
            async with aiohttp.ClientSession() as session:

                async def chat(model: str) -> None:
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": "tell me a story"}],
                        "max_tokens": 24,
                        "stream": True,
                    }
                    async with session.post(
                        f"{running.gateway_url}/v1/chat/completions", json=body, headers=headers
                    ) as resp:
                        await resp.read()

                # every target up first: series that exist before the traffic get rates from it
                deadline = time.monotonic() + 120
                while True:
                    try:
                        up = await prom.query(session, "up")
                    except aiohttp.ClientError:
                        up = []
                    if len(up) == 3 and all(r["value"][1] == "1" for r in up):
                        break
                    assert time.monotonic() < deadline, (up, prom.log.read_text()[-2000:])
                    await asyncio.sleep(0.5)

                missing = list(queries)
                deadline = time.monotonic() + 120
                while missing:
                    # concurrency 1 per route: three at once queue two; a wrong name is refused
                    await asyncio.gather(*(chat("route-00") for _ in range(3)), chat("route-01"))
                    await chat("no-such-model")
                    await asyncio.sleep(1.5)
                    missing = [q for q in missing if not _has_data(await prom.query(session, q))]
                    assert time.monotonic() < deadline, f"no data for: {missing}"
