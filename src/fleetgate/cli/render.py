"""``fleetgate render``."""

from __future__ import annotations

from pathlib import Path

import typer

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit
from fleetgate.render import (
    RenderError,
    render_host,
    render_litellm,
    render_monitoring,
    source_of,
)


@app.command(rich_help_panel="Ship")
def render(
    fleet: Path = typer.Argument(..., help="the fleet file (fleet.yaml)"),
    out: Path = typer.Option(Path("rendered"), "--out", help="directory to write into"),
    host: list[str] = typer.Option([], "--host", help="only this host (repeatable)"),
) -> None:
    """Write every host's launch artifacts and the LiteLLM config export.

    OUT/<host>/ holds what deploy would install there; OUT/litellm.config.yaml the routes as a
    LiteLLM proxy config; OUT/monitoring/ a Prometheus scrape config for the gateway and every
    vLLM, and a Grafana dashboard over both. Same fleet file, byte-identical output; no secret
    is ever written.
    A fleet that `fleetgate validate` rejects is not rendered.
    """
    try:
        source = source_of(load_or_exit(fleet, strict_env=False, fit=True))
    except RenderError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    unknown = [h for h in host if h not in source.fleet.hosts]
    if unknown:
        err_console.print(f"[red]error:[/] no host named {', '.join(unknown)} in {fleet}")
        raise typer.Exit(2)
    written: dict[Path, str] = {}
    try:
        for name in host or list(source.fleet.hosts):
            for relative, text in render_host(source, name).items():
                written[out / name / relative] = text
        if source.fleet.gateway is not None and not host:
            written[out / "litellm.config.yaml"] = render_litellm(source)
        if not host:
            for relative, text in render_monitoring(source).items():
                written[out / relative] = text
    except RenderError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    for path, text in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        if path.suffix == ".sh":
            path.chmod(0o755)
    console.print(f"wrote {len(written)} files under {out}/")
