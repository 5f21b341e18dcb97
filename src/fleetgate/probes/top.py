"""``fleetgate top``: the gateway's /ui/state as a terminal table that refreshes in place.

For owners who only have ssh. It reads the same snapshot the /ui page draws (with the admin
key as a Bearer token), fits an 80-column terminal, and quits on ``q`` (or Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetgate.probes.http import ApiClient
from fleetgate.probes.targets import TargetError

STATE_STYLE = {"up": "green", "down": "bold red", "starting": "yellow", "draining": "yellow",
               "sleeping": "blue"}  # fmt: skip


class TopError(TargetError):
    """The gateway answered, but not with a state it will give: wrong key, no /ui."""


async def fetch_state(api: ApiClient) -> dict[str, Any] | str:
    """The snapshot, or a line saying why there is none this time (the gateway may be
    restarting: the view keeps trying). Raises :class:`TopError` when retrying cannot help."""
    reply = await api.request("GET", "/ui/state", timeout_s=10)
    if reply.status == 200 and isinstance(reply.body, dict):
        return reply.body
    if reply.status in (401, 403):
        raise TopError(
            f"{api.base_url} refused the admin key ({reply.status}: {reply.message}); "
            "pass --admin-key or set FLEETGATE_ADMIN_KEY"
        )
    if reply.status == 404:
        raise TopError(f"{api.base_url} has no /ui/state: is it a fleetgate gateway?")
    return f"cannot read {api.base_url}/ui/state: {reply.summary()}"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ms(pair: dict[str, float | None] | None) -> str:
    if not pair or pair.get("p50") is None:
        return "–"
    return f"{_n(pair['p50'])}/{_n(pair['p95'])}"


def view(state: dict[str, Any] | None, url: str, note: str = "") -> RenderableType:
    """Deployments, lanes and keys as three compact tables (80 columns suffice)."""
    head = Text.assemble(("fleetgate top ", "bold"), url)
    if state is None:
        return Group(head, Text(note or "waiting for the first answer…", style="yellow"))
    deps = state["deployments"]
    up = sum(1 for d in deps if d["state"] == "up")
    when = time.strftime("%H:%M:%S", time.localtime(state["gateway"]["now"]))
    head.append(f"  {up}/{len(deps)} up  {when}  ", style="bold" if up == len(deps) else "red")
    head.append("q quits", style="dim")
    window = state["gateway"]["window_s"]
    head.append(f"\nlatency p50/p95 and rates over the last {window / 60:.1f} min", style="dim")
    tables: list[RenderableType] = [head]
    if note:
        tables.append(Text(note, style="yellow"))

    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, expand=False)
    t.add_column("host/deployment", no_wrap=True, overflow="ellipsis", max_width=24)
    t.add_column("state", no_wrap=True)
    for col in ("slots", "ttft ms", "e2e ms", "kv%", "out/s", "preempt"):
        t.add_column(col, justify="right", no_wrap=True)
    for d in deps:
        be = d.get("backend") or {}
        kv = be.get("kv_usage")
        gen = be.get("generation_tokens_per_s")
        t.add_row(
            f"{d['host']}/{d['name']}",
            Text(d["state"], style=STATE_STYLE.get(d["state"], "")),
            f"{d['slots_in_use']}/{d['slots']}",
            _ms(d.get("ttft_ms")),
            _ms(d.get("e2e_ms")),
            "–" if kv is None else f"{kv * 100:.0f}",
            _n(gen, 1),
            _n(be.get("preemptions")),
        )
    tables.append(t)

    lanes = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    lanes.add_column("route/profile", no_wrap=True, max_width=24, overflow="ellipsis")
    for col in ("queue", "req", "refused", "in/s", "out/s", "wait p95"):
        lanes.add_column(col, justify="right", no_wrap=True)
    for lane in state["lanes"]:
        wait = (lane.get("queue_wait_ms") or {}).get("p95")
        lanes.add_row(
            lane["name"],
            f"{lane['queued']}/{lane['queue_depth']}",
            _n(lane["requests"]),
            _n(lane["refused"]),
            _n(lane["tokens_in_per_s"], 1),
            _n(lane["tokens_out_per_s"], 1),
            "–" if wait is None else f"{_n(wait)} ms",
        )
    tables.append(lanes)

    keys = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    keys.add_column(f"key (today, {state['day']})", no_wrap=True, max_width=30,
                    overflow="ellipsis")  # fmt: skip
    for col in ("requests", "tokens in", "tokens out", "refusals"):
        keys.add_column(col, justify="right", no_wrap=True)
    for k in state["keys"]:
        keys.add_row(
            k["name"], _n(k["requests"]), _n(k["tokens_in"]), _n(k["tokens_out"]),
            _n(k["refusals"]),
        )  # fmt: skip
    tables.append(keys)
    return Group(*tables)


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[bool]:
    """Single key presses without Enter while the view runs (False: not a terminal)."""
    try:
        import termios
        import tty
    except ImportError:  # Windows: Ctrl-C quits
        yield False
        return
    if not stream.isatty():
        yield False
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(
    url: str,
    admin_key: str | None,
    *,
    interval_s: float = 2.0,
    console: Console | None = None,
    once: bool = False,
) -> None:
    """Refresh until ``q``; ``once``: print one view and return. Raises :class:`TopError`."""
    console = console or Console()
    url = url.rstrip("/")
    async with ApiClient(url, admin_key, connections=2) as api:
        if once:
            got = await fetch_state(api)
            if isinstance(got, str):
                raise TopError(got)
            console.print(view(got, url))
            return
        quit_now = asyncio.Event()
        loop = asyncio.get_running_loop()
        with _keys(sys.stdin) as interactive:
            if interactive:

                def pressed() -> None:
                    if set(os.read(sys.stdin.fileno(), 64)) & {ord("q"), ord("Q")}:
                        quit_now.set()

                loop.add_reader(sys.stdin.fileno(), pressed)
            try:
                state: dict[str, Any] | None = None
                with Live(view(None, url), console=console, auto_refresh=False) as live:
                    while not quit_now.is_set():
                        got = await fetch_state(api)
                        note = got if isinstance(got, str) else ""
                        if not isinstance(got, str):
                            state = got
                        live.update(view(state, url, note), refresh=True)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(quit_now.wait(), interval_s)
            finally:
                if interactive:
                    loop.remove_reader(sys.stdin.fileno())
