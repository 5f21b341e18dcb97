"""``fleetgate sim``: serve a simulated vLLM (one deployment of a fleet, or ad hoc)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit
from fleetgate.local.simconfig import sim_config_for
from fleetgate.sim import Faults, SimConfig, SimServer


@app.command(rich_help_panel="Run")
def sim(
    fleet: Path | None = typer.Argument(
        None, help="take the deployment's settings from this fleet"
    ),
    deployment: str | None = typer.Option(None, help="the deployment to simulate (with FLEET)"),
    model: str | None = typer.Option(None, help="served model name (without FLEET)"),
    max_model_len: int | None = typer.Option(
        None, min=16, help="context window (without FLEET; with it, overrides)"
    ),
    max_num_seqs: int | None = typer.Option(
        None, min=1, help="sequences run at once (without FLEET; with it, overrides)"
    ),
    kv_cache_tokens: int | None = typer.Option(
        None, min=16, help="KV cache size; default: room for max-num-seqs full-length sequences"
    ),
    prefill_tps: float | None = typer.Option(
        None, min=0.001, help="prompt tokens per second; default: GPU-like with FLEET, else 5000"
    ),
    decode_tps: float | None = typer.Option(
        None,
        min=0.001,
        help="tokens/s of one sequence running alone; default: GPU-like with FLEET, else 50",
    ),
    host: str = typer.Option("127.0.0.1", help="listen address"),
    port: int = typer.Option(8000, min=0, max=65535, help="listen port; 0 picks a free one"),
    seed: int = typer.Option(0, help="random seed for generated text and injected errors"),
    fault: str = typer.Option("ok", help="start with a fault: ok, crash, dead or stall"),
    error_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="share of requests failing 500"),
    slow_factor: float = typer.Option(1.0, min=0.001, help="prefill and decode this much slower"),
    startup_s: float = typer.Option(
        0.0, min=0.0, help="keep the port closed this long, as while vLLM loads the model"
    ),
    sleep_mode: bool = typer.Option(
        False, help="serve vLLM's POST /sleep, POST /wake_up and GET /is_sleeping"
    ),
    wake_s: float = typer.Option(0.0, min=0.0, help="how long POST /wake_up takes"),
) -> None:
    """Serve a vLLM-compatible simulator (vLLM 0.32's API, errors, streaming and /metrics).

    With FLEET --deployment NAME it takes the deployment's served name, max_model_len and
    max_num_seqs, the planner's KV cache size, and a GPU-like speed for that model class: decode
    speed = ~185 GiB/s of effective memory bandwidth (an RTX 3060-class GPU) over the planned
    weight size, prefill 100x that, batched sequences together up to 0.75 x max_num_seqs x that.
    Explicit options override. Faults can also be changed at run time: POST /admin/faults.
    """
    if fleet is not None:
        if deployment is None:
            err_console.print("[red]error:[/] give --deployment NAME with a FLEET file")
            raise typer.Exit(2)
        loaded = load_or_exit(fleet, strict_env=False)
        if deployment not in loaded.fleet.deployments:
            known = ", ".join(loaded.fleet.deployments)
            err_console.print(f"[red]error:[/] no deployment {deployment!r} (known: {known})")
            raise typer.Exit(2)
        base = sim_config_for(loaded.fleet, deployment, seed=seed)
    elif model is None or max_model_len is None or max_num_seqs is None:
        err_console.print(
            "[red]error:[/] give FLEET --deployment NAME, or --model, "
            "--max-model-len and --max-num-seqs"
        )
        raise typer.Exit(2)
    else:
        base = None
    try:
        config = SimConfig(
            model=model or base.model,  # type: ignore[union-attr]
            max_model_len=max_model_len or base.max_model_len,  # type: ignore[union-attr]
            max_num_seqs=max_num_seqs or base.max_num_seqs,  # type: ignore[union-attr]
            kv_cache_tokens=kv_cache_tokens or (base.kv_cache_tokens if base else None),
            prefill_tps=prefill_tps or (base.prefill_tps if base else 5000.0),
            decode_tps=decode_tps or (base.decode_tps if base else 50.0),
            batch_tps=None if decode_tps or base is None else base.batch_tps,
            seed=seed,
            faults=Faults(mode=fault, error_rate=error_rate, slow_factor=slow_factor),  # type: ignore[arg-type]
            startup_s=startup_s,
            sleep_mode=sleep_mode,
            wake_s=wake_s,
        )
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _serve(SimServer(config, host=host, port=port))


def _serve(server: SimServer) -> None:
    async def main() -> None:
        async with server:
            c = server.config
            console.print(
                f"sim [bold]{c.model}[/] on {server.url}: max_model_len {c.max_model_len}, "
                f"max_num_seqs {c.max_num_seqs}, KV {c.kv_blocks * 16} tokens, "
                f"prefill {c.prefill_tps:g} tok/s, decode {c.decode_tps:g} tok/s"
                + (f" (batch {c.batch_tps:g})" if c.batch_tps else ""),
                highlight=False,
            )
            await asyncio.Event().wait()

    run: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run(main())
    except OSError as exc:  # the port is taken, or the address is not this machine's
        err_console.print(
            f"[red]error:[/] cannot listen on {server.host}:{server.port}: {exc.strerror or exc}"
        )
        raise typer.Exit(1) from None
