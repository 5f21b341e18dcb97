"""Helpers shared by the command modules: loading a fleet and reporting its problems."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from fleetgate.cli.app import err_console
from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import FleetError, LoadedFleet, Problem, load_fleet, require_valid
from fleetgate.local import UpRecord, find_running
from fleetgate.plan import fleet_problems


def print_problems(problems: list[Problem], file: str | None) -> None:
    for p in problems:
        style = "red" if p.level == "error" else "yellow"
        err_console.print(f"[{style}]{p.level}[/]: {p.format(file)}", highlight=False)


def load_or_exit(
    path: Path, *, strict_env: bool = True, check: bool = True, fit: bool = False
) -> LoadedFleet:
    """Load a fleet file or print every problem and exit 1.

    With ``check``, cross-check errors (``check_fleet``) are fatal too; with ``fit``, every
    error ``fleetgate validate`` reports (``fleet_problems``: the memory fit too), for the
    commands that turn the fleet into files and processes. Warnings are left to ``validate``.
    """
    try:
        loaded = load_fleet(path, strict_env=strict_env)
        if check:
            require_valid(loaded.fleet, str(path))
    except FleetError as exc:
        print_problems(exc.problems, exc.file)
        raise typer.Exit(1) from None
    if fit:
        errors = [p for p in fleet_problems(loaded.fleet) if p.level == "error"]
        if errors:
            print_problems(errors, str(path))
            raise typer.Exit(1)
    return loaded


@contextmanager
def exit_on_failure(fleet: Path) -> Iterator[None]:
    """Print a fleet problem or a failed start as one message and exit 1, not as a traceback.

    Only fleetgate's own errors (and the OS's: a port taken, a file unreadable) are caught; any
    other exception is a bug and keeps its traceback.
    """
    try:
        yield
    except FleetError as exc:
        print_problems(exc.problems, exc.file or str(fleet))
        raise typer.Exit(1) from None
    except (FleetgateError, OSError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def running_here(fleet: Path, *, elsewhere: str | None = "--url URL") -> UpRecord | None:
    """The ``fleetgate up`` running this fleet file on this machine, if any, said out loud:
    the command then aims at it instead of the file's real hosts."""
    record = find_running(fleet)
    if record is not None:
        hint = f"; {elsewhere} to aim elsewhere" if elsewhere else ""
        err_console.print(
            f"fleetgate up is running {fleet} here at {record.url} (pid {record.pid}): "
            f"using that local fleet{hint}",
            highlight=False,
        )
    return record
