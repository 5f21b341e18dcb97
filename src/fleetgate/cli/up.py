"""``fleetgate up``: the whole fleet on this machine, simulated backends behind the gateway."""

from __future__ import annotations

import asyncio
import errno
import json
import shlex
import signal
from enum import StrEnum
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import exit_on_failure, load_or_exit
from fleetgate.fleetfile import public_models, require_gateway
from fleetgate.local import RunningFleet, find_running, local_fleet, recorded


class BackendKind(StrEnum):
    sim = "sim"
    vllm = "vllm"


def _per_minute(value: int | None) -> str:
    return "–" if value is None else f"{value / 1000:g}k" if value >= 10_000 else str(value)


def _table(title: str, *columns: str) -> Table:
    """Borderless, so 80 columns hold a route name and its numbers; names never wrap."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, title_justify="left"
    )
    for i, col in enumerate(columns):
        text = i == 0 or col in ("kind", "backends")
        table.add_column(
            col, justify="left" if text else "right", no_wrap=col != "backends", overflow="fold"
        )
    return table


def routes_tables(running: RunningFleet) -> tuple[Table, Table]:
    """Each public name with its backends, and with the limits the gateway enforces."""
    names = _table("routes", "model", "kind", "backends")
    limits = _table("limits", "model", "ctx", "in", "out", "tpm", "rpm", "conc", "queue")
    for pm in public_models(running.fleet).values():
        backs = [running.backends[d] for d in pm.deployments]
        lim = pm.limits
        names.add_row(
            pm.name, pm.kind, ", ".join(f"{b.deployment} ({b.kind} :{b.port})" for b in backs)
        )
        limits.add_row(
            pm.name,
            str(min(b.max_model_len for b in backs)),
            str(lim.max_input_tokens or "–"),
            str(lim.max_output_tokens or "–"),
            _per_minute(lim.tpm),
            _per_minute(lim.rpm),
            str(lim.concurrency or "–"),
            f"{lim.queue_depth}/{lim.queue_wait_s:g}s",
        )
    limits.caption = "ctx = max_model_len; in/out = tokens per request; tpm/rpm per minute"
    limits.caption_justify = "left"
    return names, limits


def announce(running: RunningFleet) -> None:
    console.print(f"fleet [bold]{running.fleet.name}[/]")
    for table in routes_tables(running):
        # a pipe or a log gets the whole table, never names cut at 80 columns
        if console.is_terminal:
            console.print(table)
        else:
            natural = Measurement.get(console, console.options.update(max_width=10_000), table)
            Console(file=console.file, width=max(console.width, natural.maximum)).print(table)
    console.print(f"gateway: [bold]{running.gateway_url}[/]  (OpenAI API at /v1)")
    gateway = running.fleet.gateway
    if gateway is not None and gateway.admin_key:
        console.print(
            f"live page: {running.gateway_url}/ui (the admin key signs in); "
            f"in a terminal: fleetgate top {running.gateway_url}"
        )
    generated = running.local.generated_keys
    for name, key in generated.items():
        console.print(
            f"[yellow]API key {name!r} was not set in the environment; for this session it is:[/]"
            f"\n  export FLEETGATE_API_KEY={key}"
        )
    if running.api_key is None:
        console.print("[yellow]no API key configured: the gateway is open[/]")


def _docs() -> str:
    """Where the docs are: this checkout's docs/ when fleetgate runs from one."""
    here = Path(__file__).resolve().parents[3] / "docs"
    where = here if (here / "getting-started.md").is_file() else Path("docs")
    return (
        f"{where / 'getting-started.md'} (talking to the fleet), "
        f"{where / 'gateway.md'} (every endpoint)"
    )


def next_steps(running: RunningFleet, fleet_file: Path) -> str:
    """What to do next, as commands to paste into another shell: a curl and an ``openai``
    snippet against this gateway with its key, the commands that now use this fleet, the
    docs, how to stop. A key from the environment is referred to, never printed."""
    routes = [pm for pm in public_models(running.fleet).values() if pm.kind == "route"]
    model = routes[0].name
    max_tokens = min(32, routes[0].limits.max_output_tokens or 32)
    key = running.api_key
    if key is None:  # an open gateway: the openai client still wants some key
        shell_key, py_key = None, repr("none")
    elif key in running.local.generated_keys.values():
        shell_key, py_key = key, repr(key)
    else:
        shell_key, py_key = "$FLEETGATE_API_KEY", 'os.environ["FLEETGATE_API_KEY"]'
    message = {"role": "user", "content": "Hello!"}
    body = json.dumps({"model": model, "messages": [message], "max_tokens": max_tokens})
    auth = f' -H "Authorization: Bearer {shell_key}"' if shell_key else ""
    url = running.gateway_url
    return "\n".join(
        [
            "Try it from another shell:",
            f"curl -s {url}/v1/chat/completions{auth} "
            f"-H \"Content-Type: application/json\" -d '{body}'",
            "With the openai client (pip install openai):",
            "python3 - <<'EOF'",
            "import os",
            "from openai import OpenAI",
            f'client = OpenAI(base_url="{url}/v1", api_key={py_key})',
            f"reply = client.chat.completions.create(model={model!r}, "
            f"messages=[{message!r}], max_tokens={max_tokens})",
            "print(reply.choices[0].message.content)",
            "EOF",
            f"Given {fleet_file}, smoke, burst, health and check use this local fleet:",
            f"fleetgate check {shlex.quote(str(fleet_file))}",
            f"Docs: {_docs()}.",
            "Ctrl-C stops everything.",
        ]
    )


def port_in_use(port: int) -> str:
    """One line for a gateway port another process holds, with what to do about it."""
    return (
        f"port {port} is already in use on this machine; give --port N for another "
        "(--port 0: any free port)"
    )


@app.command(rich_help_panel="Run")
def up(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    port: int | None = typer.Option(
        None, min=0, max=65535, help="gateway port (default: the fleet file's; 0: a free one)"
    ),
    backend: BackendKind = typer.Option(BackendKind.sim, help="sim, or real vllm processes"),
    speed: float = typer.Option(1.0, min=0.01, help="simulated GPU speed factor"),
) -> None:
    """Bring the whole fleet up on this machine, until Ctrl-C or SIGTERM.

    One backend per deployment on a free loopback port (the simulator with the deployment's
    settings, the planner's KV capacity and a GPU-like speed; or, with --backend vllm, a real
    vLLM process for deployments that give model_path), and the gateway in front of them.
    On-demand deployments are simulators the gateway's control layer starts, stops, puts to
    sleep and wakes as requests need them, with start-up and wake delays like a real vLLM's
    (30 s and 2 s, divided by --speed): try the swapping before deploying it.
    An API key whose ${VAR} is unset gets a random key for the session, printed at start.
    While it runs, smoke, burst, health and check given the same fleet file use this fleet
    (a private file in the per-user runtime directory says where it is).
    """
    loaded = load_or_exit(fleet, strict_env=False)
    if (already := find_running(fleet)) is not None:
        err_console.print(
            f"[red]error:[/] fleetgate up is already running {fleet} at {already.url} (pid "
            f"{already.pid}); use that one, or stop it first",
            highlight=False,
        )
        raise typer.Exit(1)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with local_fleet(
            loaded.fleet, gateway_port=port, backend=backend.value, speed=speed
        ) as running:
            with recorded(fleet, running):
                announce(running)
                console.print(
                    next_steps(running, fleet), soft_wrap=True, markup=False, highlight=False
                )
                await stop.wait()
                console.print("stopping ...")

    gateway_port = require_gateway(loaded.fleet).port if port is None else port
    with exit_on_failure(fleet):
        try:
            asyncio.run(main())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or gateway_port == 0:
                raise
            err_console.print(f"[red]error:[/] {port_in_use(gateway_port)}", highlight=False)
            raise typer.Exit(1) from None
