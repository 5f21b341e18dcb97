"""Each package's public surface is its ``__all__``: every listed name exists, every public name
the package binds is listed, and the list is sorted (constants, classes, then the rest, as ruff's
RUF022 sorts it).

Packages are found by walking ``fleetgate``, so a new package or a new name needs no edit here.
Submodules are not part of the surface: importing ``fleetgate.render.quoting`` anywhere binds
``words`` on the package, whether or not the package means to export it.
"""

import __future__

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

import fleetgate

# The command line is cli's surface; it exports no Python API.
NOT_A_LIBRARY = {"fleetgate.cli"}

PACKAGES = sorted(
    info.name
    for info in pkgutil.iter_modules(fleetgate.__path__, prefix="fleetgate.")
    if info.ispkg and info.name not in NOT_A_LIBRARY
)


def is_submodule(package: ModuleType, value: object) -> bool:
    return isinstance(value, ModuleType) and value.__name__.startswith(package.__name__ + ".")


def public_names(package: ModuleType) -> set[str]:
    """Names the package binds that a user could import: not private, not submodules, not
    ``from __future__`` features."""
    return {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not is_submodule(package, value)
        and not isinstance(value, __future__._Feature)
    }


def ruff_order(name: str) -> tuple[int, list[int | str]]:
    """RUF022's isort-style key: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; natural
    order within each."""
    if len(name) > 1 and name.isupper():
        category = 0
    elif name[:1].isupper():
        category = 1
    else:
        category = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return category, natural


def test_the_packages_are_found() -> None:
    assert {
        "fleetgate.deploy",
        "fleetgate.fleetfile",
        "fleetgate.gateway",
        "fleetgate.local",
        "fleetgate.models",
        "fleetgate.plan",
        "fleetgate.probes",
        "fleetgate.render",
        "fleetgate.sim",
    } <= set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_imports_are_exported(name: str) -> None:
    package = importlib.import_module(name)
    exported = getattr(package, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ lists names the package does not bind: {missing}"
    listed = {n for n in exported if not is_submodule(package, getattr(package, n))}
    unlisted = sorted(public_names(package) - listed)
    assert not unlisted, f"{name} binds public names its __all__ does not list: {unlisted}"
    assert exported == sorted(exported, key=ruff_order), f"{name}.__all__ is not sorted"


def test_a_package_with_an_unlisted_name_is_caught() -> None:
    """public_names sees an unlisted public name and skips private names and submodules."""
    package = ModuleType("fleetgate.example")
    package.__all__ = ["listed"]  # type: ignore[attr-defined]
    package.listed = 1  # type: ignore[attr-defined]
    package.extra = 2  # type: ignore[attr-defined]
    package.submodule = ModuleType("fleetgate.example.submodule")  # type: ignore[attr-defined]
    package._private = 3  # type: ignore[attr-defined]
    assert public_names(package) == {"listed", "extra"}


def test_the_order_is_ruffs() -> None:
    names = ["run", "GPU_CATALOG", "Gateway", "T", "BLOCK_SIZE", "gpu10", "gpu2", "ApiKey"]
    assert sorted(names, key=ruff_order) == [
        "BLOCK_SIZE",
        "GPU_CATALOG",
        "ApiKey",
        "Gateway",
        "T",
        "gpu2",
        "gpu10",
        "run",
    ]
