"""The module graph of geoprep: every module imports on its own, and no two modules import each
other, directly or through others (imports inside functions count too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import geoprep

PACKAGE = Path(geoprep.__file__).resolve().parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def source_of(name: str) -> Path:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never imported)."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports_of(name: str, known: set[str]) -> set[str]:
    """The geoprep modules `name` imports when it runs, at the top or inside functions (`from
    geoprep import X` counts as geoprep itself, whose public names resolve lazily)."""
    found = set()
    for node in runtime_nodes(ast.parse(source_of(name).read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known}
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_its_absence() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_geoprep_has_no_import_cycle() -> None:
    names = module_names()
    known = set(names)
    graph = {name: imports_of(name, known) for name in names}
    # the package's own __init__ only maps public names to modules, lazily
    graph["geoprep"] = set()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_every_module_imports_in_dependency_order() -> None:
    """In a fresh interpreter, each module after the modules it imports (so none relies on an
    import made elsewhere); the public names stay functions even with every subpackage loaded."""
    names = module_names()
    graph = {name: imports_of(name, set(names)) for name in names}
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and graph[n] <= set(order) | {"geoprep"}]
        assert ready, "no module is ready: the graph has a cycle"
        order += ready
    script = "\n".join(
        [*(f"import {name}" for name in order)]
        + [
            "import inspect, geoprep",
            "for name in geoprep.__all__:",
            "    assert not inspect.ismodule(getattr(geoprep, name)), name",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
