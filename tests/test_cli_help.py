"""Help that fits: every command's ``--help`` at 80 columns keeps option names whole, and
``fleetgate --version`` answers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from fleetgate import __version__
from fleetgate.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_and_cuts_no_option(command: str) -> None:
    out = _help(command)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    for param in params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("--"):
                assert name in out, f"{command} --help cuts {name}"
    help_line = next(line for line in out.splitlines() if line.strip().startswith("--help"))
    assert "<bool>" not in help_line


def test_plan_help_at_80_columns_as_a_user_runs_it() -> None:
    """The report's own reproduction: ``COLUMNS=80 fleetgate plan --help`` in a real process."""
    code = "import sys; from fleetgate.cli import main; sys.argv[0] = 'fleetgate'; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, "plan", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        check=True,
    ).stdout
    for name in ("--gpu-memory-utilization", "--tensor-parallel-size", "--max-num-batched-tokens"):
        assert name in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fleetgate {__version__}"
    assert "--version" in _help()
