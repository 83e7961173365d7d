"""The layout docs/architecture.md describes: shared/ is layered, with no import cycles and no hidden imports.

Imports are read from the source (every ``import``/``from ... import`` of a ``shared`` module, also those inside
functions), so a cycle cannot hide behind a lazy import.
"""

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "shared"

# lowest first; a package may import its own modules and those of lower layers only
LAYERS = [
    {"shared.errors"},
    {"shared.data", "shared.networks"},
    {"shared.phantoms", "shared.transforms", "shared.metrics"},
    {"shared.visualize"},
    {"shared.engines", "shared.packaging"},
    {"shared.cli"},
    {"shared.__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SHARED.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shared":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "shared")
    return found


MODULES = {_module_name(p): p for p in sorted(SHARED.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    package = _package(module)
    for rank, members in enumerate(LAYERS):
        if package in members:
            return rank
    raise AssertionError(f"{module}: package {package} is in no layer of tests/test_architecture.py")


def test_every_package_has_a_layer():
    for module in MODULES:
        if module != "shared":
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "shared"))
def test_imports_go_down_the_layers(module):
    upward = [m for m in GRAPH[module] if _package(m) != _package(module) and _layer(m) >= _layer(module)]
    assert not upward, f"{module} imports {upward} from its own layer or above"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(GRAPH[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_no_module_getattr():
    hidden = [
        name
        for name, path in MODULES.items()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
    ]
    assert not hidden, f"module-level __getattr__ hides imports in {hidden}"


def test_cycle_check_can_fail(monkeypatch):
    monkeypatch.setitem(GRAPH, "shared.data.atomic", GRAPH["shared.data.atomic"] | {"shared.data.validation"})
    monkeypatch.setitem(GRAPH, "shared.data.validation", GRAPH["shared.data.validation"] | {"shared.data.atomic"})
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()
