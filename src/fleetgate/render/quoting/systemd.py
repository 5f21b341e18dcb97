"""systemd unit files: ``ExecStart=`` words, ``Environment=`` assignments, plain values, paths.

Every setting here expands specifiers, so ``%`` is always ``%%``. ``ExecStart=`` also expands
``$VAR``/``${VAR}`` (a literal ``$`` is ``$$``; a fleet-file ``${VAR}`` stays one, for systemd to
fill from the environment) and unquotes C-style: a word with anything beyond plain characters
goes in double quotes with ``\\``, ``"`` and control characters escaped. ``Environment=`` does no
variable expansion, so ``$`` stays as it is there.
"""

from __future__ import annotations

import re

from fleetgate.render.quoting.common import one_line, parts

_PLAIN = re.compile(r"[A-Za-z0-9_./:=,+\-%$]+")
# Prefixes that change how systemd runs an ExecStart= command (see systemd.service(5)).
_EXEC_PREFIXES = "@-:+!|"


def _quoted(text: str) -> str:
    """A double-quoted string systemd unquotes back to ``text`` (C escapes)."""
    out = []
    for c in text:
        if c in '\\"':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        elif c.isprintable() or c == " ":
            out.append(c)
        else:  # line and paragraph separators, C1 controls, other invisible characters
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def _word(escaped: str, *, first: bool) -> str:
    if first and escaped[:1] in tuple(_EXEC_PREFIXES):
        # systemd reads these prefixes even from a quoted word: no quoting can keep them
        raise ValueError(f"an ExecStart= executable cannot start with {escaped[0]!r}")
    if escaped and _PLAIN.fullmatch(escaped):
        return escaped
    return _quoted(escaped)


def exec_word(value: str, *, first: bool = False) -> str:
    """One word of ``ExecStart=`` (``first``: the executable, which never gets a prefix)."""
    escaped = "".join(
        f"${{{text}}}" if is_ref else text.replace("%", "%%").replace("$", "$$")
        for is_ref, text in parts(value)
    )
    return _word(escaped, first=first)


def exec_line(argv: list[str]) -> str:
    """A whole ``ExecStart=`` command line."""
    return " ".join(exec_word(a, first=i == 0) for i, a in enumerate(argv))


def assignment(name: str, value: str) -> str:
    """One ``Environment=`` word, ``NAME=value`` (no variable expansion there)."""
    return _word(f"{name}={value}".replace("%", "%%"), first=False)


def value(text: str) -> str:
    """A free-text value (``Description=``, ``User=``): one line, specifiers escaped, no
    trailing backslash (which would continue the line)."""
    return one_line(text).replace("%", "%%").rstrip("\\")


def path(text: str) -> str:
    """A path setting (``EnvironmentFile=``, ``WorkingDirectory=``): taken as written, so only
    specifiers are escaped and the line kept whole."""
    return value(text)


def comment(text: str) -> str:
    """Text for after a ``#``: one line, and no trailing backslash."""
    return one_line(text).rstrip("\\")
