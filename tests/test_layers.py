"""Data flows one way: each package imports only what docs/architecture.md's layer table says it
may ("may import" column), so the table and the code cannot drift apart.

Every import is read from the source (function-level ones too), not by importing the modules.
A module at the top of ``fleetgate`` (not a package) is shared by all packages.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "fleetgate"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGES = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())


def layer_table() -> dict[str, tuple[set[str], bool]]:
    """Each row of the packages table: package -> (packages it may import, planned)."""
    rows: dict[str, tuple[set[str], bool]] = {}
    lines = ARCHITECTURE.read_text().splitlines()
    start = lines.index("| package | owns | may import | must not |")
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        package = re.match(r"`(\w+)`", cells[0])
        assert package, line
        named = set(re.findall(r"`(\w+)`", cells[2]))
        if cells[2].startswith("every package"):
            allowed = set(PACKAGES) - named
        else:
            assert named or cells[2] == "nothing", line
            allowed = named
        rows[package.group(1)] = (allowed, "(planned)" in cells[0])
    return rows


def fleetgate_imports(source: str, package: list[str]) -> set[str]:
    """The fleetgate packages a module's source imports; ``package`` is the dotted path of the
    package the module is in (to resolve relative imports)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from fleetgate import deploy` imports a package as a name
            names += [f"{module}.{alias.name}" for alias in node.names]
    return {
        name.split(".")[1]
        for name in names
        if name.startswith("fleetgate.") and name.split(".")[1] in PACKAGES
    }


def imported_packages(package: str) -> dict[str, set[str]]:
    """The other fleetgate packages each module of ``package`` imports, by file."""
    out: dict[str, set[str]] = {}
    for file in sorted((SRC / package).rglob("*.py")):
        within = ["fleetgate", *file.relative_to(SRC).parent.parts]
        used = fleetgate_imports(file.read_text(), within)
        out[file.relative_to(SRC).as_posix()] = used - {package}
    return out


def test_every_package_has_a_row_and_every_row_a_package() -> None:
    table = layer_table()
    assert set(PACKAGES) - set(table) == set(), "packages missing from docs/architecture.md"
    for name, (_, planned) in table.items():
        assert planned or name in PACKAGES, f"{name} is in the table but not in src/fleetgate"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_layer_table(package: str) -> None:
    allowed, _ = layer_table()[package]
    wrong = {
        module: sorted(used - allowed)
        for module, used in imported_packages(package).items()
        if used - allowed
    }
    assert not wrong, f"{package} may import only {sorted(allowed) or 'nothing'}: {wrong}"


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = (
        "import os\nimport fleetgate.plan.memory\nfrom fleetgate.render import words\n"
        "from fleetgate import deploy\nfrom . import sibling\n"
        "def f():\n    from ..gateway.app import serve\n    import fleetgate.probes\n"
    )
    assert fleetgate_imports(source, ["fleetgate", "local"]) == {
        "plan",
        "render",
        "deploy",
        "local",
        "gateway",
        "probes",
    }
    assert imported_packages("local")  # the reader finds the package's modules
