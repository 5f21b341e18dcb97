"""What a fleet-file value may look like: one type per kind of value, and no control characters.

The rendered scripts and units run on the owner's machines. Quoting (``fleetgate.render``) keeps
every value a value; these shapes keep a value from meaning something else to the program that
receives it: a hostname that starts with ``-`` is an option to ssh, an image reference with a
space is two arguments to docker, an env var name with ``;`` is not a name at all.

A ``${VAR}`` reference that is left as written (commands that read a fleet without its secrets)
is judged as if it were a plain word: ``${SUBNET}.7`` is an address, ``-${X}`` is not.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator

from fleetgate.fleetfile.envrefs import ENV_REF

# Cc: C0, DEL and C1 controls (newline, carriage return, tab, escape, NEL, ...);
# Zl, Zp: the Unicode line and paragraph separators; Cs: lone surrogates (not encodable).
_CONTROL_CATEGORIES = {"Cc", "Zl", "Zp", "Cs"}
_CONTROL_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\0": "NUL"}

_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
# An absolute path to a file, or a bare name that starts like one (systemd reads a leading
# @ - : + ! | of ExecStart= as a prefix, quoted or not).
_EXECUTABLE = re.compile(r"/.*[^/]|[A-Za-z0-9_][^/]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_MODEL_ID = re.compile(rf"{_MODEL_PART}(?:/{_MODEL_PART})?")
# The docker reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest].
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[\-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)


def _as_written(value: str) -> str:
    """The value with each ``${VAR}`` left by loading replaced by a plain word."""
    return ENV_REF.sub("x", value)


def _first_control_character(text: str) -> str | None:
    return next((c for c in text if unicodedata.category(c) in _CONTROL_CATEGORIES), None)


def refuse_control_characters(value: Any) -> Any:
    """``value`` unchanged, or ValueError naming the first control character in any string of
    it (a list's items, a mapping's keys and values; models are checked by their own fields)."""
    if isinstance(value, str):
        found = _first_control_character(value)
        if found is not None:
            name = _CONTROL_NAMES.get(found) or unicodedata.name(found, "").lower() or "control"
            raise ValueError(f"control character U+{ord(found):04X} ({name}) is not allowed")
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_control_characters(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_control_characters(key)
            refuse_control_characters(item)
    return value


def _no_option(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.startswith("-"):
            raise ValueError(f"{what} must not start with '-' (a program would read an option)")
        return value

    return check


def _shaped(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(_as_written(value)):
            raise ValueError(f"not {what}")
        return value

    return check


def _address(value: str) -> str:
    _no_option("an address")(value)
    plain = _as_written(value)
    literal = plain[1:-1] if plain.startswith("[") and plain.endswith("]") else plain
    if ":" in literal:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError("not a hostname, an IPv4 or an IPv6 address") from None
        return value
    if not _HOSTNAME.fullmatch(plain) or ".." in plain:
        raise ValueError("not a hostname, an IPv4 or an IPv6 address")
    return value


def _path(value: str) -> str:
    if not value:
        raise ValueError("a path cannot be empty")
    return _no_option("a path")(value)


def _executable(value: str) -> str:
    _path(value)
    if any(c in value for c in "'\"\\"):
        raise ValueError("an executable's path cannot hold ', \" or \\ (systemd refuses it)")
    if not _EXECUTABLE.fullmatch(value):
        raise ValueError("an executable is an absolute path to a file, or a name on PATH")
    return value


Address = Annotated[str, AfterValidator(_address)]
"""A hostname (or ssh config alias), an IPv4 or an IPv6 address; never an option."""

UserName = Annotated[
    str, AfterValidator(_no_option("a user name")), AfterValidator(_shaped(_USER, "a user name"))
]
"""A login name: letters, digits, ``_``, ``.``, ``-``; never an option."""

HostPath = Annotated[str, AfterValidator(_path)]
"""A path on a host (POSIX, ``~/...`` or ``C:/...``); never an option."""

Executable = Annotated[str, AfterValidator(_executable)]
"""A program to run: an absolute path to a file, or a name on ``PATH`` (what systemd's
``ExecStart=`` accepts); no quote or backslash (systemd refuses them); never an option."""

EnvName = Annotated[
    str, AfterValidator(_shaped(_ENV_NAME, "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"))
]

ModelId = Annotated[
    str,
    AfterValidator(_no_option("a model id")),
    AfterValidator(_shaped(_MODEL_ID, "a Hugging Face model id (org/name)")),
]

ImageRef = Annotated[
    str,
    AfterValidator(_no_option("an image reference")),
    AfterValidator(_shaped(_IMAGE, "a container image reference (registry/name:tag)")),
]
