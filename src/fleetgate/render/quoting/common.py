"""What every dialect's quoting shares: splitting out ``${VAR}`` references, and one-line text."""

from __future__ import annotations

import unicodedata

from fleetgate.fleetfile.envrefs import ENV_REF

# What ends a line in some dialect (and any other control character, which has no business in
# a comment): C0/C1 controls, DEL, the Unicode line and paragraph separators, lone surrogates.
_BREAKING = {"Cc", "Zl", "Zp", "Cs"}


def parts(word: str) -> list[tuple[bool, str]]:
    """Split into ``(is_reference, text)`` pieces; a reference's text is the variable name."""
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


def one_line(text: str) -> str:
    """``text`` with every control character written as ``\\uXXXX``: it cannot end a line."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _BREAKING else c for c in text)
