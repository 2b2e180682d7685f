"""Architecture rules that no reviewer should have to catch by eye.

The layer order of the packages is written once, in docs/architecture.md, and read from there:
a package imports only from layers below its own, a new package must be given a layer, and
the modules of `secure_maas` import one another without a cycle. The exceptions are the
migration aggregator (`db/schema.py`), which imports every package's tables for Alembic, and
the app factory (`serving/app.py`), which registers the web console's views.
"""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "secure_maas"
#: Imports every package's tables so Alembic sees the whole schema: allowed to reach upward.
AGGREGATOR = PACKAGE / "db" / "schema.py"
#: The app factory registers the web console, whose views sit above the serving pipeline they
#: reuse: the one upward import `create_app` may make (the composition root, as the
#: aggregator is Alembic's).
COMPOSITION_ROOT = (PACKAGE / "serving" / "app.py", "secure_maas.console.views")


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_crypto_package_imports_cryptography() -> None:
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in python_files()
        if "crypto" not in path.relative_to(PACKAGE).parts[:1]
        and any(name.split(".")[0] == "cryptography" for name in imported_modules(path))
    ]
    assert offenders == []


def test_no_assert_in_library_code() -> None:
    """Security checks must raise: asserts vanish under `python -O`."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in python_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert offenders == []


def test_domain_packages_know_nothing_of_flask() -> None:
    for package in ("auth", "policy", "audit", "crypto", "keys", "db"):
        for path in (PACKAGE / package).rglob("*.py") if (PACKAGE / package).exists() else []:
            assert "flask" not in {n.split(".")[0] for n in imported_modules(path)}, path


def layers() -> list[set[str]]:
    """The layers of docs/architecture.md's table, lowest first (`| 0 | errors, ... |`)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([a-z_, ]+) \|", text, flags=re.MULTILINE)
    assert [int(n) for n, _ in rows] == list(range(len(rows))), "layers numbered from 0"
    return [{name.strip() for name in names.split(",")} for _, names in rows]


def part_of(path: Path) -> str:
    """The top-level package (or module) of `secure_maas` that `path` belongs to."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_every_package_has_a_layer_and_imports_only_from_below() -> None:
    place = {name: level for level, names in enumerate(layers()) for name in names}
    parts = {part_of(path) for path in python_files()} - {"__init__"}
    assert parts - set(place) == set(), "give each new package a layer in docs/architecture.md"
    assert set(place) - parts == set(), "docs/architecture.md names a package that is gone"
    upward = []
    for path in python_files():
        if path == AGGREGATOR:
            continue
        mine = part_of(path)
        for name in imported_modules(path):
            pieces = name.split(".")
            if pieces[0] != "secure_maas" or len(pieces) < 2 or pieces[1] == mine:
                continue
            if (path, _submodule(name, path)) == COMPOSITION_ROOT:
                continue
            if place[pieces[1]] >= place[mine]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def _submodule(name: str, path: Path) -> str:
    """`name`, or `name.x` when `path` imports module x from package `name` (`from
    secure_maas.console import views` imports secure_maas.console.views)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == name and len(node.names) == 1:
            candidate = f"{name}.{node.names[0].name}"
            if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                return candidate
    return name


def test_the_import_graph_has_no_cycle() -> None:
    modules = {module_name(path): path for path in python_files()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        if path == AGGREGATOR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from a.b import c` imports the module a.b.c when there is one, else a.b
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            for target in targets:
                pieces = target.split(".")
                # importing a.b.c runs the packages a.b first (not the importer's own)
                for size in range(2, len(pieces) + 1):
                    ancestor = ".".join(pieces[:size])
                    if ancestor in modules and not name.startswith(ancestor + "."):
                        graph[name].add(ancestor)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] - {node}):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(modules):
        if start not in state:
            visit(start, [start])


def test_crypto_is_used_through_its_public_face() -> None:
    inner = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in python_files()
        if part_of(path) != "crypto"
        for name in imported_modules(path)
        if name.startswith("secure_maas.crypto.")
    ]
    assert inner == []
