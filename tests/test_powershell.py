"""PowerShell without PowerShell: the tree-sitter check catches broken scripts, and deploy's
host.ps1 parses exactly as WindowsOps sends it (its prelude of quoted arguments included).

The rendered Start-VLLM.ps1 files are parsed in test_render.py.
"""

from __future__ import annotations

import base64
import re

import pytest
from tests.support.powershell import parse_errors

from fleetgate.deploy import Transport, host_ops
from fleetgate.deploy.transport import Result

AWKWARD = 'it\'s "q" $(Remove-Item C:/) `n @(1) ${x} ; exit #'


class RecordingTransport(Transport):
    """Keeps each command line instead of running it, and answers success with no output."""

    name = "ssh recording"

    def __init__(self) -> None:
        self.commands: list[str] = []

    def exec(self, command: str, *, stdin: bytes | None = None, timeout: float = 120) -> Result:
        self.commands.append(command)
        return Result(0, b"", b"")


def sent_script(command: str) -> str:
    """The PowerShell text inside ``powershell ... -EncodedCommand BASE64``."""
    match = re.fullmatch(r"powershell .*-EncodedCommand (\S+)", command)
    assert match, command
    return base64.b64decode(match.group(1)).decode("utf-16-le")


@pytest.mark.parametrize(
    "source",
    [
        'Write-Output "unterminated',
        "$a = 'unterminated",
        "function Start-Vllm {\n    docker run $Image\n",
        "$x = (1 + )",
        "if ($x -eq 1 { Write-Output 'yes' }",
        "$VllmArgs = @(\n    '--port', '8000',\n",
        "}",
    ],
)
def test_a_broken_script_is_caught(source: str) -> None:
    problems = parse_errors(source)
    assert problems, f"parsed cleanly: {source!r}"
    assert all(re.match(r"\d+:\d+: (missing|cannot parse) ", p) for p in problems), problems


def test_a_clean_script_has_no_problems() -> None:
    assert parse_errors("$a = 'it''s'\nif ($a) { Write-Output \"$a ok\" }\n") == []


def test_a_script_without_statements_is_reported() -> None:
    """A limit of the grammar, pinned so a grammar update that lifts it is noticed."""
    assert parse_errors("# only a comment\n") != []


def test_problems_say_where() -> None:
    assert parse_errors("Write-Output 'fine'\n$x = (1 + )\n") == [
        "2:10: missing decimal_integer_literal"
    ]


@pytest.mark.parametrize("workdir", ["C:/fleetgate", "~/fleetgate", f"C:/{AWKWARD}"])
def test_host_ps1_parses_as_sent(workdir: str) -> None:
    transport = RecordingTransport()
    ops = host_ops(transport, "windows", workdir)
    ops.state()
    ops.upload("2026-12-01T20-00-00", {"a.txt": b"x"})
    ops.activate("2026-12-01T20-00-00")
    ops.mark_failed("2026-12-01T20-00-00", f"health gate: {AWKWARD}")
    ops.unit("2026-12-01T20-00-00", "Start-VLLM.ps1", "logs", "-Lines", AWKWARD)
    kv = {"tiny": {"planned_tokens": 1000, "reported_tokens": 900}}
    ops.write_meta("2026-12-01T20-00-00", {"kv_cache": kv, "fleet_file": AWKWARD})
    scripts = [sent_script(c) for c in transport.commands]  # every command is PowerShell's
    assert len(scripts) == 6  # state, unpack, activate, mark-failed, unit, write-meta
    for script in scripts:
        assert parse_errors(script) == [], script.splitlines()[:3]
    quoted = "'" + workdir.replace("'", "''") + "'"
    assert all(f"$Workdir = {quoted}\n" in script for script in scripts)
