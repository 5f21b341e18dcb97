"""``${VAR}`` references: the one definition of what they look like.

Loading resolves ``${VAR}`` and ``${VAR:-default}`` from the environment; a reference without
default that is not set (loading without secrets, for ``plan`` or ``render``) stays in the value
as written, ``${VAR}``, and the layers below ask these functions whether a value still has one.
"""

from __future__ import annotations

import re

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# What loading replaces: ${VAR} or ${VAR:-default}.
INTERPOLATION = re.compile(rf"\$\{{({_NAME})(?::-([^}}]*))?\}}")
# What is left after loading without the variable: ${VAR}.
ENV_REF = re.compile(rf"\$\{{({_NAME})\}}")


def env_refs(value: str) -> list[str]:
    """The environment variables a value still refers to, in order."""
    return ENV_REF.findall(value)


def has_env_refs(value: str | None) -> bool:
    """Whether a value (a key, a URL, an env entry) still holds an unresolved ``${VAR}``."""
    return value is not None and ENV_REF.search(value) is not None


def lone_env_ref(value: str) -> str | None:
    """The variable's name when the whole value is one ``${VAR}``, else None."""
    match = ENV_REF.fullmatch(value)
    return match.group(1) if match else None
