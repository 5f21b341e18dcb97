"""PowerShell: verbatim strings in single quotes, ``${VAR}`` as ``$env:VAR``, one-line comments.

PowerShell reads U+2018-U+201B (curly single quotes) as ``'`` too, so each of them is doubled
like ``'`` itself; inside a verbatim string nothing else is special (no ``$``, no backtick).
"""

from __future__ import annotations

from fleetgate.render.quoting.common import one_line, parts

SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def literal(text: str) -> str:
    """A verbatim string that is ``text`` exactly."""
    return "'" + "".join(c + c if c in SINGLE_QUOTES else c for c in text) + "'"


def word(value: str) -> str:
    """An expression: literal pieces verbatim, ``${VAR}`` references as ``$env:VAR``."""
    out = [f"$env:{text}" if is_ref else literal(text) for is_ref, text in parts(value)]
    return out[0] if len(out) == 1 else "(" + " + ".join(out) + ")"


def path(value: str) -> str:
    """An expression for a host path; a leading ``~/`` means the user's profile."""
    if value == "~" or value.startswith("~/"):
        rest = value[2:].replace("/", "\\")
        return f"(Join-Path $env:USERPROFILE {word(rest)})" if rest else "$env:USERPROFILE"
    return word(value)


def comment(text: str) -> str:
    """Text for after a ``#``: one line, whatever it holds."""
    return one_line(text)


def items(values: list[str]) -> str:
    """Several array items on one line, comma separated."""
    return ", ".join(word(v) for v in values)
