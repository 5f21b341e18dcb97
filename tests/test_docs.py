"""The docs' commands work as written, their links resolve, and the homelab Makefile calls
fleetgate.

Every ``fleetgate`` line in a bash block of docs/*.md must parse (command, options and
arguments, checked by the CLI's own parser); the ones that run locally and quickly (plan,
validate, render) are run for real. Long-running or remote ones (up, serve, deploy, smoke, ...)
are parsed only: their behaviour has its own tests. Every relative link of README.md,
CHANGELOG.md and docs/*.md points at a file that exists (and a heading, when it names one), and
every ``fleetgate.x.y`` that docs/architecture.md names can be imported.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fleetgate.cli import app

ROOT = Path(__file__).parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED = [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS]
RUN_FOR_REAL = {"plan", "validate", "render", "--help"}
MAKE_TARGETS = [
    "help", "validate", "plan", "backup-configs", "deploy-wintermute", "deploy-armitage",
    "deploy-proxy", "health-check", "test-context", "test-burst", "rollback-wintermute",
    "rollback-armitage", "rollback-proxy",
]  # fmt: skip


def bash_lines(path: Path) -> list[str]:
    """Each command of each ```bash block, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def doc_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """(doc name, fleetgate argv, environment exported before it in that doc)."""
    out = []
    for doc in DOCS:
        env: dict[str, str] = {}
        for line in bash_lines(doc):
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                env[name] = value
            elif line.startswith("fleetgate "):
                out.append((doc.name, shlex.split(line)[1:], dict(env)))
    return out


def parse(argv: list[str]) -> Any:
    """Parse a command line with the CLI's own parser, without running it (raises on errors)."""
    group: Any = typer.main.get_command(app)
    if argv == ["--help"]:
        return group.make_context("fleetgate", ["--help"], resilient_parsing=True)
    assert argv and argv[0] in group.commands, f"no command {argv[:1]}"
    return group.commands[argv[0]].make_context(argv[0], list(argv[1:]))


COMMANDS = doc_commands()


def test_the_docs_exist_and_have_commands() -> None:
    names = {d.name for d in DOCS}
    assert {
        "getting-started.md",
        "fleet-file.md",
        "troubleshooting.md",
        "deployment-checklist.md",
        "architecture.md",
    } <= names
    used = {argv[0] for _, argv, _ in COMMANDS}
    assert {"up", "check", "plan", "validate", "render", "deploy", "rollback", "smoke"} <= used


@pytest.mark.parametrize(
    ("doc", "argv", "env"), COMMANDS, ids=[f"{d}:{' '.join(a)[:60]}" for d, a, _ in COMMANDS]
)
def test_doc_command(doc: str, argv: list[str], env: dict[str, str], tmp_path: Path) -> None:
    parse(argv)
    if argv[0] not in RUN_FOR_REAL:
        return
    argv = list(argv)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / "out")
    result = CliRunner().invoke(app, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"{doc}: fleetgate {' '.join(argv)}\n{result.output}"
    if argv[0] == "render":
        assert any((tmp_path / "out").rglob("*.sh"))


def test_troubleshooting_numbers_match_the_planner() -> None:
    """The fp16 fallback figures quoted in troubleshooting.md are the planner's."""
    result = CliRunner().invoke(app, ["plan", str(ROOT / "examples/homelab/fleet.yaml")])
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    for figure in ("83,664", "41,824", "51,600", "25,792"):
        assert figure in text and figure in result.output, figure


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_makefile_target_calls_fleetgate(target: str) -> None:
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT / "examples" / "homelab"), target],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = [
        part.strip()
        for line in out.splitlines()
        for part in line.split("&&")
        if part.strip().startswith("fleetgate")
    ]
    assert commands, out
    for command in commands:
        parse(shlex.split(command)[1:])


def slug(heading: str) -> str:
    """A heading's anchor the way GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def relative_links(path: Path) -> list[str]:
    """The link targets of a Markdown file that are not URLs (code blocks left out)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", LINKED, ids=[d.relative_to(ROOT).as_posix() for d in LINKED])
def test_relative_links_resolve(doc: Path) -> None:
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        assert resolved.exists(), f"{doc.name}: link {target!r}: no {resolved}"
        if anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name}: no heading #{anchor}"


def test_the_link_checker_sees_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A Title, here\n[a](other.md) [b](https://x.org/y) [c](#a-title-here)\n"
        "```bash\necho [not](a-link.md)\n```\n"
    )
    assert relative_links(page) == ["other.md", "#a-title-here"]
    assert slug("A Title, here") == "a-title-here"
    assert "architecture.md" in " ".join(relative_links(ROOT / "README.md"))
    assert "DESIGN.md" not in (ROOT / "README.md").read_text()


def test_architecture_names_only_what_exists() -> None:
    """Every `fleetgate.x.y` the architecture page names imports (a module, or a name in one);
    a package the page marks as planned is exempt until it exists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    planned = set(re.findall(r"`(\w+)` \(planned\)", text))
    names = set(re.findall(r"`(fleetgate(?:\.\w+)+)`", text))
    assert len(names) >= 8
    for name in sorted(names):
        if name.split(".")[1] in planned:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attr = name.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), f"{name} does not exist"


def test_readme_lists_every_package() -> None:
    packages = {
        p.name for p in (ROOT / "src" / "fleetgate").iterdir() if (p / "__init__.py").is_file()
    }
    listed = set(re.findall(r"^\| `(\w+)` \|", (ROOT / "README.md").read_text(), re.M))
    assert listed == packages


def test_readme_tells_the_truth_about_install_and_test() -> None:
    """The install line makes its virtualenv; the test paragraph names every system package
    .ci/run installs, the sudo, the vLLM environment under ~/.cache, and the fast subset."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert install and "python3 -m venv .venv && . .venv/bin/activate" in install.group(1)
    apt = re.search(r"apt-get install -y -q \\\n\s*(.+?) >", ci)
    assert apt, "no apt-get install line in .ci/run"
    for package in apt.group(1).split():
        assert package in readme, f"README does not say .ci/run installs {package}"
    assert "SUDO=sudo" in ci and "sudo" in readme
    assert "$HOME/.cache/fleetgate/vllm-" in ci and "~/.cache/fleetgate/" in readme
    assert "bash .ci/run --no-vllm" in readme and '" --no-vllm "' in ci
    assert "pytest -q --no-vllm" in readme
