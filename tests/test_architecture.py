"""The layout's rules, checked on the source: imports form no cycle, go at the top of a module
unless a comment says why, and never reach for another module's private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cnnviz"
MAX_FILE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")
    }


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str, list[str]]]:
    """Every import statement with the module it imports and the names it takes from it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node, node.module, [alias.name for alias in node.names]


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """``module → modules of cnnviz it imports`` (at any depth of the file, TYPE_CHECKING too).

    ``from cnnviz.pkg import name`` counts as importing ``cnnviz.pkg.name`` when that is a module,
    else ``cnnviz.pkg``.
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for _, target, names in _imports(tree):
            if not target.startswith("cnnviz"):
                continue
            taken = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            for dependency in taken or [target]:
                if dependency != name and dependency in modules:
                    graph[name].add(dependency)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first = last), or ``None`` when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_of_cnnviz_is_acyclic() -> None:
    graph = import_graph(_modules())
    assert len(graph) > 40  # the whole package was read
    assert "cnnviz.capture.forward" in graph["cnnviz.api"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def _parents(tree: ast.Module) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``if TYPE_CHECKING:`` or a ``try`` (an optional import): not a deferred import."""
    while (node := parents.get(node)) is not None:  # type: ignore[assignment]
        if isinstance(node, ast.Try):
            return True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _explained(lines: list[str], node: ast.Import | ast.ImportFrom, starts: set[int]) -> bool:
    """A comment on the import's last line, or on the line above the block of imports it is in."""
    if "#" in lines[node.end_lineno - 1]:  # type: ignore[operator]
        return True
    first = node.lineno
    while first - 1 in starts or (
        first > 1 and lines[first - 2].strip().startswith(("from ", "import ", ")"))
    ):
        first -= 1
    return first > 1 and lines[first - 2].strip().startswith("#")


def test_imports_inside_functions_say_why() -> None:
    """An import below the top of a module carries a comment on its line or above its block."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        parents = _parents(tree)
        nodes = [node for node, _, _ in _imports(tree)]
        starts = {node.lineno for node in nodes}
        for node in nodes:
            if node.col_offset == 0 or _guarded(node, parents):
                continue
            if not _explained(lines, node, starts):
                unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not unexplained, "imports below the top without a reason: " + ", ".join(unexplained)


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = [
        f"{name}: {target}.{taken}"
        for name, tree in _modules().items()
        for _, target, names in _imports(tree)
        for taken in names
        if target.startswith("cnnviz") and taken.startswith("_") and taken != "__version__"
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.name))
def test_files_stay_small(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_FILE_LINES


def test_every_public_name_of_cnnviz_resolves_to_its_module() -> None:
    """``import cnnviz`` names each public object lazily; every name must lead to its object."""
    import cnnviz
    from cnnviz.capture.hooks import LayerCapture
    from cnnviz.methods.registry import method_names

    for name in cnnviz.__all__:
        assert getattr(cnnviz, name) is not None, name
    assert cnnviz.method_names is method_names
    assert cnnviz.LayerCapture is LayerCapture
    assert "gradcam" in cnnviz.method_names()
