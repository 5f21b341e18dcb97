"""The /ui page in a real browser (Debian's chromium driven by Playwright) against a local
fleet of 20 simulated deployments behind 10 routes.

A screenshot of the desktop and the phone layout is kept under tests/artifacts/ (git-ignored;
``FLEETGATE_ARTIFACTS`` moves it) and its path printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from tests.support.fleets import ADMIN_KEY, OWNER_KEY, views_fleet

from fleetgate.local import RunningFleet, local_fleet

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("FLEETGATE_ARTIFACTS", Path(__file__).parent / "artifacts"))

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (bash .ci/run installs it)"
)
playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
async def fleet() -> AsyncIterator[RunningFleet]:
    async with local_fleet(views_fleet(), gateway_port=0, speed=50.0) as running:
        yield running


async def _chat(url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {OWNER_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def test_the_page_shows_the_fleet_live_and_a_dead_backend_in_red(
    fleet: RunningFleet,
) -> None:
    expect = playwright_api.expect
    url = fleet.gateway_url
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            problems: list[str] = []
            # console errors (a CSP violation is one), but for the sign-in page's own 401s
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text)
                    if m.type == "error" and "status of 401" not in m.text
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))

            # not signed in: the form, under a CSP that allows nothing inline
            first = await page.goto(f"{url}/ui")
            assert first is not None and first.status == 401
            csp = first.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            await page.fill("#key", "not-the-key")
            await page.click("button[type=submit]")
            await expect(page.locator(".error")).to_have_text("that is not the admin key")
            await page.fill("#key", ADMIN_KEY)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{url}/ui")
            assert ADMIN_KEY not in page.url
            (cookie,) = await context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert ADMIN_KEY not in cookie["value"]

            # every deployment, grouped by host, all up
            deps = page.locator("[data-deployment]")
            await expect(deps).to_have_count(20)
            await expect(page.locator("[data-host]")).to_have_count(4)
            await expect(page.locator("[data-state=up]")).to_have_count(20)
            await expect(page.locator("[data-lane]")).to_have_count(11)  # 10 routes + a profile
            first_dep = page.locator("[data-deployment='r00-d0']")
            await expect(first_dep.locator("[data-field=gpu]")).to_contain_text("RTX 3090")
            await expect(first_dep.locator("[data-field=kv]")).to_contain_text("% used")

            # a request made now shows up without a reload
            owner = page.locator("[data-key=owner] [data-field=requests]")
            await expect(owner).to_have_text("0")
            assert await _chat(url, "route-00") == 200
            await expect(owner).to_have_text("1")
            lane = page.locator("[data-lane=route-00] [data-field=requests]")
            await expect(lane).to_have_text("1")
            await expect(page.locator("[data-key=owner] [data-field=tokens_out]")).not_to_have_text(
                "0"
            )
            assert await _chat(url, "no-such-model") == 404
            await expect(page.locator("[data-key=owner] [data-field=refusals]")).to_have_text("1")

            # a backend that dies turns red
            victim = fleet.backends["r03-d1"]
            async with aiohttp.ClientSession() as session:
                # a crash takes the answer down with it
                with contextlib.suppress(aiohttp.ServerDisconnectedError):
                    async with session.post(
                        f"{victim.url}/admin/faults", json={"mode": "crash"}
                    ) as resp:
                        await resp.read()
            dead = page.locator("[data-deployment='r03-d1']")
            await expect(dead).to_have_attribute("data-state", "down")
            badge = dead.locator(".badge")
            await expect(badge).to_have_text("down")
            red = await badge.evaluate("b => getComputedStyle(b).backgroundColor")
            assert red == "rgb(229, 83, 75)"
            await expect(page.locator("[data-state=up]")).to_have_count(19)

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "ui-desktop.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            # the same page on a phone: nothing wider than the screen but the tables' own scroll
            await page.set_viewport_size({"width": 390, "height": 844})
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            phone = ARTIFACTS / "ui-phone.png"
            await page.screenshot(path=str(phone))
            print(f"screenshot: {phone}")
            assert problems == []
        finally:
            await browser.close()
