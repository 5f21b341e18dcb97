"""Hostile values in every string field of a fleet: each is refused, or every rendered file still
parses in its own language and runs nothing it should not (property-based, with hypothesis).

A value the schema accepts is rendered for every host; then the bash scripts pass ``bash -n``
and shellcheck and their usage path (no argument) creates no file in a scratch directory, the
PowerShell scripts parse (tree-sitter, curly quotes read as PowerShell reads them), the systemd
units pass ``systemd-analyze verify`` with exactly the directives of the ordinary fleet, and the
YAML files load. A value with a control character must be refused by the schema.

The example counts are modest: CI runs this on two cores. FLEETGATE_HOSTILE_EXAMPLES=500 runs
the fleet property longer, locally.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.support.powershell import as_powershell_reads, parse_errors, verbatim_strings

from fleetgate.fleetfile import FleetError, parse_fleet
from fleetgate.render import RenderError, render_host, render_litellm, scripts, source_of
from fleetgate.render.quoting import bash, powershell

# ExecStart= executables must exist for systemd-analyze verify: this environment's fleetgate
FLEETGATE_BIN = Path(sys.executable).parent / "fleetgate"

BASE: dict[str, Any] = {
    "version": 1,
    "name": "hostile",
    "hosts": {
        "lin": {
            "address": "lin.lan",
            "os": "linux",
            "transport": "ssh",
            "ssh": {"user": "ops", "port": 22, "identity_file": "~/.ssh/id_ed25519"},
            "workdir": "/srv/fleetgate",
            "fleetgate_bin": str(FLEETGATE_BIN),
            "gpus": [{"name": "RTX 3090"}],
        },
        "win": {
            "address": "win.lan",
            "os": "windows",
            "ssh": {"user": "ops"},
            "workdir": "C:/fleetgate",
            "gpus": ["RTX 3090"],
        },
    },
    "deployments": {
        "dock": {
            "host": "lin",
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "model_path": "/srv/models/qwen",
            "served_model_name": "qwen",
            "max_model_len": 2048,
            "image": "vllm/vllm-openai:v0.32.0",
            "hf_cache": "~/.cache/huggingface",
            "extra_args": ["--seed", "1"],
            "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        },
        "proc": {
            "host": "lin",
            "port": 8001,
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "model_path": "/srv/models/qwen",
            "max_model_len": 2048,
            "runtime": "process",
            "python": "/usr/bin/true",
            "extra_args": ["--seed", "1"],
            "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        },
        "wdock": {
            "host": "win",
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "model_path": "D:/models/qwen",
            "max_model_len": 2048,
            "image": "vllm/vllm-openai:v0.32.0",
            "hf_cache": "~/hf",
            "extra_args": ["--seed", "1"],
            "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        },
    },
    "gateway": {
        "host": "lin",
        "listen": "0.0.0.0",
        "api_keys": [{"name": "owner", "key": "${FLEETGATE_API_KEY}", "routes": ["*"]}],
        "admin_key": "${FLEETGATE_ADMIN_KEY}",
        "redis_url": "redis://127.0.0.1:6379/0",
        "routes": {"qwen": {"deployments": ["dock", "proc"]}},
    },
}

# Every string field of BASE, by path (test_every_string_field_is_attacked keeps it complete).
FIELDS: list[tuple[str | int, ...]] = [
    ("name",),
    ("hosts", "lin", "address"),
    ("hosts", "lin", "ssh", "user"),
    ("hosts", "lin", "ssh", "identity_file"),
    ("hosts", "lin", "workdir"),
    ("hosts", "lin", "fleetgate_bin"),
    ("hosts", "lin", "gpus", 0, "name"),
    ("hosts", "win", "address"),
    ("hosts", "win", "ssh", "user"),
    ("hosts", "win", "workdir"),
    ("hosts", "win", "gpus", 0),
    ("deployments", "dock", "model"),
    ("deployments", "proc", "model"),
    ("deployments", "wdock", "model"),
    ("deployments", "dock", "model_path"),
    ("deployments", "dock", "served_model_name"),
    ("deployments", "dock", "image"),
    ("deployments", "dock", "hf_cache"),
    ("deployments", "dock", "extra_args", 1),
    ("deployments", "dock", "env", "VLLM_LOGGING_LEVEL"),
    ("deployments", "proc", "model_path"),
    ("deployments", "proc", "python"),
    ("deployments", "proc", "extra_args", 1),
    ("deployments", "proc", "env", "VLLM_LOGGING_LEVEL"),
    ("deployments", "wdock", "model_path"),
    ("deployments", "wdock", "image"),
    ("deployments", "wdock", "hf_cache"),
    ("deployments", "wdock", "extra_args", 1),
    ("deployments", "wdock", "env", "VLLM_LOGGING_LEVEL"),
    ("gateway", "listen"),
    ("gateway", "api_keys", 0, "name"),
    ("gateway", "api_keys", 0, "key"),
    ("gateway", "api_keys", 0, "routes", 0),
    ("gateway", "admin_key"),
    ("gateway", "redis_url"),
]

# What breaks out of a word or a line somewhere: quotes of each dialect (PowerShell's curly
# ones too), expansions, separators, comment and escape characters, specifiers, line breaks.
HOSTILE = (
    "'\"`$\\;&|<>(){}[]#%*?~!=@,^ -\n\r\t\x0b\x85\u2028\u2018\u2019\u201a\u201b\u201c\u201d\u2013"
)
PAYLOADS = [
    "-oProxyCommand=touch pwned",
    "x'; touch pwned; '",
    '"; touch pwned; "',
    "$(touch pwned)",
    "`touch pwned`",
    "\u2018; Start-Process calc; \u2018",
    "\u2019) ; touch pwned ; (\u2019",
    "a\nExecStartPre=/bin/touch /tmp/pwned",
    "%h%n%%",
    "${HOME}",
    'C:/x" & calc.exe & "',
    "trailing\\",
    "--model=/etc",
]
hostile_text = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(alphabet=st.sampled_from(HOSTILE) | st.characters(exclude_categories=("Cs",))),
    st.lists(st.sampled_from([*PAYLOADS, "a", "/", ":", "."]), min_size=1, max_size=4).map("".join),
)


def _with(raw: Any, path: tuple[str | int, ...], value: str) -> Any:
    head, *rest = path
    copy = list(raw) if isinstance(raw, list) else dict(raw)
    copy[head] = _with(raw[head], tuple(rest), value) if rest else value  # type: ignore[index]
    return copy


def _string_paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return [path] if isinstance(value, str) else []


def _has_control_character(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def _render(raw: dict[str, Any]) -> dict[str, str] | None:
    """Every file the fleet renders to, or None when the fleet is refused."""
    try:
        loaded = parse_fleet(yaml.safe_dump(raw), file="fleet.yaml", env={}, strict_env=False)
        source = source_of(loaded)
    except (FleetError, RenderError):
        return None
    files = {f"{h}/{p}": t for h in source.fleet.hosts for p, t in render_host(source, h).items()}
    files["litellm.config.yaml"] = render_litellm(source)
    return files


def _unit_keys(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines() if line and line[0] not in "#;"]


def _check_bash(files: dict[str, str], tmp: Path) -> None:
    scripts = []
    for name, text in files.items():
        if not name.endswith(".sh"):
            continue
        script = tmp / name.replace("/", "_")
        script.write_text(text)
        scripts.append(script)
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
        scratch = tmp / "scratch"
        scratch.mkdir()
        usage = subprocess.run(
            ["bash", str(script)],
            cwd=scratch,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "HOME": str(scratch)},
            timeout=30,
        )
        assert usage.returncode == 2 and "usage:" in usage.stderr, f"{name}: {usage.stderr}"
        assert list(scratch.iterdir()) == [], f"{name}'s usage path created files"
        scratch.rmdir()
    assert len(scripts) == 4, sorted(scripts)
    if shutil.which("shellcheck"):
        # warnings and errors: a quoted `$` is info (SC2016), on purpose here; SC1112 flags a
        # curly quote anywhere, even inside single quotes where it is a plain
        # character (test_bash_words_round_trip shows bash reads it back as written)
        lint = subprocess.run(
            ["shellcheck", "-s", "bash", "-S", "warning", "-e", "SC1112", *map(str, scripts)],
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout


def _check_units(files: dict[str, str], ordinary: dict[str, str], tmp: Path) -> None:
    units = {name: text for name, text in files.items() if name.endswith(".service")}
    assert len(units) == 2
    analyze = shutil.which("systemd-analyze")
    for name, text in units.items():
        assert _unit_keys(text) == _unit_keys(ordinary[name]), f"{name} gained directives"
        if analyze is None:
            continue
        lines = ["User=root" if line.startswith("User=") else line for line in text.splitlines()]
        unit = tmp / f"fleetgate-{name.split('/')[1].replace('.service', '')}-x.service"
        unit.write_text("\n".join(lines) + "\n")
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        out = result.stdout + result.stderr
        broken = [
            line
            for line in out.splitlines()
            if unit.name in line
            and "is not executable" not in line
            and "No such file" not in line
            and "Command" not in line
        ]
        assert not broken, f"{name}:\n{out}"


def _check_powershell(files: dict[str, str], field: tuple[str | int, ...], value: str) -> None:
    scripts = {name: text for name, text in files.items() if name.endswith(".ps1")}
    assert len(scripts) == 2  # each docker deployment has one, for either OS
    for name, text in scripts.items():
        assert parse_errors(text) == [], name
        whole_word = field[:2] == ("deployments", "wdock") and field[2] in ("image", "extra_args")
        if whole_word and name.startswith("win/") and "${" not in value:
            assert as_powershell_reads(value) in verbatim_strings(text), name


@functools.cache
def ordinary() -> dict[str, str]:
    """The files of BASE itself (a cache, not a fixture: hypothesis would print it)."""
    files = _render(BASE)
    assert files is not None
    return files


# Strings of BASE left alone: choices of a fixed set and references to names (validated as
# such), and the flag before the attacked extra_args value.
NOT_ATTACKED = {
    ("hosts", "lin", "os"),
    ("hosts", "lin", "transport"),
    ("hosts", "win", "os"),
    ("deployments", "dock", "host"),
    ("deployments", "proc", "host"),
    ("deployments", "wdock", "host"),
    ("deployments", "proc", "runtime"),
    ("deployments", "dock", "extra_args", 0),
    ("deployments", "proc", "extra_args", 0),
    ("deployments", "wdock", "extra_args", 0),
    ("gateway", "host"),
    ("gateway", "routes", "qwen", "deployments", 0),
    ("gateway", "routes", "qwen", "deployments", 1),
}


def test_every_string_field_is_attacked() -> None:
    assert set(_string_paths(BASE)) - NOT_ATTACKED == set(FIELDS)


@settings(
    max_examples=int(os.environ.get("FLEETGATE_HOSTILE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(field=st.sampled_from(FIELDS), value=hostile_text)
def test_a_hostile_value_is_refused_or_rendered_harmless(
    field: tuple[str | int, ...], value: str
) -> None:
    files = _render(_with(BASE, field, value))
    if _has_control_character(value):
        assert files is None, f"{field}: a control character was accepted"
    assume(files is not None)
    assert files is not None
    with tempfile.TemporaryDirectory() as tmp:
        _check_bash(files, Path(tmp))
        _check_units(files, ordinary(), Path(tmp))
    _check_powershell(files, field, value)
    for name, text in files.items():
        if name.endswith(".yaml"):
            yaml.safe_load(text)


# --- the quoting itself, many words at a time -------------------------------------------------

words = st.text(st.sampled_from(HOSTILE) | st.characters(exclude_categories=("Cs", "Cc")))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(words, min_size=1, max_size=8))
def test_bash_words_round_trip(values: list[str]) -> None:
    """What bash hands a command is exactly each value (``${HOME}`` expanded at run time)."""
    home = "/home/someone"
    line = "printf '%s\\0' " + " ".join(bash.word(v) for v in values)
    out = subprocess.run(
        ["bash", "-c", line], capture_output=True, env={"HOME": home, "PATH": os.environ["PATH"]}
    )
    assert out.returncode == 0, out.stderr
    expected = [v.replace("${HOME}", home) for v in values]
    assert out.stdout.decode().split("\0")[:-1] == expected


@settings(max_examples=200, deadline=None)
@given(value=words)
def test_powershell_strings_hold_exactly_the_value(value: str) -> None:
    assume("${" not in value)
    script = f"$x = {powershell.word(value)}\n"
    assert parse_errors(script) == []
    assert verbatim_strings(script) == [as_powershell_reads(value)]


# --- no template prints a value unquoted -------------------------------------------------------

DIALECT_FILTERS = {
    ".sh.j2": {"sh", "sh_literal", "sh_path", "sh_words", "sh_comment"},
    ".ps1.j2": {"ps", "ps_path", "ps_items", "ps_comment"},
    ".service.j2": {"unit_exec", "unit_env", "unit_value", "unit_path", "unit_comment"},
}


def _unquoted_outputs(source: str, allowed: set[str]) -> list[str]:
    """Each ``{{ ... }}`` of a template that is not its dialect's filter, an ``int``, or a
    constant (``{{ "," if not loop.last }}``)."""
    env = jinja2.Environment()
    wrong = []
    for output in env.parse(source).find_all(jinja2.nodes.Output):
        for node in output.nodes:
            if isinstance(node, jinja2.nodes.TemplateData | jinja2.nodes.Const):
                continue
            if isinstance(node, jinja2.nodes.CondExpr) and all(
                isinstance(n, jinja2.nodes.Const | type(None)) for n in (node.expr1, node.expr2)
            ):
                continue
            if isinstance(node, jinja2.nodes.Filter) and (
                node.name in allowed or node.name == "int"
            ):
                continue
            wrong.append(f"line {node.lineno}: {type(node).__name__}")
    return wrong


def test_every_template_output_goes_through_its_dialects_quoting() -> None:
    templates = Path(scripts.__file__).parent / "templates"
    checked = 0
    for path in sorted(templates.glob("*.j2")):
        [allowed] = [f for suffix, f in DIALECT_FILTERS.items() if path.name.endswith(suffix)]
        assert _unquoted_outputs(path.read_text(), allowed) == [], path.name
        checked += 1
    assert checked == 5
    # and the check sees an unquoted value
    assert _unquoted_outputs("x={{ value }} y={{ value | ps }}", {"sh"}) == [
        "line 1: Name",
        "line 1: Filter",
    ]
    assert set().union(*DIALECT_FILTERS.values()) == set(scripts.FILTERS)
