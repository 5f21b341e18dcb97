"""The docs' commands work as written, their links resolve, and the homelab Makefile calls
fleetgate.

Every ``curl`` and ``openai`` snippet of README.md and docs/*.md runs, as written, against the
homelab fleet brought up locally (simulated backends, a gateway that can reload), and every
gateway endpoint and metric is documented in docs/gateway.md.

Every ``fleetgate`` line in a bash block of docs/*.md must parse (command, options and
arguments, checked by the CLI's own parser); the ones that run locally and quickly (plan,
validate, render) are run for real. Long-running or remote ones (up, serve, deploy, smoke, ...)
are parsed only: their behaviour has its own tests. Every relative link of README.md,
CHANGELOG.md and docs/*.md points at a file that exists (and a heading, when it names one), and
every ``fleetgate.x.y`` that docs/architecture.md names can be imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.fleetfile import load_fleet
from fleetgate.gateway import serve
from fleetgate.local import local_fleet, localize

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
        "gateway.md",
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
    for figure in ("72,192", "36,096", "25,376", "12,688"):
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


# -- the snippets, run against a local fleet --------------------------------------------------

HOMELAB = ROOT / "examples" / "homelab" / "fleet.yaml"
DOC_URL = "http://127.0.0.1:4000"
SNIPPET_DOCS = [ROOT / "README.md", *DOCS]
# what a snippet may be refused with: the docs show it on purpose (an over-limit request)
SHOWN_REFUSALS = {"max_tokens_exceeded"}


def curl_snippets() -> list[tuple[str, str]]:
    return [
        (doc.name, line)
        for doc in SNIPPET_DOCS
        for line in bash_lines(doc)
        if line.startswith("curl ")
    ]


def openai_snippets() -> list[tuple[str, str]]:
    return [
        (doc.name, block)
        for doc in SNIPPET_DOCS
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
        if "from openai import" in block
    ]


def test_the_docs_have_snippets_to_run() -> None:
    curls = curl_snippets()
    paths = {re.search(r"4000(/[\w/]+)", line).group(1) for _, line in curls}  # type: ignore[union-attr]
    assert {"/v1/models", "/v1/chat/completions", "/tokenize", "/metrics"} <= paths
    assert all(DOC_URL in line for _, line in curls)
    assert openai_snippets()


async def test_every_curl_and_openai_snippet_runs_against_a_local_fleet() -> None:
    """Each snippet as the docs write it, with the local gateway's address for port 4000 and the
    keys in the environment, as a reader in a second shell would have them."""
    pytest.importorskip("openai")
    env = {"FLEETGATE_API_KEY": "sk-docs-0123456789", "FLEETGATE_ADMIN_KEY": "sk-admin-0123456"}
    fleet = load_fleet(HOMELAB, env=env).fleet
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(local_fleet(fleet, gateway_port=0, speed=50))
        # a gateway with a fleet file to re-read, as `fleetgate serve` has, for /admin/reload
        gateway = await stack.enter_async_context(
            serve(running.fleet, loader=lambda: running.fleet)
        )
        shell_env = {**os.environ, **env}
        shell_env["PATH"] = f"{Path(sys.executable).parent}:{shell_env['PATH']}"

        def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, capture_output=True, text=True, env=shell_env, timeout=120)

        for doc, line in curl_snippets():
            command = line.replace(DOC_URL, gateway.url)
            done = await asyncio.to_thread(run, ["bash", "-c", command])
            assert done.returncode == 0, f"{doc}: {line}\n{done.stderr}"
            out = done.stdout
            if "/metrics" in line:
                assert "# HELP fleetgate_requests_total" in out, out[:500]
                continue
            body = json.loads(out)
            if "error" in body:
                assert body["error"]["code"] in SHOWN_REFUSALS, f"{doc}: {line}\n{out}"
            if "/admin/reload" in line:
                assert body.get("reloaded") is True, out
        for doc, block in openai_snippets():
            code = block.replace(DOC_URL, gateway.url)
            done = await asyncio.to_thread(run, [sys.executable, "-c", code])
            assert done.returncode == 0, f"{doc}:\n{block}\n{done.stderr}"
            assert done.stdout.strip(), f"{doc}: the snippet printed nothing"


async def test_every_gateway_endpoint_and_metric_is_documented() -> None:
    """Each route of the gateway's router (method and path) and each metric it exports is
    named in docs/gateway.md."""
    text = (ROOT / "docs" / "gateway.md").read_text()
    env = {"FLEETGATE_API_KEY": "sk-docs-0123456789"}
    # no backend is needed to list the routes and the metrics
    fleet = localize(load_fleet(HOMELAB, env=env).fleet, gateway_port=0).fleet
    async with serve(fleet) as gateway:
        endpoints = {
            (r.method, r.resource.canonical)
            for r in gateway.app.router.routes()
            if r.method != "*" and r.resource is not None and r.method != "HEAD"
        }
        metrics = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-s", f"{gateway.url}/metrics"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert len(endpoints) >= 8
    for method, path in sorted(endpoints):
        assert f"`{method} {path}`" in text, f"docs/gateway.md does not document {method} {path}"
    names = set(re.findall(r"^# HELP (\S+)", metrics.stdout, re.M))
    names = {n for n in names if not n.endswith("_created")}
    assert len(names) >= 10
    for name in sorted(names):
        assert f"`{name}`" in text, f"docs/gateway.md does not document the metric {name}"
