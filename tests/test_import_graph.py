"""The import graph of gallery/: no cycles, nothing under gallery.store imports upward, and
every import inside a function says why it is there.

The graph is read from the source (ast), so imports inside functions count like top-level
ones; only `if TYPE_CHECKING:` imports (never executed) are left out. Importing a.b.c also
runs a/b/__init__.py, so an import from outside package a.b adds an edge to a.b too.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What the store may import from outside gallery.store: modules below it.
BELOW_STORE = {"gallery.errors", "gallery.registry", "gallery.fingerprint", "gallery.preprocess",
               "gallery.imagefolder", "gallery.modelfiles",
               # input checks (issue 15): leaves that import only gallery.errors (and h5safe)
               "gallery.h5safe", "gallery.limits", "gallery.validate", "gallery.arrayfiles",
               "gallery.model_identity"}
# The store's upward imports that the crash-safe store work (issue 13) removes; listed so the
# test guards everything else now. Remove an entry when its import goes (a stale one fails).
STORE_UPWARD_PENDING: set[tuple[str, str]] = set()  # (module, import) pairs allowed for now: none left


def module_files(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosing(node: ast.AST, parents: dict) -> tuple[bool, bool]:
    """(inside a function, inside `if TYPE_CHECKING:`)."""
    in_function = type_checking = False
    while node in parents:
        node = parents[node]
        in_function |= isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        type_checking |= isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    return in_function, type_checking


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        # `from a.b import c` imports module a.b.c when c is one, else a name from a.b
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _commented(lines: list[str], i: int) -> bool:
    """A comment on the import's line, or above the run of import lines it belongs to."""
    if "#" in lines[i]:
        return True
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
        i -= 1
        if "#" in lines[i]:
            return True
    return i > 0 and lines[i - 1].strip().startswith("#")


def import_graph(package: Path) -> tuple[dict[str, set[str]], list[tuple[Path, int, bool]]]:
    """(module -> modules it imports, [(file, line, commented) for each in-function import])."""
    modules = module_files(package)
    edges: dict[str, set[str]] = defaultdict(set)
    inner = []
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            in_function, type_checking = _enclosing(node, parents)
            if type_checking:
                continue
            if in_function:
                inner.append((path, node.lineno, _commented(lines, node.lineno - 1)))
            for target in _targets(module, node, modules, path.name == "__init__.py"):
                if target == module:
                    continue
                edges[module].add(target)
                parts = target.split(".")
                for i in range(2, len(parts)):  # the target's packages run first
                    package_name = ".".join(parts[:i])
                    if not (module + ".").startswith(package_name + "."):
                        edges[module].add(package_name)
    return edges, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def store_upward(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, t) for m, targets in edges.items() if m.startswith("gallery.store")
            for t in targets if not t.startswith("gallery.store") and t not in BELOW_STORE}


@pytest.fixture(scope="module")
def gallery_graph():
    """The graph of gallery/, read once for the tests below (each gets its own copy of the edges)."""
    edges, inner = import_graph(ROOT / "gallery")
    return edges, inner


def test_no_import_cycles_in_gallery(gallery_graph):
    edges = defaultdict(set, {m: set(t) for m, t in gallery_graph[0].items()})
    for module, target in STORE_UPWARD_PENDING:
        edges[module].discard(target)
    assert cycles(edges) == []


def test_store_imports_nothing_above_it(gallery_graph):
    edges = gallery_graph[0]
    upward = store_upward(edges)
    assert not upward - STORE_UPWARD_PENDING, "gallery.store imports upward: " + repr(sorted(upward - STORE_UPWARD_PENDING))
    stale = STORE_UPWARD_PENDING - upward
    assert not stale, f"gone from gallery.store, remove from STORE_UPWARD_PENDING: {sorted(stale)}"


def test_every_import_inside_a_function_says_why(gallery_graph):
    inner = gallery_graph[1]
    silent = [f"{path.relative_to(ROOT)}:{line}" for path, line, commented in inner if not commented]
    assert not silent, "imports inside functions without a comment (torch/cv2 optional? CLI start-up?): " \
                       + ", ".join(silent)


def test_the_checks_see_function_level_imports_and_packages(tmp_path):
    """Against a vacuous pass: a cycle made only by an in-function import through a package
    __init__, and an upward store import, are both found."""
    pkg = tmp_path / "gallery"
    for folder in (pkg, pkg / "store", pkg / "index"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (pkg / "index" / "__init__.py").write_text("from gallery.index.core import build\n")
    (pkg / "index" / "core.py").write_text("from gallery.store.items import rows\n\ndef build():\n    pass\n")
    (pkg / "store" / "items.py").write_text("def rows():\n    from gallery.index import build\n")
    (pkg / "errors.py").write_text("")
    edges, inner = import_graph(pkg)
    assert cycles(edges) == [["gallery.index", "gallery.index.core", "gallery.store.items"]]
    assert store_upward(edges) == {("gallery.store.items", "gallery.index")}
    assert [(p.name, line, commented) for p, line, commented in inner] == [("items.py", 2, False)]


def test_no_test_module_imports_another():
    """Helpers shared by tests live in helper modules (tests/*_helpers.py, tiny_models.py,
    conftest.py), never in a test module: importing one runs its module-level setup and
    collects its tests twice under another name."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not found, "; ".join(found)
