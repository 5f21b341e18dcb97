"""The live views' server side: /ui's sign-in and headers, /ui/state's snapshot, the windowed
quantiles, the backend /metrics reader under old and new vLLM names, the per-key tally."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from tests.support.gateway import eventually, make_fleet, sim_fleet

from fleetgate.gateway import serve
from fleetgate.gateway.backendmetrics import parse_vllm_metrics
from fleetgate.gateway.recent import Delta, Window, quantile_of_buckets
from fleetgate.gateway.snapshot import KeyTally
from fleetgate.gateway.ui import COOKIE, SIGN_IN_GUARD
from fleetgate.sim import SimConfig, SimServer

KEY = "sk-ui-owner-0001"
ADMIN = "admin-ui-0002"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    config = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, reply_tokens=4)
    async with SimServer(config) as server:
        yield server


def doc(sim: SimServer, **gateway: Any) -> dict[str, Any]:
    return sim_fleet(
        {"d1": (sim.port, 512, 4)},
        {"tiny-route": {"deployments": ["d1"], "profiles": {"tiny-burst": {"queue_depth": 40}}}},
        api_keys=[{"name": "owner", "key": KEY}, {"name": "idle", "key": "sk-ui-idle-0003"}],
        **gateway,
    )


async def test_without_an_admin_key_there_is_no_page(sim: SimServer) -> None:
    async with serve(make_fleet(doc(sim))) as gw, aiohttp.ClientSession() as s:
        for path in ("/ui", "/ui/state", "/ui/static/ui.js"):
            async with s.get(gw.url + path) as resp:
                assert resp.status in (403, 404), path
                assert "error" in await resp.json()
        async with s.post(gw.url + "/ui/login", data={"key": "anything"}) as resp:
            assert resp.status == 403


async def test_sign_in_trades_the_key_for_a_strict_cookie(sim: SimServer) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with (
        serve(make_fleet(doc(sim, admin_key=ADMIN))) as gw,
        aiohttp.ClientSession(cookie_jar=jar) as s,
    ):
        async with s.get(gw.url + "/ui") as resp:
            assert resp.status == 401
            assert 'action="/ui/login"' in await resp.text()
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and resp.headers["X-Frame-Options"] == "DENY"
        async with s.post(gw.url + "/ui/login", data={"key": KEY}) as resp:
            assert resp.status == 401  # an API key is not the admin key
            assert "not the admin key" in await resp.text()
        async with s.post(gw.url + "/ui/login", data={"key": ADMIN}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui"
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
            assert ADMIN not in cookie
        async with s.get(gw.url + "/ui") as resp:
            assert resp.status == 200
            page = await resp.text()
            assert '<script src="/ui/static/ui.js"' in page and "<script>" not in page
        async with s.get(gw.url + "/ui/static/ui.js") as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript"
        async with s.get(gw.url + "/ui/static/../ui.py") as resp:
            assert resp.status == 404
        async with s.post(gw.url + "/ui/logout", allow_redirects=False) as resp:
            assert resp.status == 303
        assert not [c for c in jar if c.key == COOKIE and c.value]
        async with s.get(gw.url + "/ui/state") as resp:
            assert resp.status == 401


async def test_wrong_admin_keys_are_throttled(sim: SimServer) -> None:
    async with (
        serve(make_fleet(doc(sim, admin_key=ADMIN))) as gw,
        aiohttp.ClientSession() as s,
    ):
        gw.app[SIGN_IN_GUARD].limit = 3
        for _ in range(3):
            async with s.post(gw.url + "/ui/login", data={"key": "guess"}) as resp:
                assert resp.status == 401
        # the limit is reached: even the right key waits until the window has passed
        async with s.post(gw.url + "/ui/login", data={"key": ADMIN}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert "too many wrong admin keys" in await resp.text()
        gw.app[SIGN_IN_GUARD].window_s = 0.0
        async with s.post(gw.url + "/ui/login", data={"key": ADMIN}, allow_redirects=False) as r:
            assert r.status == 303


async def test_state_needs_the_admin_key_and_counts_what_happened(sim: SimServer) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    memory = {"d1": {"gpu": "RTX 3090", "total_gib": 23.6, "fits": True, "segments": []}}
    async with (
        serve(make_fleet(doc(sim, admin_key=ADMIN)), gpu_memory=memory) as gw,
        aiohttp.ClientSession() as s,
    ):
        async with s.get(gw.url + "/ui/state", headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 401
        chat = {"model": "tiny-route", "messages": [{"role": "user", "content": "hi"}]}
        for stream in (True, True, False):
            async with s.post(
                gw.url + "/v1/chat/completions",
                json={**chat, "stream": stream},
                headers={"Authorization": f"Bearer {KEY}"},
            ) as r:
                assert r.status == 200
                await r.read()
                # the answer says how long it queued at the gateway (burst reports show it)
                assert float(r.headers["x-fleetgate-queue-wait-ms"]) >= 0
        async with s.get(gw.url + "/ui/state", headers=admin) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            state = await r.json()
        (dep,) = state["deployments"]
        assert dep["name"] == "d1" and dep["state"] == "up" and dep["host"] == "local"
        assert dep["served_model"] == "tiny" and dep["max_model_len"] == 512
        assert dep["slots"] == 4 and dep["slots_in_use"] == 0
        assert dep["lanes"] == ["tiny-route", "tiny-burst"]
        assert dep["ttft_ms"]["p50"] is not None and dep["e2e_ms"]["p95"] is not None
        assert dep["backend"]["error"] is None and dep["backend"]["kv_usage"] == 0
        assert dep["gpu_memory"] == memory["d1"]
        assert state["hosts"] == [{"name": "local", "deployments": ["d1"]}]
        lanes = {lane["name"]: lane for lane in state["lanes"]}
        assert lanes["tiny-route"]["requests"] == 3 and lanes["tiny-route"]["ok"] == 3
        assert lanes["tiny-route"]["tokens_out_per_s"] > 0
        assert lanes["tiny-burst"]["requests"] == 0 and lanes["tiny-burst"]["queue_depth"] == 40
        keys = {k["name"]: k for k in state["keys"]}
        assert keys["owner"]["requests"] == 3 and keys["owner"]["refusals"] == 0
        assert keys["owner"]["tokens_out"] == 12 and keys["owner"]["tokens_in"] > 0
        assert keys["idle"] == {
            "name": "idle", "requests": 0, "tokens_in": 0, "tokens_out": 0, "refusals": 0
        }  # fmt: skip

        # a backend that goes away: down, and its /metrics unreachable
        sim.set_faults("crash")
        await eventually(lambda: not gw.gateway.upstream.healthy("d1"))
        gw.gateway.monitor.backends.min_interval_s = 0
        async with s.get(gw.url + "/ui/state", headers=admin) as r:
            (dep,) = (await r.json())["deployments"]
        assert dep["state"] == "down" and "unreachable" in dep["backend"]["error"]


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (math.inf, 100.0)]
    assert quantile_of_buckets(buckets, 0.5) == pytest.approx(0.5)
    assert quantile_of_buckets(buckets, 0.25) == pytest.approx(0.3)
    assert quantile_of_buckets(buckets, 0.95) == pytest.approx(0.95)
    assert quantile_of_buckets([(1.0, 0.0), (math.inf, 0.0)], 0.5) is None
    # everything above the last finite bound: that bound is all that is known
    assert quantile_of_buckets([(1.0, 0.0), (math.inf, 4.0)], 0.5) == 1.0


def test_the_window_subtracts_what_happened_before_it() -> None:
    series = ("fleetgate_requests_total", (("model", "a"),))
    window = Window(window_s=60)
    t0 = time.monotonic()
    window.add({series: 10.0}, at=t0 + 10)
    window.add({series: 30.0}, at=t0 + 70)
    delta = window.delta({series: 35.0}, at=t0 + 75)
    assert delta.total("fleetgate_requests_total", model="a") == 25.0  # since t0 + 10
    assert delta.seconds == pytest.approx(65.0)
    assert Delta({series: 2.0}, 1.0).total("fleetgate_requests_total", model="b") == 0


NEW_NAMES = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
vllm:num_preemptions_total{engine="1",model_name="m"} 1.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0
"""
OLD_NAMES = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 5.0
"""


def test_backend_figures_are_read_under_old_and_new_vllm_names() -> None:
    new = parse_vllm_metrics(NEW_NAMES)
    assert new["kv_usage"] == 0.5 and new["preemptions"] == 4.0
    assert new["running"] == 2.0 and new["prompt_tokens"] == 100.0 and "waiting" not in new
    old = parse_vllm_metrics(OLD_NAMES)
    assert old == {"kv_usage": 0.75, "preemptions": 7.0, "waiting": 5.0}
    # no labels, a timestamp, a label value with a space, histogram lines around it
    bare = (
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a b"} 9\n'
        "vllm:num_requests_running 3 1700000000000\n"
        'vllm:num_requests_waiting{model_name="a b"} 2.0\n'
    )
    assert parse_vllm_metrics(bare) == {"running": 3.0, "waiting": 2.0}
    with pytest.raises(ValueError):
        parse_vllm_metrics("vllm:num_requests_running\n")


async def test_the_sims_metrics_page_reads_like_vllms(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as s, s.get(sim.url + "/metrics") as resp:
        figures = parse_vllm_metrics(await resp.text())
    assert set(figures) == {
        "kv_usage", "preemptions", "running", "waiting", "prompt_tokens", "generation_tokens"
    }  # fmt: skip


def test_the_key_tally_starts_over_at_midnight() -> None:
    tally = KeyTally()
    tally.record("owner", 200, 10, 5)
    tally.record("owner", 429, 0, 0)
    tally.record("owner", 499, 0, 0)  # the client went away: not a refusal
    tally.record(None, 200, 1, 1)
    rows = {r["name"]: r for r in tally.today(["owner", "idle"])}
    assert rows["owner"] == {
        "name": "owner", "requests": 3, "tokens_in": 10, "tokens_out": 5, "refusals": 1
    }  # fmt: skip
    assert rows["idle"]["requests"] == 0 and rows["(no key)"]["requests"] == 1
    assert tally.day == time.strftime("%Y-%m-%d")
    tally._rolls_at = time.time() - 1  # as if midnight just passed
    assert {r["name"]: r["requests"] for r in tally.today(["owner"])} == {"owner": 0}
    assert json.dumps(tally.today([]))  # plain data
