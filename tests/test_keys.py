"""Keys with budgets, priorities and a fair queue, against the simulator and real stores: a
SQLite file across a gateway restart and a period rollover, PostgreSQL shared by two gateway
processes, rotation with requests in flight, and the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import sqlalchemy as sa
import yaml
from tests.support.gateway import eventually, make_fleet, sim_fleet

from fleetgate.gateway import serve
from fleetgate.gateway.keystore import KeyStore
from fleetgate.sim import SimConfig, SimServer

ADMIN = "admin-key-for-tests"
OWNER = "sk-owner-key-0001"
ROUTE = "r"


def fleet_doc(sim: SimServer, *, keys: list[dict[str, Any]] | None = None, **gw: Any) -> dict:
    route = {"deployments": ["d1"], "max_output_tokens": 8, **gw.pop("route", {})}
    doc = sim_fleet(
        {"d1": (sim.port, 512, 4)},
        {ROUTE: route},
        api_keys=keys if keys is not None else [{"name": "owner", "key": OWNER}],
        admin_key=ADMIN,
        **gw,
    )
    return doc


def chat(**kw: Any) -> bytes:
    body = {"model": ROUTE, "messages": [{"role": "user", "content": "hello"}], **kw}
    return json.dumps(body).encode()


async def post(s: aiohttp.ClientSession, url: str, key: str, **kw: Any) -> tuple[int, dict, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with s.post(url + "/v1/chat/completions", data=chat(**kw), headers=headers) as r:
        return r.status, await r.json(), r.headers


async def admin(s: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with s.request(method, url, json=body, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        data = await r.json()
        assert r.status in (200, 201), data
        return data


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    cfg = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=2000.0)
    async with SimServer(cfg) as server:
        yield server


# -- budgets on a SQLite file -------------------------------------------------------------------


async def test_budget_survives_restart_and_rolls_over(tmp_path: Path, sim: SimServer) -> None:
    store = str(tmp_path / "keys.db")
    keys = [{"name": "owner", "key": OWNER, "budgets": {"requests_per_day": 2}}]
    doc = fleet_doc(sim, keys=keys, store=store)
    async with aiohttp.ClientSession() as s:
        async with serve(make_fleet(doc)) as gw:
            for left in (1, 0):
                status, body, headers = await post(s, gw.url, OWNER, max_tokens=4)
                assert status == 200, body
                assert headers["x-ratelimit-limit-requests"] == "2"
                assert headers["x-ratelimit-remaining-requests"] == str(left)
            status, body, headers = await post(s, gw.url, OWNER, max_tokens=4)
            assert status == 429 and body["error"]["code"] == "quota_exceeded"
            msg = body["error"]["message"]
            assert "requests budget per day" in msg and "2 requests used of 2" in msg
            assert "resets at" in msg and "Retry-After" in headers
        async with serve(make_fleet(doc)) as gw:  # a restart: still spent
            status, body, _ = await post(s, gw.url, OWNER, max_tokens=4)
            assert status == 429 and body["error"]["code"] == "quota_exceeded"
            # the next day (an injected clock): the budget is back
            gw.gateway.accounts.store.clock = lambda: time.time() + 86400
            status, body, headers = await post(s, gw.url, OWNER, max_tokens=4)
            assert status == 200, body
            assert headers["x-ratelimit-remaining-requests"] == "1"
    usage = KeyStore(store).usage("day")  # today: the next day's request is not in it
    assert [(u.key, u.requests) for u in usage] == [("owner", 2)]
    assert usage[0].refusals == {"quota_exceeded": 2}


async def test_token_budget_counts_streams_and_the_usage_endpoint(
    tmp_path: Path, sim: SimServer
) -> None:
    keys = [
        {"name": "owner", "key": OWNER, "budgets": {"tokens_per_week": 40}},
        {"name": "other", "key": "sk-other-key-0002"},
    ]
    doc = fleet_doc(sim, keys=keys, store=str(tmp_path / "k.db"))
    async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
        headers = {"Authorization": f"Bearer {OWNER}"}
        async with s.post(
            gw.url + "/v1/chat/completions", data=chat(max_tokens=8, stream=True), headers=headers
        ) as r:
            assert r.status == 200
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < 40
            await r.read()
        mine: dict[str, Any] = {"usage": []}
        for _ in range(200):  # settled just after the answer went out
            async with s.get(gw.url + "/v1/usage?period=week", headers=headers) as r:
                mine = await r.json()
            if mine["usage"]:
                break
            await asyncio.sleep(0.02)
        [row] = mine["usage"]
        assert row["key"] == "owner" and row["requests"] == 1
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 8  # reported by the sim
        other = {"Authorization": "Bearer sk-other-key-0002"}
        async with s.get(gw.url + "/v1/usage", headers=other) as r:
            assert (await r.json())["usage"] == []  # a key sees only its own
        everyone = await admin(s, "GET", gw.url + "/v1/usage?period=week")
        assert [u["key"] for u in everyone["usage"]] == ["owner"]
        spent = row["prompt_tokens"] + row["completion_tokens"]
        while spent < 40:
            status, body, _ = await post(s, gw.url, OWNER, max_tokens=8)
            if status == 429:
                break
            spent += body["usage"]["total_tokens"]
        status, body, _ = await post(s, gw.url, OWNER, max_tokens=8)
        assert status == 429 and "tokens budget per week" in body["error"]["message"]


# -- the fair queue -----------------------------------------------------------------------------


def _slow_sim(decode_tps: float = 40.0) -> SimConfig:
    # one request is 8 decode steps: at 40 tokens/s a service time of ~0.2 s
    return SimConfig(
        model="tiny", max_model_len=512, max_num_seqs=8, decode_tps=decode_tps, reply_tokens=None
    )


async def test_a_flood_does_not_push_one_request_behind_it() -> None:
    async with SimServer(_slow_sim(100.0)) as sim:
        keys = [{"name": "a", "key": "sk-flood-aaaa"}, {"name": "b", "key": "sk-light-bbbb"}]
        doc = fleet_doc(
            sim, keys=keys, route={"concurrency": 2, "queue_depth": 200, "queue_wait_s": 120}
        )
        unlimited = aiohttp.TCPConnector(limit=0)  # 101 connections at once
        async with aiohttp.ClientSession(connector=unlimited) as s, serve(make_fleet(doc)) as gw:
            done: list[str] = []

            async def one(key: str, who: str) -> None:
                status, body, _ = await post(s, gw.url, key, max_tokens=8)
                assert status == 200, body
                done.append(who)

            flood = [asyncio.create_task(one("sk-flood-aaaa", "a")) for _ in range(100)]
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) >= 98)
            await one("sk-light-bbbb", "b")
            # B went in at the next turn: at most a few of A's finished before it (FIFO: 98)
            assert done.index("b") <= 4, done.index("b")
            await asyncio.gather(*flood)


async def test_interactive_first_and_batch_served_before_its_deadline() -> None:
    async with SimServer(_slow_sim()) as sim:
        keys = [
            {"name": "chat", "key": "sk-interactive-1", "priority": "interactive"},
            {"name": "chat2", "key": "sk-interactive-2", "priority": "interactive"},
            {"name": "job", "key": "sk-batch-key-1", "priority": "batch"},
        ]
        doc = fleet_doc(
            sim, keys=keys, route={"concurrency": 1, "queue_depth": 100, "queue_wait_s": 3}
        )
        async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
            order: list[str] = []

            async def one(key: str, who: str) -> int:
                status, _, _ = await post(s, gw.url, key, max_tokens=8)
                order.append(who)
                return status

            holder = asyncio.create_task(one("sk-interactive-1", "holder"))
            await eventually(lambda: gw.gateway.admission.running().get("chat") == 1)
            batch = asyncio.create_task(one("sk-batch-key-1", "batch"))
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) == 1)
            inter = asyncio.create_task(one("sk-interactive-2", "interactive"))
            await asyncio.gather(holder, batch, inter)
            assert order.index("interactive") < order.index("batch")

            # constant interactive load, always two waiting: the batch request still gets in
            stop = asyncio.Event()
            statuses: list[int] = []

            async def keep_busy(key: str) -> None:
                while not stop.is_set():
                    statuses.append(await one(key, "i"))

            load = [asyncio.create_task(keep_busy(k)) for k in ("sk-interactive-1",) * 3]
            await eventually(lambda: gw.gateway.admission.queued(ROUTE) >= 2)
            assert await one("sk-batch-key-1", "batch") == 200  # not a queue_timeout 429
            stop.set()
            await asyncio.gather(*load)


async def test_max_concurrency_waits_in_the_queue(sim: SimServer) -> None:
    async with SimServer(_slow_sim()) as slow:
        keys = [{"name": "capped", "key": "sk-capped-key1", "max_concurrency": 1}]
        doc = fleet_doc(slow, keys=keys, route={"concurrency": 4})
        async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, gw.gateway.admission.running().get("capped", 0))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(
                *(post(s, gw.url, "sk-capped-key1", max_tokens=4) for _ in range(4))
            )
            watcher.cancel()
            assert [r[0] for r in results] == [200] * 4 and peak == 1


# -- rotation and the openai client -------------------------------------------------------------


async def test_rotation_keeps_requests_in_flight(tmp_path: Path) -> None:
    async with SimServer(_slow_sim()) as sim:
        doc = fleet_doc(sim, store=str(tmp_path / "k.db"))
        async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
            made = await admin(
                s, "POST", gw.url + "/admin/keys", {"name": "agent", "priority": "batch"}
            )
            old = made["key"]
            flights = [asyncio.create_task(post(s, gw.url, old, max_tokens=8)) for _ in range(6)]
            await eventually(lambda: gw.gateway.admission.running().get("agent", 0) >= 1)
            new = (await admin(s, "POST", gw.url + "/admin/keys/agent/rotate", {"grace_s": 0}))[
                "key"
            ]
            assert [r[0] for r in await asyncio.gather(*flights)] == [200] * 6
            assert (await post(s, gw.url, old, max_tokens=2))[0] == 401
            assert (await post(s, gw.url, new, max_tokens=2))[0] == 200
            await admin(s, "DELETE", gw.url + "/admin/keys/agent")
            assert (await post(s, gw.url, new, max_tokens=2))[0] == 401


def test_openai_client_reads_headers_and_gets_rate_limit_error(tmp_path: Path) -> None:
    cfg = SimConfig(model="tiny", max_model_len=512, max_num_seqs=4, decode_tps=2000.0)
    with SimServer(cfg).run_in_thread() as sim:
        keys = [{"name": "owner", "key": OWNER, "budgets": {"requests_per_month": 1}}]
        doc = fleet_doc(sim, keys=keys, store=str(tmp_path / "k.db"), route={"rpm": 100})

        async def main() -> None:
            async with serve(make_fleet(doc)) as gw:
                oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=OWNER, max_retries=0)
                raw = await oa.chat.completions.with_raw_response.create(
                    model=ROUTE, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                assert raw.headers["x-ratelimit-limit-requests"] == "1"  # tighter than rpm 100
                assert raw.headers["x-ratelimit-remaining-requests"] == "0"
                assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
                assert raw.parse().choices[0].message.content
                with pytest.raises(openai.RateLimitError) as err:
                    await oa.chat.completions.create(
                        model=ROUTE, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                    )
                assert err.value.code == "quota_exceeded"
                assert "requests budget per month" in str(err.value)
                await oa.close()

        asyncio.run(main())


# -- PostgreSQL shared by two gateway processes -------------------------------------------------

PG = "postgresql://postgres@127.0.0.1:5432/"


@pytest.fixture
def pg_dsn() -> Any:
    name = f"fleetgate_test_{uuid.uuid4().hex[:10]}"
    root = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://") + "postgres")
    try:
        with root.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield PG + name
    with root.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    root.dispose()


def _start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from fleetgate.cli import main; main()", "serve", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )


def _wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)


def test_two_gateways_share_keys_and_one_budget(tmp_path: Path, pg_dsn: str) -> None:
    from tests.support.vllm_server import free_port

    budget, max_tokens = 300, 8
    cfg = SimConfig(model="tiny", max_model_len=512, max_num_seqs=8, decode_tps=400.0)
    with SimServer(cfg).run_in_thread() as sim:
        keys = [{"name": "owner", "key": OWNER, "budgets": {"tokens_per_day": budget}}]
        ports, procs = [free_port(), free_port()], []
        for i, port in enumerate(ports):
            doc = fleet_doc(sim, keys=keys, store=pg_dsn, route={"concurrency": 4})
            # health checks that a loaded machine does not fail (the sim shares this process)
            health = {"interval_s": 1.0, "timeout_s": 5.0, "unhealthy_after": 3}
            doc["gateway"].update(port=port, listen="127.0.0.1", health=health)
            path = tmp_path / f"fleet{i}.yaml"
            path.write_text(yaml.safe_dump(doc))
            procs.append(_start(path))
        try:
            for port, proc in zip(ports, procs, strict=True):
                _wait_up(port, proc)
            urls = [f"http://127.0.0.1:{p}" for p in ports]

            async def main() -> tuple[int, int]:
                async with aiohttp.ClientSession() as s:
                    made = await admin(s, "POST", urls[0] + "/admin/keys", {"name": "made"})
                    ok = False
                    for _ in range(300):  # the other gateway re-reads the store every second
                        if (await post(s, urls[1], made["key"], max_tokens=2))[0] == 200:
                            ok = True
                            break
                        await asyncio.sleep(0.1)
                    assert ok, "a key made through one gateway never worked on the other"
                    results = await asyncio.gather(
                        *(post(s, urls[i % 2], OWNER, max_tokens=max_tokens) for i in range(60))
                    )
                statuses = [r[0] for r in results]
                assert set(statuses) <= {200, 429}, [r[1] for r in results if r[0] != 200]
                assert all(
                    r[1]["error"]["code"] == "quota_exceeded" for r in results if r[0] == 429
                )
                reserved = max(int(r[1]["usage"]["total_tokens"]) for r in results if r[0] == 200)
                return statuses.count(200), reserved

            served, one = asyncio.run(main())
            store = KeyStore(pg_dsn)
            deadline = time.monotonic() + 30
            while True:  # a gateway settles just after its answer went out
                [row] = store.usage("day", "owner")
                if row.requests >= served or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            store.close()
            used = row.prompt_tokens + row.completion_tokens
            assert served == row.requests and 0 < served < 60
            # in flight at once: 4 slots per gateway; each holds at most one request's tokens
            print(f"budget {budget}, used {used} by {served} requests, one uses {one}")
            assert used <= budget + 8 * one, (used, one)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=15)


# -- the parts on their own ---------------------------------------------------------------------


async def test_fair_order_unit() -> None:
    """One slot, taken: waiters of a flooding key, a light key and a batch key."""
    from fleetgate.gateway.admission import Admission, Claimant

    adm = Admission()
    adm.configure({"d": 1})
    flood, light = Claimant("a"), Claimant("b")
    batch = Claimant("job", priority=0)
    first = await adm.acquire("r", ("d",), 100, 60, claimant=flood)
    order: list[str] = []

    async def wait(c: Claimant) -> None:
        pool = await adm.acquire("r", ("d",), 100, 60, claimant=c)
        order.append(c.key)
        await asyncio.sleep(0)
        adm.release(pool, 0.01, claimant=c)

    tasks = [asyncio.create_task(wait(flood)) for _ in range(5)]
    tasks.append(asyncio.create_task(wait(batch)))
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait(light)))
    await asyncio.sleep(0)
    adm.release(first, 0.01, claimant=flood)
    await asyncio.gather(*tasks)
    # the light key joined at the flood's count: its one request goes at the next turn but one
    # (a tie goes to the older request), the batch key after every interactive one
    assert order.index("b") == 1 and order[-1] == "job", order

    fifo = Admission(fair=False)
    fifo.configure({"d": 1})
    order.clear()
    first = await fifo.acquire("r", ("d",), 100, 60, claimant=flood)
    adm = fifo
    tasks = [asyncio.create_task(wait(flood)) for _ in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait(light)))
    await asyncio.sleep(0)
    fifo.release(first, 0.01, claimant=flood)
    await asyncio.gather(*tasks)
    assert order == ["a", "a", "a", "b"]


def test_periods_and_headers() -> None:
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from fleetgate.gateway.periods import period_of
    from fleetgate.gateway.ratelimit import Level, rate_limit_headers

    # Sunday 2026-03-29 23:30 in Berlin is still March and that week; DST started that night
    now = datetime(2026, 3, 29, 23, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    week = period_of("week", now, "Europe/Berlin")
    assert (week.first, week.last) == (date(2026, 3, 23), date(2026, 3, 29))
    assert week.reset_text() == "2026-03-30 00:00 Europe/Berlin"
    month = period_of("month", now, "Europe/Berlin")
    assert (month.first, month.last) == (date(2026, 3, 1), date(2026, 3, 31))
    assert period_of("day", now, "UTC").first == date(2026, 3, 29)  # 21:30 UTC
    headers = rate_limit_headers(
        [
            Level("requests", 60, 59, 1.0),
            Level("requests", 100, 3, 7384.2),
            Level("tokens", 1000, 800, 0.25),
        ]
    )
    assert headers == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "2h3m5s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "800",
        "x-ratelimit-reset-tokens": "250ms",
    }


async def test_cli_keys_on_the_store_of_a_running_gateway(tmp_path: Path, sim: SimServer) -> None:
    from typer.testing import CliRunner

    from fleetgate.cli import app

    doc = fleet_doc(sim, store=str(tmp_path / "k.db"))
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, [*args, "--fleet", str(path)])

    async with aiohttp.ClientSession() as s, serve(make_fleet(doc)) as gw:
        made = await asyncio.to_thread(
            cli, "keys", "create", "cli-key", "--priority", "batch", "--requests-per-day", "5"
        )
        assert made.exit_code == 0, made.output
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("fg-")
        last: list[int] = []

        async def works() -> bool:
            last.append((await post(s, gw.url, key, max_tokens=2))[0])
            return last[-1] == 200

        for _ in range(100):  # the gateway re-reads the store every second
            if await works():
                break
            await asyncio.sleep(0.05)
        assert last[-1] == 200, last
        listed = await asyncio.to_thread(cli, "keys", "list", "--json")
        [row] = json.loads(listed.stdout)
        assert row["name"] == "cli-key" and row["priority"] == 0 and key not in listed.stdout
        assert (await asyncio.to_thread(cli, "keys", "create", "owner")).exit_code == 1
        rows: list[dict[str, Any]] = []
        for _ in range(100):  # the answer went out just before its usage was settled
            used = await asyncio.to_thread(cli, "usage", "--json", "--key", "cli-key")
            rows = json.loads(used.stdout)["usage"]
            if rows:
                break
            await asyncio.sleep(0.05)
        assert rows[0]["requests"] == 1
        assert (await asyncio.to_thread(cli, "keys", "revoke", "cli-key")).exit_code == 0
        for _ in range(100):
            if (await post(s, gw.url, key, max_tokens=2))[0] == 401:
                break
            await asyncio.sleep(0.05)
        assert (await post(s, gw.url, key, max_tokens=2))[0] == 401


def test_keys_default_to_a_state_file_per_fleet(tmp_path: Path, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from fleetgate.cli import app

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    doc = sim_fleet({"d1": (8011, 512, 4)}, {ROUTE: {"deployments": ["d1"]}})
    doc["name"] = "home lab"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    made = CliRunner().invoke(app, ["keys", "create", "k1", "--fleet", str(path)])
    assert made.exit_code == 0, made.output
    store = tmp_path / "state" / "fleetgate" / "home_lab-keys.db"
    assert [k.name for k in KeyStore(str(store)).list_keys()] == ["k1"]
