"""How fast the live views draw a fleet of 10 routes and 20 deployments.

Starts a local fleet (20 simulators, the real gateway), sends some traffic, then times
``GET /ui/state`` (the snapshot the page and ``fleetgate top`` draw, backends' /metrics scraped
when due) against ``GET /health/live`` in the same run, and, where Debian's chromium and
Playwright are installed, the page from navigation to every deployment drawn.

    python bench/ui_bench.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.fleets import ADMIN_KEY, OWNER_KEY, views_fleet

from fleetgate.local import local_fleet


async def _time_gets(session: aiohttp.ClientSession, url: str, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        async with session.get(url) as resp:
            assert resp.status == 200, resp.status
            await resp.read()
    return (time.perf_counter() - started) / calls


async def _browser(url: str, rounds: int) -> float | None:
    if shutil.which("chromium") is None:
        return None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = await browser.new_page()
        await page.goto(f"{url}/ui")
        await page.fill("#key", ADMIN_KEY)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{url}/ui")
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            await page.reload()
            await page.wait_for_function(
                "document.querySelectorAll('[data-deployment]').length == 20"
            )
            times.append(time.perf_counter() - started)
        await browser.close()
    return sorted(times)[len(times) // 2]


async def main(calls: int) -> None:
    async with local_fleet(views_fleet(), gateway_port=0, speed=50.0) as fleet:
        url = fleet.gateway_url
        headers = {"Authorization": f"Bearer {OWNER_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            for r in range(10):
                for _ in range(5):
                    async with s.post(
                        f"{url}/v1/chat/completions", json={**body, "model": f"route-{r:02d}"}
                    ) as resp:
                        await resp.read()
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with aiohttp.ClientSession(headers=admin) as s:
            await _time_gets(s, f"{url}/ui/state", 5)  # warm up
            live = await _time_gets(s, f"{url}/health/live", calls)
            state = await _time_gets(s, f"{url}/ui/state", calls)
        page = await _browser(url, 10)
    print(f"GET /health/live (baseline): {live * 1000:8.2f} ms per call")
    print(f"GET /ui/state, 20 deployments: {state * 1000:8.2f} ms per call  ({state / live:.1f}x)")
    if page is None:
        print("page in chromium: skipped (needs /usr/bin/chromium and playwright)")
    else:
        print(f"page reload to 20 deployments drawn (chromium, median): {page * 1000:.0f} ms "
              f"({page / live:.0f}x the baseline call)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    asyncio.run(main(parser.parse_args().calls))
