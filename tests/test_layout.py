"""Source layout rules, checked with `ast` (nothing is imported):

- no import cycles among edgelm modules. Imports inside functions and under TYPE_CHECKING count:
  a lazy import that closes a cycle still makes two modules own each other. A child importing its
  own package (`from . import x`, `from .. import __version__`) is not an edge; an import of another
  package counts as importing what its `__init__` imports.
- VOCAB and PRIME_BYTE are assigned in edgelm.vocab only; everything else imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# source folder -> package, as in pyproject.toml [tool.setuptools] package-dir
ROOTS = {"edgelm": "edgelm", "export": "edgelm.export", "runtime": "edgelm.runtime",
         "devices": "edgelm.devices"}
OWNED = {"VOCAB": "edgelm.vocab", "PRIME_BYTE": "edgelm.vocab"}


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package __init__)."""
    mods = {}
    for top, pkg in ROOTS.items():
        for path in sorted((REPO / top).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / top).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = (path, path.name == "__init__.py")
    return mods


def _from_base(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_names(name: str, is_pkg: bool, tree: ast.AST):
    """Every dotted name an import statement anywhere in `tree` may refer to."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(name, is_pkg, node)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _owner(target: str, mods: dict) -> str:
    """The edgelm module that defines a dotted name ('' for a name outside edgelm)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target


def import_graph(mods: dict) -> dict[str, set[str]]:
    """Module -> the edgelm modules it imports, minus its own ancestor packages."""
    edges: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        owners = {_owner(t, mods) for t in _imported_names(name, is_pkg, tree)}
        edges[name] = {t for t in owners if t and t != name and not name.startswith(t + ".")}
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first walk (empty: the graph is acyclic)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(edges):
        if u not in state:
            visit(u)
    return cycles


def _assigned_names(tree: ast.AST):
    """(name, line) for every name a module binds by assignment or by `import ... as name`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id, node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from ((a.asname, node.lineno) for a in node.names if a.asname and a.asname != a.name)


def test_source_roots_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for pkg, folder in package_dir.items():
        top, _, rest = folder.partition("/")
        assert top in ROOTS, f"pyproject maps {pkg} to {folder}/, which tests/test_layout.py misses"
        assert pkg == ".".join([ROOTS[top], *filter(None, rest.split("/"))]), (pkg, folder)


def test_no_import_cycles():
    cycles = find_cycles(import_graph(package_modules()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_find_cycles_sees_a_lazy_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_vocab_constants_have_one_owner():
    bad = [f"{path.relative_to(REPO)}:{line} assigns {ident}"
           for name, (path, _) in package_modules().items()
           for ident, line in _assigned_names(ast.parse(path.read_text(encoding="utf-8")))
           if ident in OWNED and OWNED[ident] != name]
    assert not bad, "import these from edgelm.vocab instead:\n" + "\n".join(bad)
