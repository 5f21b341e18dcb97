"""``fleetgate smoke`` and ``fleetgate burst``: probes against a running gateway (or vLLM)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit, running_here
from fleetgate.errors import FleetgateError
from fleetgate.probes import (
    BurstConfig,
    BurstReport,
    SmokeReport,
    Target,
    confirm_served,
    run_burst,
    run_smoke,
    target_from_fleet,
    target_from_url,
)
from fleetgate.probes.html import LATENCY_ROWS, burst_html

TARGET_HELP = "the gateway's URL (http://host:port), or a fleet file (aims at its gateway)"
KEY_HELP = "API key (default: $FLEETGATE_API_KEY, else the fleet file's first key)"


def resolve_target(where: str, api_key: str | None, url: str | None = None) -> Target:
    """A URL is asked for its models; a fleet file gives them with their limits (and its
    gateway is asked what it serves): the local fleet when ``fleetgate up`` runs that file
    here, else its real gateway. Nothing answering is one error line and exit 1."""
    loaded = (
        None
        if where.startswith(("http://", "https://"))
        else load_or_exit(Path(where), strict_env=False)
    )
    try:
        if loaded is None:
            return asyncio.run(target_from_url(where, api_key))
        fleet = loaded.fleet
        if url is None and (local := running_here(Path(where))) is not None:
            fleet, url, api_key = local.localized(fleet), local.url, api_key or local.api_key
        target = target_from_fleet(fleet, url=url, api_key=api_key)
        return asyncio.run(confirm_served(target))
    except FleetgateError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


def exit_on_unknown(target: Target, names: list[str]) -> None:
    """A model the target does not serve is the user's mistake: say which ones it does."""
    unknown = target.unknown(names)
    if unknown:
        served = ", ".join(target.served or [m.name for m in target.models]) or "none"
        err_console.print(
            f"[red]error:[/] unknown model {', '.join(map(repr, unknown))}; "
            f"{target.url} serves: {served}",
            highlight=False,
        )
        raise typer.Exit(1)


def writable_file(path: Path | None) -> Path | None:
    """Refuse an output file that cannot be written before a long run, not after it."""
    if path is None:
        return None
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory")
    if not parent.is_dir():
        raise typer.BadParameter(f"{parent} is not a directory")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise typer.BadParameter(f"{path} cannot be written (permission denied)")
    return path


def print_smoke(report: SmokeReport) -> None:
    table = Table(title=f"context smoke test: {report.url}")
    for col in ("model", "check", "result", "expected", "got"):
        # names stay whole at 80 columns; the free text wraps between words
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "check", "result"))
    for c in report.checks:
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]skip[/]"}[c.ok]
        table.add_row(c.model, c.check, mark, c.expected, c.got)
    console.print(table)
    verdict = "[green]all checks passed[/]" if report.ok else "[red]some checks failed[/]"
    console.print(verdict)


@app.command(rich_help_panel="Test")
def smoke(
    target: str = typer.Argument(..., help=TARGET_HELP),
    api_key: str | None = typer.Option(None, envvar="FLEETGATE_API_KEY", help=KEY_HELP),
    url: str | None = typer.Option(None, help="with a fleet file: the gateway's URL instead"),
    model: list[str] = typer.Option([], help="only these models (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Context smoke test per model: exactly the input limit passes, one token more is refused.

    For each route and profile: a prompt of exactly max_input_tokens (counted by the backend's
    own tokenizer) with max_output_tokens gets a 200; one token more gets a 4xx that says
    context length; max_tokens over the limit gets a 4xx; the backend's max_model_len is the
    planned one. Exit 1 on any failure.
    """
    tgt = resolve_target(target, api_key, url)
    exit_on_unknown(tgt, model)
    report = asyncio.run(run_smoke(tgt, model or None))
    if not report.checks:
        err_console.print(
            f"[red]error:[/] nothing to test among {', '.join(model)}: an alias (or a name "
            "with the same limits as a listed one) is tested through the model it names"
        )
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_smoke(report)
    if not report.ok:
        raise typer.Exit(1)


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give N or MIN-MAX") from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise typer.BadParameter(f"{text!r}: give N or MIN-MAX with MIN <= MAX")
    return pair


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def print_burst(report: BurstReport) -> None:
    s = report.summary()
    table = Table(title=f"burst: {report.config.model} at {report.url}")
    table.add_column("metric")
    for q in ("p50", "p90", "p95", "p99", "max"):
        table.add_column(q, justify="right")
    for name, key in LATENCY_ROWS:
        row = s[key]
        table.add_row(name, *(_ms(row[q]) for q in ("p50", "p90", "p95", "p99", "max")))
    console.print(table)
    console.print(
        f"{s['requests']} requests in {s['wall_s']:.1f} s: {s['succeeded']} ok, "
        f"{s['failed']} failed; {s['requests_per_s']:.2f} req/s, "
        f"{s['output_tokens_per_s']:.1f} output tokens/s; {s['responses_429']} answers 429 "
        f"({s['retried_requests']} requests retried)"
    )
    console.print(f"final status: {s['by_status']}")
    if s["failures_by_reason"]:
        console.print(f"[red]failures by reason:[/] {s['failures_by_reason']}")


@app.command(rich_help_panel="Test")
def burst(
    target: str = typer.Argument(..., help=TARGET_HELP),
    api_key: str | None = typer.Option(None, envvar="FLEETGATE_API_KEY", help=KEY_HELP),
    url: str | None = typer.Option(None, help="with a fleet file: the gateway's URL instead"),
    model: str | None = typer.Option(None, help="the model to load (default: the first route)"),
    concurrency: int | None = typer.Option(None, min=1, help="clients, each one at a time"),
    rate: float | None = typer.Option(None, min=0.001, help="requests per second instead"),
    requests: int = typer.Option(100, min=1, help="stop after this many requests"),
    duration: float = typer.Option(60.0, min=0.1, help="start no request after this many s"),
    stream: bool = typer.Option(False, help="stream answers (measures TTFT, inter-token)"),
    prompt_tokens: str = typer.Option("128", help="prompt length in tokens: N or MIN-MAX"),
    max_tokens: str = typer.Option("64", help="max_tokens per request: N or MIN-MAX"),
    timeout: float = typer.Option(300.0, min=1, help="give up on one attempt after this many s"),
    no_retry: bool = typer.Option(False, "--no-retry", help="do not retry a 429"),
    max_errors: int | None = typer.Option(None, min=0, help="exit 1 with more failed requests"),
    json_file: Path | None = typer.Option(
        None, "--json", callback=writable_file, help="write the raw numbers here"
    ),
    html_file: Path | None = typer.Option(
        None, "--html", callback=writable_file, help="write an HTML report here"
    ),
    seed: int = typer.Option(0, help="random seed for lengths and arrivals"),
) -> None:
    """Load test: many clients at once; latency percentiles, throughput, refusals by reason.

    Closed loop with --concurrency C (default 10), or open loop with --rate R requests/s.
    Bounded by --requests and --duration. A 429 is retried after its Retry-After and counts
    as a failure only if the request never succeeds. --max-errors E makes it a gate.
    """
    if concurrency is not None and rate is not None:
        err_console.print("[red]error:[/] give --concurrency or --rate, not both")
        raise typer.Exit(2)
    tgt = resolve_target(target, api_key, url)
    exit_on_unknown(tgt, [model] if model else [])
    name = model or next((m.name for m in tgt.models if m.kind == "route"), None)
    if name is None:
        err_console.print(f"[red]error:[/] {tgt.url} lists no model; give --model")
        raise typer.Exit(1)
    config = BurstConfig(
        model=name,
        concurrency=concurrency,
        rate=rate,
        requests=requests,
        duration_s=duration,
        stream=stream,
        prompt_tokens=_range(prompt_tokens),
        max_tokens=_range(max_tokens),
        timeout_s=timeout,
        retry=not no_retry,
        seed=seed,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"burst {name}", total=requests, failed=0)
        failed = 0

        def done(result: object) -> None:
            nonlocal failed
            failed += not getattr(result, "ok", False)
            progress.update(task, advance=1, failed=failed)

        report = asyncio.run(run_burst(tgt.url, config, tgt.api_key, on_done=done))
    print_burst(report)
    try:
        if json_file is not None:
            json_file.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
            console.print(f"raw numbers: {json_file}")
        if html_file is not None:
            html_file.write_text(burst_html(report), encoding="utf-8")
            console.print(f"report: {html_file}")
    except OSError as exc:  # checked up front; this is a disk that filled up meanwhile
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if max_errors is not None and report.failed > max_errors:
        console.print(
            f"[red]{report.failed} failed requests, more than --max-errors {max_errors}[/]"
        )
        raise typer.Exit(1)
