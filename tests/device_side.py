"""Which modules are edgelm's device side, found from the code rather than listed by hand, and the
Python 3.8 problems vermin does not see in them. Used by tests/test_device_python.py.

The device side is what `edgelm run/profile/devices/build/eval BUNDLE/keygen/sign` can import:
edgelm.cli's module-level imports, its helpers' and its device commands' imports (the commands
are edgelm.python_support.DEVICE_COMMANDS), then every module those reach, module-level and
function-level imports alike. Two refinements keep the walk to what really runs:
- a package's __init__ contributes its module-level imports, plus the function-level imports of
  the functions imported from it by name (`from .native import unsupported`), not those of its
  other functions (edgelm.export.native.generate imports onnx; the device never calls it);
- a module that calls require_compiler_python() at import is the compiler side: the walk
  records that a device command reaches it (`edgelm eval MODEL`) and stops there.
The backends are imported by name (runtime/backends/__init__.py's BACKENDS): all of them are
device side except torch_ref, the optional torch reference backend.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "edgelm"
GUARD = "require_compiler_python"
BACKENDS_MODULE = "edgelm.runtime.backends"
TORCH_BACKEND = "torch_ref"  # needs the export extra (torch); a device never has it
CLI = "edgelm.cli"


def package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: edgelm.export lives in export/, edgelm.runtime in runtime/, ..."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in table.items()}


def module_file(name: str, dirs: dict[str, Path]) -> Path | None:
    """The file of module `name` (a package's __init__.py), or None when `name` is no module."""
    owner = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len, default=None)
    if owner is None:
        return None
    base = dirs[owner].joinpath(*name[len(owner):].split(".")[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def all_modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the edgelm package: name -> file."""
    found = {}
    for pkg, folder in dirs.items():
        for path in folder.glob("*.py"):
            found[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return found


@dataclass
class Record:
    """One import statement: `owner` is the top-level def/class it sits in (None: module level),
    `lazy` whether it runs only when a function is called."""
    node: ast.Import | ast.ImportFrom
    owner: str | None
    lazy: bool


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, (ast.Name, ast.Attribute)) and \
        getattr(test, "id", getattr(test, "attr", "")) == "TYPE_CHECKING"


def _imports(node: ast.AST, owner: str | None, lazy: bool):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield Record(child, owner, lazy)
        elif _is_type_checking(child):  # never runs
            for stmt in child.orelse:
                yield from _imports(stmt, owner, lazy)
        else:
            deeper = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(child, owner, deeper)


def import_records(tree: ast.Module) -> list[Record]:
    out = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out.append(Record(stmt, None, False))
            continue
        owner = stmt.name if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
        lazy = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
        if not _is_type_checking(stmt):
            out += list(_imports(stmt, owner, lazy))
    return out


def calls_guard(tree: ast.Module) -> bool:
    """Does the module call require_compiler_python() at import (module level)?"""
    return any(isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and
               getattr(s.value.func, "id", getattr(s.value.func, "attr", None)) == GUARD for s in tree.body)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def cli_commands(tree: ast.Module) -> dict[str, list[str]]:
    """edgelm.cli's command name -> the functions that implement it, read from the Typer
    decorators (`@app.command("eval")`, `@devices_app.callback()` -> the `devices` group)."""
    groups = {}
    for node in ast.walk(tree):  # app.add_typer(devices_app, name="devices")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_typer":
            name = next(k.value.value for k in node.keywords if k.arg == "name")
            groups[node.args[0].id] = name
    commands: dict[str, list[str]] = {}
    for fn in tree.body:
        for deco in getattr(fn, "decorator_list", []):
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)):
                continue
            app, kind = deco.func.value.id, deco.func.attr
            if app in groups:
                name = groups[app]
            elif kind == "command":
                name = deco.args[0].value if deco.args else fn.name.replace("_", "-")
            else:
                continue
            commands.setdefault(name, []).append(fn.name)
    return commands


def backend_modules(dirs: dict[str, Path]) -> list[str]:
    """The backends runtime/backends/__init__.py imports by name (BACKENDS), less torch_ref."""
    tree = parse(module_file(BACKENDS_MODULE, dirs))
    table = next(ast.literal_eval(s.value) for s in tree.body if isinstance(s, ast.Assign)
                 and getattr(s.targets[0], "id", "") == "BACKENDS")
    return [f"{BACKENDS_MODULE}.{m}" for m in table.values() if m != TORCH_BACKEND]


@dataclass
class Walk:
    dirs: dict[str, Path]
    modules: dict[str, Path] = field(default_factory=dict)  # the device side
    third_party: dict[str, set[tuple[str, bool]]] = field(default_factory=dict)  # module -> {(top, lazy)}
    compiler_reached: set[str] = field(default_factory=set)  # guarded modules a device command reaches
    _trees: dict[str, ast.Module] = field(default_factory=dict)
    _symbols: set[tuple[str, str]] = field(default_factory=set)

    def tree(self, name: str) -> ast.Module:
        if name not in self._trees:
            self._trees[name] = parse(module_file(name, self.dirs))
        return self._trees[name]

    def is_package(self, name: str) -> bool:
        return module_file(name, self.dirs).name == "__init__.py"

    def visit(self, name: str) -> None:
        """Import module `name`: its parent packages, then its imports."""
        if name in self.modules or name in self.compiler_reached:
            return
        if module_file(name, self.dirs) is None:
            raise AssertionError(f"the walk reached {name}, which is no module of {PACKAGE}")
        if "." in name:
            self.visit(name.rsplit(".", 1)[0])
        if calls_guard(self.tree(name)):
            self.compiler_reached.add(name)
            return
        self.modules[name] = module_file(name, self.dirs)
        package = self.is_package(name)
        self.follow(name, [r for r in import_records(self.tree(name)) if not package or r.owner is None])

    def visit_symbol(self, module: str, symbol: str) -> None:
        """`from package import function`: that function's own imports."""
        if (module, symbol) not in self._symbols:
            self._symbols.add((module, symbol))
            self.follow(module, [r for r in import_records(self.tree(module)) if r.owner == symbol])

    def follow(self, name: str, records: list[Record]) -> None:
        for rec in records:
            if isinstance(rec.node, ast.Import):
                for alias in rec.node.names:
                    self._target(name, alias.name, rec.lazy)
                continue
            base = self._absolute(name, rec.node)
            if not self._target(name, base, rec.lazy):
                continue
            for alias in rec.node.names:
                sub = f"{base}.{alias.name}"
                if module_file(sub, self.dirs) is not None:
                    self.visit(sub)
                elif base in self.modules and self.is_package(base):
                    self.visit_symbol(base, alias.name)

    def _absolute(self, name: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module
        parts = name.split(".") if self.is_package(name) else name.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def _target(self, importer: str, target: str, lazy: bool) -> bool:
        """Visit an edgelm module (True) or record a third-party one (False)."""
        top = target.split(".")[0]
        if top == PACKAGE:
            self.visit(target)
            return True
        if top not in sys.stdlib_module_names and top != "__future__":
            self.third_party.setdefault(importer, set()).add((top, lazy))
        return False


def device_walk(device_commands) -> Walk:
    """The device side: edgelm.cli (all but its compiler commands' imports) and the backends."""
    walk = Walk(package_dirs())
    walk.visit(PACKAGE)
    tree = walk.tree(CLI)
    commands = cli_commands(tree)
    skip = {fn for name, fns in commands.items() if name not in device_commands for fn in fns}
    walk.modules[CLI] = module_file(CLI, walk.dirs)
    walk.follow(CLI, [r for r in import_records(tree) if r.owner not in skip])
    for backend in backend_modules(walk.dirs):
        walk.visit(backend)
    return walk
