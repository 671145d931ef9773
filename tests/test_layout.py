"""The house rules that code review would otherwise have to catch: the layers import only
downward, no module of a package imports one that imports it back (lazily or not), and no
private name crosses a module boundary."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "supernets", "nat")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, at any depth
    (those for type checkers only aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{module}.{alias.name}"
                found.append((sub, []) if sub in modules else (module, [alias.name]))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m, _ in _imports(name, path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_module_imports_one_that_imports_it_back():
    # A package's __init__ re-exporting its modules is not a circle of design: left out.
    graph = {
        name: {m for m in deps if not name.startswith(f"{m}.")} for name, deps in _graph().items()
    }
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import circle: {' -> '.join(err.args[1])}")


@pytest.mark.parametrize(
    ("package", "forbidden"), [("search_spaces", ("supernets", "nat")), ("supernets", ("nat",))]
)
def test_layers_import_only_downward(package, forbidden):
    upward = [
        (name, dep)
        for name, deps in _graph().items()
        if name.split(".")[0] == package
        for dep in deps
        if dep.split(".")[0] in forbidden
    ]
    assert not upward


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    for path in (ROOT / "scripts").rglob("*.py"):
        modules["scripts." + ".".join(path.relative_to(ROOT / "scripts").with_suffix("").parts)] = (
            path
        )
    private = [
        (name, module, taken)
        for name, path in modules.items()
        for module, names in _imports(name, path, modules)
        for taken in names
        if taken.startswith("_") and not taken.startswith("__")
    ]
    assert not private
