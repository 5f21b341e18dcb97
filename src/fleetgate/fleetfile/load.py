"""Reading a fleet file: YAML, ``${VAR}`` interpolation, validation, errors that point at a line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile.envrefs import INTERPOLATION
from fleetgate.fleetfile.schema import Fleet


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a fleet file."""

    path: str
    message: str
    suggestion: str | None = None
    level: str = "error"
    line: int | None = None

    def format(self, file: str | None = None) -> str:
        where = ":".join(str(p) for p in (file, self.line) if p is not None)
        head = f"{where}: " if where else ""
        text = f"{head}{self.path}: {self.message}" if self.path else f"{head}{self.message}"
        return f"{text}\n  hint: {self.suggestion}" if self.suggestion else text


class FleetError(FleetgateError):
    """The fleet file could not be used; ``problems`` says every reason found."""

    def __init__(self, file: str | None, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.format(file) for p in problems))


@dataclass(frozen=True)
class LoadedFleet:
    """A validated fleet with where it came from and its text before interpolation."""

    fleet: Fleet
    path: Path | None
    raw: dict[str, Any]
    # loaded without secrets: each ${VAR} left unset, as a warning that points at its line
    unset_env: tuple[Problem, ...] = ()


def interpolate(
    value: Any,
    env: Mapping[str, str],
    *,
    strict: bool,
    path: tuple[str, ...] = (),
    unset: list[tuple[tuple[str, ...], str]] | None = None,
) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    With ``strict`` an unset variable without default raises KeyError with ``(path, name)``
    (``path`` a tuple of keys, since names may hold dots); otherwise the reference is left as
    written (for commands that never use secrets) and ``(path, name)`` appended to ``unset``.
    """
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, strict=strict, path=(*path, str(k)), unset=unset)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            interpolate(v, env, strict=strict, path=(*path, str(i)), unset=unset)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        if strict:
            raise KeyError((path, name))
        if unset is not None:
            unset.append((path, name))
        return match.group(0)

    return INTERPOLATION.sub(sub, value)


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each path in a YAML document to its 1-based line, to point errors at the file."""
    index: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                walk(child, (*path, str(key.value)))
                index[(*path, str(key.value))] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, (*path, str(i)))

    if root is not None:
        walk(root, ())
    return index


def _is_secret(loc: tuple[str, ...]) -> bool:
    """Fields whose values must not be echoed into error output."""
    return bool(loc) and (loc[-1].endswith("key") or loc[-1] in ("redis_url", "store"))


def _problems_from(error: ValidationError, lines: dict[tuple[str, ...], int]) -> list[Problem]:
    problems = []
    for err in error.errors():
        loc = tuple(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against docs/fleet-file.md)"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif (
            "input" in err
            and not isinstance(err["input"], dict | list)
            and not _is_secret(loc)
            and repr(err["input"]) not in message
        ):
            message = f"{message} (got {err['input']!r})"
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        problems.append(Problem(path=".".join(loc), message=message, line=line))
    return problems


def parse_fleet(
    text: str,
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    strict_env: bool = True,
) -> LoadedFleet:
    """Validate a fleet document; raise :class:`FleetError` with every problem found."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FleetError(
            file,
            [
                Problem(
                    path="",
                    message=f"not valid YAML: {getattr(exc, 'problem', exc)}",
                    line=mark.line + 1 if mark else None,
                )
            ],
        ) from None
    if not isinstance(raw, dict):
        raise FleetError(file, [Problem(path="", message="a fleet file is a YAML mapping")])
    lines = _line_index(text)

    def unset_problem(keys: tuple[str, ...], name: str, level: str) -> Problem:
        return Problem(
            path=".".join(keys),
            message=f"environment variable {name} is not set",
            suggestion=f"export {name}=... before running, or write ${{{name}:-default}}",
            level=level,
            line=lines.get(keys),
        )

    unset: list[tuple[tuple[str, ...], str]] = []
    try:
        data = interpolate(raw, os.environ if env is None else env, strict=strict_env, unset=unset)
    except KeyError as exc:
        keys, name = exc.args[0]
        raise FleetError(file, [unset_problem(keys, name, "error")]) from None
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        raise FleetError(file, _problems_from(exc, lines)) from None
    warnings = tuple(unset_problem(keys, name, "warning") for keys, name in unset)
    return LoadedFleet(fleet, Path(file) if file else None, raw, warnings)


def load_fleet(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    strict_env: bool = True,
) -> LoadedFleet:
    """Read and validate a fleet file (schema only; see :func:`check_fleet` for cross checks)."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(file, [Problem(path="", message=f"cannot read: {exc.strerror}")]) from None
    return parse_fleet(text, file=file, env=env, strict_env=strict_env)
