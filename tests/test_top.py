"""``fleetgate top`` driven in tmux (send-keys, capture-pane) against a local fleet, and its
one-shot view of 20 deployments on an 80-column terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console
from tests.support.fleets import ADMIN_KEY, OWNER_KEY, views_fleet

from fleetgate.fleetfile import load_fleet
from fleetgate.gateway import serve
from fleetgate.local import RunningFleet, local_fleet
from fleetgate.probes.top import view

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux (bash .ci/run installs it)"
)
TOP = [sys.executable, "-m", "fleetgate.cli", "top"]
HOMELAB = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"


@contextlib.asynccontextmanager
async def fleet_of(**shape: int) -> AsyncIterator[RunningFleet]:
    async with local_fleet(views_fleet(**shape), gateway_port=0, speed=50.0) as running:
        yield running


class Tmux:
    """A private tmux server (its own socket) with one 80x40 window."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    async def run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.base, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    async def screen(self) -> str:
        return await self.run("capture-pane", "-p", "-t", "top")

    async def wait_for(self, *fragments: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = await self.screen()
            if all(f in text for f in fragments):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{fragments} not on the screen within {timeout_s} s:\n{text}")
            await asyncio.sleep(0.2)


def _line_of(screen: str, name: str) -> str:
    return next(line for line in screen.splitlines() if name in line)


async def test_top_refreshes_in_place_and_quits_on_q(tmp_path: Path) -> None:
    status_file = tmp_path / "status"
    async with fleet_of(routes=3, per_route=1, hosts=2) as fleet:
        tmux = Tmux(f"fleetgate-top-{os.getpid()}")
        command = " ".join(
            [*TOP, fleet.gateway_url, "--interval", "0.3", f"; echo $? > {status_file}"]
        )
        env = {**os.environ, "FLEETGATE_ADMIN_KEY": ADMIN_KEY}
        await tmux.run(
            "new-session", "-d", "-s", "top", "-x", "80", "-y", "40",
            *[a for k, v in env.items() if k in ("PYTHONPATH", "FLEETGATE_ADMIN_KEY", "PATH")
              for a in ("-e", f"{k}={v}")],
            command,
        )  # fmt: skip
        try:
            screen = await tmux.wait_for("fleetgate top", "3/3 up", "r02-d0", "owner")
            assert all(len(line) <= 80 for line in screen.splitlines())
            assert "up" in _line_of(screen, "gpu-box-0/r00-d0")
            assert _line_of(screen, "owner").split()[1] == "0"

            headers = {"Authorization": f"Bearer {OWNER_KEY}"}
            body = {"model": "route-01", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession(headers=headers) as s:
                async with s.post(f"{fleet.gateway_url}/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                victim = fleet.backends["r02-d0"]
                with contextlib.suppress(aiohttp.ServerDisconnectedError):
                    async with s.post(f"{victim.url}/admin/faults", json={"mode": "crash"}) as r:
                        await r.read()
            deadline = time.monotonic() + 60
            while True:
                screen = await tmux.screen()
                owner = _line_of(screen, "owner").split()
                dead = _line_of(screen, "r02-d0")
                if owner[1] == "1" and " down " in f" {dead} ":
                    break
                assert time.monotonic() < deadline, screen
                await asyncio.sleep(0.2)
            assert "2/3 up" in screen
            # drawn in place: one view on the screen and none scrolled into the history
            history = await tmux.run("capture-pane", "-p", "-S", "-", "-t", "top")
            assert history.count("fleetgate top") == 1

            await tmux.run("send-keys", "-t", "top", "q")
            deadline = time.monotonic() + 30
            while not status_file.exists() or not status_file.read_text().strip():
                assert time.monotonic() < deadline, await tmux.screen()
                await asyncio.sleep(0.2)
            assert status_file.read_text().strip() == "0"
        finally:
            await tmux.run("kill-server")


async def test_the_one_shot_view_of_20_deployments_fits_80_columns() -> None:
    async with fleet_of() as fleet:
        proc = await asyncio.create_subprocess_exec(
            *TOP, fleet.gateway_url, "--once", "--admin-key", ADMIN_KEY,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "80", "TERM": "dumb"},
        )  # fmt: skip
        out, _ = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, text
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, text
        for r in range(10):
            for d in range(2):
                assert "up" in _line_of(text, f"/r{r:02d}-d{d}")
            assert f"route-{r:02d}" in text

        wrong = await asyncio.create_subprocess_exec(
            *TOP, fleet.gateway_url, "--once", "--admin-key", "wrong",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await wrong.communicate()
        assert wrong.returncode == 1 and "refused the admin key" in out.decode()


async def test_the_reference_fleets_long_names_fit_80_columns_without_cutting_headers() -> None:
    env = {"FLEETGATE_API_KEY": "sk-top-owner-0001", "FLEETGATE_ADMIN_KEY": ADMIN_KEY}
    fleet = load_fleet(HOMELAB, strict_env=False, env=env).fleet
    async with (
        serve(fleet, host="127.0.0.1", port=0) as gw,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as s,
        s.get(f"{gw.url}/ui/state") as resp,
    ):
        state = await resp.json()
    console = Console(width=80, record=True, force_terminal=False)
    console.print(view(state, gw.url))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for header in ("host/deployment", "ttft ms", "kv%", "preempt", "wait p95", "refusals"):
        assert header in text, text
    assert "wintermute/wintermute" in text and "armitage/armitage" in text
