"""``fleetgate keys create|list|revoke|rotate`` and ``fleetgate usage``: straight on the key
store of the fleet's gateway (``gateway.store``, else the one ``fleetgate serve`` uses by
default); a running gateway picks the changes up within a second."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from fleetgate.cli.app import app, console, err_console
from fleetgate.cli.common import load_or_exit
from fleetgate.fleetfile import Budgets, KeySpec, require_gateway, with_key_store
from fleetgate.gateway.keystore import KeyStore, KeyStoreError

keys_app = typer.Typer(
    help="Client keys made at run time, kept (as digests) in the gateway's key store "
    "(gateway.store, default ~/.local/state/fleetgate/FLEET-keys.db).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys", rich_help_panel="Run")

FLEET = typer.Option(
    Path("fleet.yaml"), "--fleet", "-f", help="the fleet file whose gateway.store to use"
)


@contextmanager
def _store(fleet: Path, new_name: str | None = None) -> Iterator[KeyStore]:
    loaded = with_key_store(load_or_exit(fleet, strict_env=True, check=False).fleet)
    gw = require_gateway(loaded, str(fleet))
    if new_name is not None and new_name in {k.name for k in gw.api_keys}:
        err_console.print(f"[red]error:[/] a key named {new_name!r} is in the fleet file already")
        raise typer.Exit(1)
    assert gw.store is not None
    try:
        store = KeyStore(gw.store, zone=gw.timezone)
        try:
            yield store
        finally:
            store.close()
    except KeyStoreError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="the key's name (shown in logs and usage)"),
    routes: str = typer.Option("*", help="comma-separated public model names it may use"),
    priority: str = typer.Option(
        "interactive", help="interactive, batch, or 0-100 (higher is served first)"
    ),
    max_concurrency: int | None = typer.Option(None, min=1, help="its requests in flight"),
    tokens_per_day: int | None = typer.Option(None, min=1),
    tokens_per_week: int | None = typer.Option(None, min=1),
    tokens_per_month: int | None = typer.Option(None, min=1),
    requests_per_day: int | None = typer.Option(None, min=1),
    requests_per_week: int | None = typer.Option(None, min=1),
    requests_per_month: int | None = typer.Option(None, min=1),
    fleet: Path = FLEET,
) -> None:
    """Make a key and print it once: the store keeps only its digest."""
    try:
        spec = KeySpec(
            name=name,
            routes=[r.strip() for r in routes.split(",") if r.strip()],
            priority=int(priority) if priority.isdigit() else priority,  # type: ignore[arg-type]
            max_concurrency=max_concurrency,
            budgets=Budgets(
                tokens_per_day=tokens_per_day,
                tokens_per_week=tokens_per_week,
                tokens_per_month=tokens_per_month,
                requests_per_day=requests_per_day,
                requests_per_week=requests_per_week,
                requests_per_month=requests_per_month,
            ),
        )
    except ValidationError as exc:
        for e in exc.errors():
            err_console.print(f"[red]error:[/] {'.'.join(map(str, e['loc']))}: {e['msg']}")
        raise typer.Exit(1) from None
    with _store(fleet, new_name=name) as store:
        key = store.create(spec)
    err_console.print(f"created key {name!r}; it is shown only this once:")
    print(key)


@keys_app.command("list")
def list_keys(fleet: Path = FLEET, as_json: bool = typer.Option(False, "--json")) -> None:
    """The store's keys (never the keys themselves): routes, priority, budgets."""
    with _store(fleet) as store:
        keys = store.list_keys()
    rows: list[dict[str, Any]] = [
        {
            "name": k.name,
            "routes": list(k.routes),
            "priority": k.priority,
            "max_concurrency": k.max_concurrency,
            "budgets": k.budgets.model_dump(exclude_none=True),
            "keys_valid": len(k.digests),
        }
        for k in keys
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        budgets = ", ".join(f"{k}={v}" for k, v in r["budgets"].items()) or "no budget"
        console.print(
            f"{r['name']}  routes={','.join(r['routes'])}  priority={r['priority']}  "
            f"max_concurrency={r['max_concurrency'] or '-'}  {budgets}",
            highlight=False,
        )


@keys_app.command("revoke")
def revoke(name: str = typer.Argument(...), fleet: Path = FLEET) -> None:
    """Remove a key now (its usage stays in the report)."""
    with _store(fleet) as store:
        store.revoke(name)
    err_console.print(f"revoked key {name!r}")


@keys_app.command("rotate")
def rotate(
    name: str = typer.Argument(...),
    grace: float = typer.Option(3600.0, min=0, help="seconds the old key keeps working"),
    fleet: Path = FLEET,
) -> None:
    """Print a new key for NAME; the old one keeps working for --grace seconds."""
    with _store(fleet) as store:
        key = store.rotate(name, grace)
    err_console.print(f"rotated key {name!r}; the old one works for {grace:g} s more:")
    print(key)


@app.command(rich_help_panel="Run")
def usage(
    key: str | None = typer.Option(None, help="only this key"),
    period: str = typer.Option("day", help="day, week or month (the current one)"),
    as_json: bool = typer.Option(False, "--json"),
    fleet: Path = FLEET,
) -> None:
    """Requests, prompt and completion tokens and refusals per key and route, from the store."""
    with _store(fleet) as store:
        rows = store.usage(period, key)
    if as_json:
        print(json.dumps({"period": period, "usage": [r.__dict__ for r in rows]}, indent=2))
        return
    if not rows:
        console.print(f"no usage this {period}")
    for r in rows:
        refused = ", ".join(f"{k}={v}" for k, v in sorted(r.refusals.items())) or "none"
        console.print(
            f"{r.key}  {r.route}  requests={r.requests}  prompt={r.prompt_tokens}  "
            f"completion={r.completion_tokens}  refused: {refused}",
            highlight=False,
        )
