"""Python 3.8 problems vermin does not report, found with `ast` (tests/test_device_python.py).

Measured with vermin 1.9.2 (planted snippets in test_device_python.py prove each check here):
it reports nothing for
- `dict[str, int]`, `list[int]`, ... evaluated at run time (a module-level alias, a cast, a base
  class, an annotation without `from __future__ import annotations`): a TypeError on 3.8;
- `int | None` outside annotations (`isinstance(x, int | str)`, an alias): a TypeError before 3.10;
- methods it cannot type: str.removeprefix / removesuffix (3.9), Path.is_relative_to / with_stem
  (3.9), Path.hardlink_to and int.bit_count (3.10), int.to_bytes() / int.from_bytes(b) without
  length / byteorder (3.11);
- annotations Typer evaluates at run time (the CLI's command parameters) even under
  `from __future__ import annotations`.
It does report `zip(strict=...)`, but that check is cheap here too. It reports `import tomllib`
even inside `try: ... except ModuleNotFoundError: import tomli`, so vermin runs with
`--exclude tomllib` and this module checks instead that every tomllib import has that fallback.
Finally each file must parse with ast's Python 3.8 grammar (match, parenthesized context managers,
except* fail there).
"""

from __future__ import annotations

import ast
from pathlib import Path

GENERIC_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "type"}
GENERIC_MODULES = {"collections.abc", "re", "os", "queue"}  # re.Pattern[str], os.PathLike[str], ...
TYPE_NAMES = GENERIC_BUILTINS | {"int", "float", "complex", "str", "bytes", "bytearray", "bool", "object",
                                 "memoryview", "range", "slice"}
NEW_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9", "with_stem": "3.9",
               "hardlink_to": "3.10", "bit_count": "3.10"}
GUARDED_IMPORTS = {"tomllib": "tomli"}  # a 3.11+ module -> the backport its ImportError branch imports
TYPER_DECORATORS = {"command", "callback"}  # Typer reads these functions' annotations at run time


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _camel(name: str) -> bool:
    return name[:1].isupper() and not name.isupper()


class _Checker(ast.NodeVisitor):
    """Visits what runs at import or call time; annotations only where they are evaluated."""

    def __init__(self, path: str, tree: ast.Module):
        self.path, self.problems = path, []
        self.lazy_annotations = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                                    any(a.name == "annotations" for a in n.names) for n in tree.body)
        self.abc_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                          and n.module == "collections.abc" for a in n.names}
        self.depth = 0  # function nesting: a local variable's annotation is never evaluated
        self.fallbacks: list[set[str]] = []  # modules the enclosing try's ImportError branch imports

    def report(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.path}:{node.lineno}: {text}")

    # -- annotations: visited only where Python 3.8 evaluates them
    def _annotation(self, node: ast.AST | None, evaluated: bool) -> None:
        if node is not None and evaluated:
            self.visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        typer = any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") in TYPER_DECORATORS
                    for d in node.decorator_list)
        evaluated = typer or not self.lazy_annotations
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                self._annotation(arg.annotation, evaluated)
        self._annotation(node.returns, evaluated)  # typing.get_type_hints reads `return` too
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        self.depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._annotation(node.annotation, not self.lazy_annotations and self.depth == 0)
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    # -- evaluated expressions
    def visit_Subscript(self, node: ast.Subscript) -> None:
        name = _dotted(node.value)
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if name in GENERIC_BUILTINS or name in self.abc_names or (module in GENERIC_MODULES and _camel(name.rsplit(".", 1)[-1])):
            self.report(node, f"{name}[...] evaluated at run time needs Python 3.9: use typing's "
                              "List/Dict/Tuple/... or move it into an annotation")
        self.generic_visit(node)

    def _type_like(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value is None:
            return True
        if isinstance(node, ast.Subscript):
            return self._type_like(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._type_like(node.left) or self._type_like(node.right)
        name = _dotted(node).rsplit(".", 1)[-1]
        return name in TYPE_NAMES or _camel(name)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr) and (self._type_like(node.left) or self._type_like(node.right)):
            self.report(node, "X | Y between types evaluated at run time needs Python 3.10: use "
                              "typing.Union / Optional or a tuple of types")
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if method in NEW_METHODS:
            self.report(node, f".{method}() needs Python {NEW_METHODS[method]}")
        keywords = {k.arg for k in node.keywords}
        if method == "to_bytes" and not node.args and "length" not in keywords:
            self.report(node, ".to_bytes() without a length needs Python 3.11")
        if method == "from_bytes" and len(node.args) < 2 and "byteorder" not in keywords:
            self.report(node, ".from_bytes() without a byteorder needs Python 3.11")
        if isinstance(node.func, ast.Name) and node.func.id == "zip" and "strict" in keywords:
            self.report(node, "zip(strict=...) needs Python 3.10")
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        """An import in the body of `try` whose `except ImportError` imports a backport is fine."""
        catches = {_dotted(h.type) for h in node.handlers if h.type is not None} & {"ImportError", "ModuleNotFoundError"}
        backports = {m for h in node.handlers for s in h.body for m in _imported(s)} if catches else set()
        self.fallbacks.append(backports)
        for stmt in node.body:
            self.visit(stmt)
        self.fallbacks.pop()
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        have = self.fallbacks[-1] if self.fallbacks else set()
        for new in _imported(node) & set(GUARDED_IMPORTS):
            if GUARDED_IMPORTS[new] not in have:
                self.report(node, f"import {new} (Python 3.11+) needs `except ModuleNotFoundError: "
                                  f"import {GUARDED_IMPORTS[new]}`")

    visit_ImportFrom = visit_Import


def _imported(stmt: ast.AST) -> set[str]:
    if isinstance(stmt, ast.Import):
        return {a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.ImportFrom) and not stmt.level and stmt.module:
        return {stmt.module.split(".")[0]}
    return set()


def problems(source: str, path: str = "<snippet>") -> list[str]:
    """Every Python 3.8 problem of `source` that vermin misses (empty: none found)."""
    try:
        ast.parse(source, path, feature_version=(3, 8))
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: not Python 3.8 syntax ({exc.msg})"]
    tree = ast.parse(source, path)
    checker = _Checker(path, tree)
    checker.visit(tree)
    return checker.problems


def file_problems(path: Path) -> list[str]:
    return problems(path.read_text(encoding="utf-8"), str(path))
