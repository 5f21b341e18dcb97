"""``fleetgate deploy``, ``rollback``, ``releases``, ``backup`` and ``health``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from rich.live import Live
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit, running_here
from fleetgate.deploy import (
    GateTarget,
    HostDeployer,
    HostReport,
    HostState,
    host_ops,
    probe,
    transport_for,
)
from fleetgate.errors import FleetgateError
from fleetgate.kvcache import Drift
from fleetgate.plan import planned_kv_tokens
from fleetgate.render import RenderError, Source, host_manifest, render_host, source_of

SSH_CONFIG = typer.Option(None, "--ssh-config", help="an ssh_config file for ssh -F")
BACKUPS = typer.Option(
    None, "--backups", help="local backup directory; default: FLEET's dir/backups"
)


def _source(fleet: Path, *, fit: bool = False) -> Source:
    """The fleet to render from; ``fit``: refused on any error ``fleetgate validate`` reports."""
    try:
        source = source_of(load_or_exit(fleet, strict_env=False, fit=fit))
    except RenderError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    return source


def _hosts(source: Source, names: list[str]) -> list[str]:
    fleet = source.fleet
    used = {d.host for d in fleet.deployments.values()}
    if fleet.gateway is not None:
        used.add(fleet.gateway.host)
    unknown = [n for n in names if n not in fleet.hosts]
    if unknown:
        err_console.print(f"[red]error:[/] no host named {', '.join(unknown)}")
        raise typer.Exit(2)
    return names or [h for h in fleet.hosts if h in used]


def _deployer(
    source: Source,
    host: str,
    *,
    backups: Path | None,
    fleet_path: Path,
    ssh_config: Path | None,
    gate_timeout: float = 900,
    step: Callable[[str], None] | None = None,
    planned: dict[str, int] | None = None,
) -> HostDeployer:
    h = source.fleet.hosts[host]
    workdir = host_manifest(source, host).workdir
    ops = host_ops(transport_for(h, ssh_config=ssh_config), h.os, workdir)
    return HostDeployer(
        host,
        ops,
        backups=backups or fleet_path.resolve().parent / "backups",
        gate_timeout_s=gate_timeout,
        step=step,
        planned_kv_tokens=planned,
    )


def _in_parallel(
    hosts: list[str], work: Callable[[str, Callable[[str], None]], HostReport]
) -> list[HostReport]:
    """Run ``work`` for every host at once, with a live line per host."""
    status = dict.fromkeys(hosts, "waiting")
    lock = threading.Lock()

    def table() -> Table:
        grid = Table(show_header=False, box=None)
        for host, text in status.items():
            grid.add_row(f"[bold]{host}[/]", text)
        return grid

    with Live(table(), console=console, refresh_per_second=4, transient=True) as live:

        def run(host: str) -> HostReport:
            def step(text: str) -> None:
                with lock:
                    status[host] = text
                    live.update(table())

            try:
                return work(host, step)
            except Exception as exc:  # one host's bug must not hide the others' results
                return HostReport(host, ok=False, action="failed", messages=[repr(exc)])

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            return list(pool.map(run, hosts))


def _print_report(report: HostReport, *, show_diff: bool) -> None:
    colour = "green" if report.ok else "red"
    line = f"[{colour}]{report.host}: {report.action or ('ok' if report.ok else 'failed')}[/]"
    if report.release:
        line += f" release {report.release}"
    if report.previous and report.previous != report.release:
        line += f" (was {report.previous})"
    console.print(line, highlight=False)
    if show_diff and report.diff:
        console.print(Syntax(report.diff, "diff", theme="ansi_dark", background_color="default"))
    elif report.diff:
        changed = sum(1 for ln in report.diff.splitlines() if ln.startswith("+++ "))
        console.print(f"  {changed} file(s) changed")
    if report.backup:
        console.print(f"  backup: {report.backup}", highlight=False)
    for message in report.messages:
        console.print(f"  {message}", highlight=False, markup=False, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if report.log_tail:
        console.print(report.log_tail.rstrip(), highlight=False, markup=False, soft_wrap=True)


def _run_and_report(
    hosts: list[str],
    work: Callable[[str, Callable[[str], None]], HostReport],
    *,
    show_diff: bool = False,
) -> None:
    """Run ``work`` on the hosts, print each host's report; exit 1 if any host failed."""
    reports = _in_parallel(hosts, work)
    for report in reports:
        _print_report(report, show_diff=show_diff)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@app.command(rich_help_panel="Ship")
def deploy(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    hosts: list[str] = typer.Argument(None, help="only these hosts (default: all in use)"),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="show the diff (an unreachable host: what would be installed), change nothing",
    ),
    gate_timeout: float = typer.Option(900, help="seconds a unit has to pass its health gate"),
    backups: Path | None = BACKUPS,
    ssh_config: Path | None = SSH_CONFIG,
) -> None:
    """Render, diff, back up, install, restart, health-gate; roll back by itself on failure.

    Hosts deploy in parallel; one failing does not stop the others. Exit 1 if any host failed
    (a host that rolled back counts as failed: the new settings are not in service). A fleet
    that `fleetgate validate` rejects is not deployed.
    """
    source = _source(fleet, fit=True)
    names = _hosts(source, hosts or [])
    # what the plan says each server's KV cache holds, kept beside what vLLM reports
    planned = {} if dry_run else planned_kv_tokens(source.fleet)

    def work(host: str, step: Callable[[str], None]) -> HostReport:
        deployer = _deployer(
            source,
            host,
            backups=backups,
            fleet_path=fleet,
            ssh_config=ssh_config,
            gate_timeout=gate_timeout,
            step=step,
            planned=planned,
        )
        # release.json (left out of the diff) records where this deploy read the fleet from
        return deployer.deploy(
            render_host(source, host), fleet_file=str(fleet.resolve()), dry_run=dry_run
        )

    _run_and_report(names, work, show_diff=dry_run)


@app.command(rich_help_panel="Ship")
def rollback(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    host: str = typer.Argument(..., help="the host to roll back"),
    to: str | None = typer.Option(None, "--to", help="release name (default: the previous one)"),
    gate_timeout: float = typer.Option(900, help="seconds a unit has to pass its health gate"),
    ssh_config: Path | None = SSH_CONFIG,
) -> None:
    """Put an earlier release back in service, health gate included."""
    source = _source(fleet)
    _hosts(source, [host])

    def work(host: str, step: Callable[[str], None]) -> HostReport:
        deployer = _deployer(
            source,
            host,
            backups=None,
            fleet_path=fleet,
            ssh_config=ssh_config,
            gate_timeout=gate_timeout,
            step=step,
        )
        return deployer.rollback(to)

    _run_and_report([host], work)


@app.command(rich_help_panel="Ship")
def releases(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    host: str = typer.Argument(..., help="the host"),
    ssh_config: Path | None = SSH_CONFIG,
) -> None:
    """List a host's releases, which one is current, and each server's KV cache: planned
    against what vLLM reported when the release was deployed (over 10% off is a warning)."""
    source = _source(fleet)
    _hosts(source, [host])
    state = host_states(source, [host], fleet_path=fleet, ssh_config=ssh_config)[host]
    if isinstance(state, FleetgateError):
        err_console.print(f"[red]error:[/] {state}")
        raise typer.Exit(1)
    table = Table()
    for column in ("", "release", "status", "created", "settings", "previous"):
        # a release name is what --to takes: whole, never cut
        table.add_column(column, no_wrap=column == "release")
    table.add_column("KV tokens")
    for r in reversed(state.releases):
        table.add_row(
            "→" if r.name == state.current else "",
            r.name,
            "[red]failed[/]" if r.failed else "ok",
            str(r.meta.get("created", "")),
            str(r.meta.get("settings_sha256", "")),
            str(r.meta.get("previous") or ""),
            "\n".join(_kv_cell(name, d) for name, d in r.kv_cache.items()),
        )
    console.print(table)
    console.print(f"current: {state.current or 'none'}", highlight=False)
    current = state.release(state.current) if state.current else None
    for name, d in (current.kv_cache if current else {}).items():
        if d.warning:
            console.print(f"[yellow]warning:[/] {name}: {escape(d.warning)}", highlight=False)


def _kv_cell(name: str, d: Drift) -> str:
    """One server's planned / reported KV tokens, short enough for a table cell."""
    planned = "?" if d.planned_tokens is None else f"{d.planned_tokens:,}"
    reported = "?" if d.reported_tokens is None else f"{d.reported_tokens:,}"
    off = "" if d.relative is None else f" ({d.relative:+.0%})"
    text = f"{name}: {planned} planned, {reported} reported{off}"
    return f"[yellow]{escape(text)}[/]" if d.warning else escape(text)


def host_states(
    source: Source, hosts: list[str], *, fleet_path: Path, ssh_config: Path | None
) -> dict[str, HostState | FleetgateError]:
    """Each host's releases, read at once; a host that cannot be read gives its error."""

    def read(host: str) -> HostState | FleetgateError:
        deployer = _deployer(
            source, host, backups=None, fleet_path=fleet_path, ssh_config=ssh_config
        )
        try:
            return deployer.releases()
        except FleetgateError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        return dict(zip(hosts, pool.map(read, hosts), strict=True))


@app.command(rich_help_panel="Ship")
def backup(
    fleet: Path = typer.Argument(..., help="the fleet file"),
    hosts: list[str] = typer.Argument(None, help="only these hosts (default: all in use)"),
    backups: Path | None = BACKUPS,
    ssh_config: Path | None = SSH_CONFIG,
) -> None:
    """Copy the release each host runs now to backups/<host>/<timestamp>/ (no deploy)."""
    source = _source(fleet)
    names = _hosts(source, hosts or [])

    def work(host: str, step: Callable[[str], None]) -> HostReport:
        deployer = _deployer(
            source, host, backups=backups, fleet_path=fleet, ssh_config=ssh_config, step=step
        )
        return deployer.backup()

    _run_and_report(names, work)


@app.command(rich_help_panel="Ship")
def health(fleet: Path = typer.Argument(..., help="the fleet file")) -> None:
    """Probe every vLLM server and the gateway once, as the deploy health gate does.

    When `fleetgate up` runs this fleet file here, its local backends and gateway are probed.
    """
    source = _source(fleet)
    if (local := running_here(fleet, elsewhere=None)) is not None:
        source = dataclasses.replace(source, fleet=local.localized(source.fleet))
    targets = [
        GateTarget.from_unit(unit)
        for host in _hosts(source, [])
        for unit in host_manifest(source, host).units
    ]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = list(pool.map(probe, targets))
    table = Table()
    table.add_column("unit", no_wrap=True)
    table.add_column("url", no_wrap=True)
    table.add_column("health")
    for target, result in zip(targets, results, strict=True):
        colour = "green" if result.ok else "red"
        table.add_row(target.name, target.url, f"[{colour}]{result.detail}[/]")
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
