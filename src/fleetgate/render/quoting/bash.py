"""bash: words in single quotes, ``${VAR}`` as ``"${VAR}"``, comments on one line."""

from __future__ import annotations

import re

from fleetgate.render.quoting.common import one_line, parts

_PLAIN = re.compile(r"[A-Za-z0-9_./:=,@%+\-]+")


def literal(text: str) -> str:
    """A bash word that is ``text`` exactly (no expansion of anything in it)."""
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def word(value: str) -> str:
    """A bash word: literal pieces quoted, ``${VAR}`` references expanded (in double quotes)."""
    return "".join(f'"${{{text}}}"' if is_ref else literal(text) for is_ref, text in parts(value))


def path(value: str) -> str:
    """A bash word for a host path; a leading ``~/`` means the user's home."""
    if value == "~" or value.startswith("~/"):
        return '"$HOME"' + (word(value[1:]) if len(value) > 1 else "")
    return word(value)


def comment(text: str) -> str:
    """Text for after a ``#``: one line, whatever it holds."""
    return one_line(text)


def fallback(variable: str, default: str) -> str:
    """``"${VARIABLE:-default}"``: the variable's value if set, else ``default`` exactly."""
    escaped = "".join("\\" + c if c in '\\"$`}' else c for c in default)
    return f'"${{{variable}:-{escaped}}}"'


class Code(str):
    """A bash fragment written by fleetgate itself (never a fleet-file value): the ``sh``
    filters pass it through as it is."""

    __slots__ = ()


def words(values: list[str]) -> str:
    """Several words on one line; a :class:`Code` item is written as it is."""
    return " ".join(v if isinstance(v, Code) else word(v) for v in values)
