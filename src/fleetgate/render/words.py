"""Quoting one word for bash, PowerShell, systemd and docker compose.

A word may hold ``${VAR}`` references left unresolved by the fleet file (secrets such as
``HF_TOKEN`` stay in the environment); each language gets its own run-time expansion for them and
everything else is quoted literally, so no value is ever interpreted twice.
"""

from __future__ import annotations

import re

from fleetgate.fleetfile.envrefs import ENV_REF


def _parts(word: str) -> list[tuple[bool, str]]:
    """Split into (is_reference, text) pieces."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for match in ENV_REF.finditer(word):
        if match.start() > pos:
            out.append((False, word[pos : match.start()]))
        out.append((True, match.group(1)))
        pos = match.end()
    if pos < len(word) or not out:
        out.append((False, word[pos:]))
    return out


def sh(word: str) -> str:
    """A bash word: literals in single quotes, references as ``"${VAR}"``."""
    out = []
    for is_ref, text in _parts(word):
        if is_ref:
            out.append(f'"${{{text}}}"')
        elif text == "" or re.search(r"[^A-Za-z0-9_./:=,@%+\-]", text):
            out.append("'" + text.replace("'", "'\\''") + "'")
        else:
            out.append(text)
    return "".join(out)


def sh_path(path: str) -> str:
    """A bash word for a host path; a leading ``~/`` means the user's home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (sh(path[1:]) if len(path) > 1 else "")
    return sh(path)


def ps(word: str) -> str:
    """A PowerShell expression: literals in single quotes, references as ``$env:VAR``."""
    out = []
    for is_ref, text in _parts(word):
        out.append(f"$env:{text}" if is_ref else "'" + text.replace("'", "''") + "'")
    return out[0] if len(out) == 1 else "(" + " + ".join(out) + ")"


def ps_path(path: str) -> str:
    """A PowerShell expression for a host path; a leading ``~/`` means the user's profile."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:].replace("/", "\\")
        return f"(Join-Path $env:USERPROFILE {ps(rest)})" if rest else "$env:USERPROFILE"
    return ps(path)


def systemd(word: str) -> str:
    """A word of a systemd ``ExecStart=``: references stay ``${VAR}`` (systemd expands them)."""
    out = []
    for is_ref, text in _parts(word):
        if is_ref:
            out.append(f"${{{text}}}")
        else:
            out.append(text.replace("%", "%%").replace("$", "$$"))
    joined = "".join(out)
    if joined and not re.search(r"[\s\"'\\;]", joined):
        return joined
    return '"' + joined.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compose(word: str) -> str:
    """A docker compose string: references stay ``${VAR}``; a literal ``$`` becomes ``$$``."""
    return "".join(
        f"${{{text}}}" if is_ref else text.replace("$", "$$") for is_ref, text in _parts(word)
    )
