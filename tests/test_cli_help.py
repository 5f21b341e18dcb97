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


def test_the_smoke_table_keeps_names_whole_at_80_columns(monkeypatch, capsys) -> None:
    """A route name longer than its share of 80 columns is printed whole, never cut mid-word."""
    from rich.console import Console

    from fleetgate.cli import probes as probes_module
    from fleetgate.probes import SmokeReport
    from fleetgate.probes.smoke import SmokeCheck

    monkeypatch.setattr(
        probes_module, "console", Console(width=80, force_terminal=True, color_system=None)
    )
    report = SmokeReport("http://127.0.0.1:4000")
    for name in ("llama31-8b-wintermute-burst", "qwen2.5-7b-armitage"):
        report.checks.append(
            SmokeCheck(name, "exact input", True, "200 for 14000 in + 1024 out", "200, 1024 out")
        )
        report.checks.append(
            SmokeCheck(name, "input + 1", True, "4xx saying context length", "400 " + "x" * 60)
        )
    probes_module.print_smoke(report)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in ("llama31-8b-wintermute-burst", "qwen2.5-7b-armitage", "exact input"):
        assert name in out, out


def test_top_level_help_groups_commands_by_purpose() -> None:
    out = _help()
    assert max(len(line) for line in out.splitlines()) <= 80, out
    headings = [
        line.rstrip(":") for line in out.splitlines() if line in {"Plan:", "Ship:", "Run:", "Test:"}
    ]
    assert headings == ["Plan", "Ship", "Run", "Test"], out
    plan_part = out.split("Plan:")[1].split("Ship:")[0]
    assert "validate" in plan_part and "plan" in plan_part and "deploy" not in plan_part
