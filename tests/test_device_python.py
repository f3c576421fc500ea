"""The device side installs and runs on Python 3.8 (JetPack 5 on a Jetson Xavier); the compiler
side says in one line that it needs 3.10+.

No Python 3.8 can be installed here, so the claim is checked in four ways:
1. statically: the device-side modules (found by walking the device commands' imports,
   tests/device_side.py) pass vermin for 3.8 and the ast checks for what vermin misses
   (tests/py38_lint.py), each check proven by a planted snippet;
2. under a faked sys.version_info of 3.8.10: every device module imports, every compiler module
   and command stops with the one-line EdgelmError before torch or onnx is imported;
3. the wheel's metadata: what pip installs for Python 3.8 on linux aarch64;
4. the device commands in .venv-min, a venv of the oldest dependencies pyproject admits
   (`make install-min`, tests/min_deps.py), give the bytes the main venv gives;
5. the onnxruntime backend's path for ONNX Runtime before 1.24 (all that Python 3.8 has: one
   array per weight, runtime/onnx_data.py) runs what the whole-file path runs, and refuses forgeries.
"""

from __future__ import annotations

import ast
import email.parser
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import device_side
import min_deps
import py38_lint
from edgelm.python_support import COMPILER_PYTHON, DEVICE_COMMANDS, DEVICE_PYTHON, dotted
from bundle_tools import cli, copy_bundle
from runtime_fixtures import bundle_dir  # noqa: F401
from test_runtime_wheel import core_wheel  # noqa: F401

ROOT = device_side.ROOT
MODEL = ROOT / "models" / "mamba-tiny.pt"
TEXT = ROOT / "README.md"
# The device side imports these at module level (numpy and typer are core dependencies, click is
# typer's on 3.8, tomli the 3.8 fallback of tomllib) and these only inside the function that needs
# them (each names its package when missing; rich comes with typer).
EAGER = {"numpy", "typer", "click", "tomli"}
LAZY = {"onnxruntime", "tensorrt", "cuda", "pynvml", "cryptography", "matplotlib", "rich"}
COMPILER_PACKAGES = ("edgelm.models", "edgelm.importers", "edgelm.export.fused", "edgelm.export.quant")
# The optional torch reference backend: not device side, yet a device imports it for `--backend torch`.
TORCH_BACKEND = f"{device_side.BACKENDS_MODULE}.{device_side.TORCH_BACKEND}"
# The compiler commands, and the compiler paths of device commands (a model instead of a bundle),
# with arguments that would work on a 3.10+ host.
COMPILER_COMMANDS = {
    "train": ["train", str(TEXT), "--arch", "lstm", "-o", "{tmp}/t.pt", "--steps", "1"],
    "convert": ["convert", str(MODEL), "-o", "{tmp}/m.safetensors"],
    "quantize": ["quantize", str(MODEL), "--recipe", "w8", "--calib", str(TEXT), "-o", "{tmp}/q.pt"],
    "info": ["info", str(MODEL)],
    "export": ["export", str(MODEL), "-o", "{tmp}/bundle"],
    "run MODEL": ["run", str(MODEL), "--max-bytes", "4"],
    "eval MODEL": ["eval", str(MODEL), "--data", str(TEXT)],
}
PY38 = "(3, 8, 10, 'final', 0)"
# Python with sys.version_info replaced by 3.8.10 (a tuple with the named fields) before edgelm loads.
FAKE_38 = f"""
import sys
class _V(tuple):
    major, minor, micro = property(lambda s: s[0]), property(lambda s: s[1]), property(lambda s: s[2])
    releaselevel, serial = property(lambda s: s[3]), property(lambda s: s[4])
sys.version_info = _V({PY38})
"""


@pytest.fixture(scope="module")
def walk() -> device_side.Walk:
    return device_side.device_walk(DEVICE_COMMANDS)


def compiler_modules(walk) -> list[str]:
    every = device_side.all_modules(walk.dirs)
    return sorted(set(every) - set(walk.modules) - {TORCH_BACKEND})


# ---------------------------------------------------------------- 1. the device-side module set

def test_every_command_is_device_or_compiler_side():
    commands = device_side.cli_commands(device_side.parse(ROOT / "edgelm" / "cli.py"))
    compiler = {name.split()[0] for name in COMPILER_COMMANDS} - {"run", "eval"}
    assert set(DEVICE_COMMANDS) | compiler == set(commands), "classify the new command in python_support / here"


def test_device_side_is_the_runtime_devices_and_device_build(walk):
    mods = set(walk.modules)
    assert {"edgelm.cli", "edgelm.python_support", "edgelm.runtime.session", "edgelm.runtime.backends.ort",
            "edgelm.runtime.backends.native", "edgelm.runtime.backends.trt", "edgelm.devices.loader",
            "edgelm.export.device_build", "edgelm.export.native.build", "edgelm.export.trt_build"} <= mods
    exported = {m for m in mods if m.startswith("edgelm.export")}
    assert exported == {"edgelm.export", "edgelm.export.device_build", "edgelm.export.trt_build",
                        "edgelm.export.native", "edgelm.export.native.build"}
    assert not [m for m in mods for pkg in COMPILER_PACKAGES if m == pkg or m.startswith(pkg + ".")]
    assert TORCH_BACKEND not in mods
    assert walk.compiler_reached == {"edgelm.evaluate"}  # `edgelm eval MODEL`, behind the guard


def test_device_side_imports_no_torch_and_only_declared_packages(walk):
    eager = {top for deps in walk.third_party.values() for top, lazy in deps if not lazy}
    lazy = {top for deps in walk.third_party.values() for top, lazy in deps if lazy}
    assert eager <= EAGER, walk.third_party
    assert lazy <= LAZY, walk.third_party
    assert not (eager | lazy) & {"torch", "onnx", "safetensors", "transformers"}


def _vermin(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "-t=3.8-", "--violations",
           "--no-tips", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_vermin_finds_nothing_for_python_38(walk, tmp_path):
    planted = tmp_path / "planted.py"  # first, that this invocation does report a 3.9 feature
    planted.write_text("import functools\n\n@functools.cache\ndef f():\n    pass\n")
    res = _vermin([str(planted)])
    assert res.returncode != 0 and "functools.cache" in res.stdout, res.stdout
    files = [str(p) for p in walk.modules.values()] + [str(device_side.module_file(TORCH_BACKEND, walk.dirs))]
    res = _vermin(["--exclude", "tomllib", *files])  # its fallback to tomli is py38_lint's to check
    assert res.returncode == 0, res.stdout + res.stderr
    cli = _vermin(["--eval-annotations", str(walk.modules["edgelm.cli"])])  # Typer evaluates them
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_device_side_has_none_of_what_vermin_misses(walk):
    files = [*walk.modules.values(), device_side.module_file(TORCH_BACKEND, walk.dirs)]
    assert [p for f in files for p in py38_lint.file_problems(f)] == []


PLANTED = {  # snippet -> what the report says (vermin 1.9.2 reports none of these but zip)
    "Shapes = dict[str, tuple[int, ...]]": "dict[...]",
    "def f(x):\n    return isinstance(x, int | str)": "X | Y",
    "Maybe = Path | None": "X | Y",
    "def f(s):\n    return s.removeprefix('a')": ".removeprefix()",
    "def f(s):\n    return s.removesuffix('a')": ".removesuffix()",
    "def f(p):\n    return p.is_relative_to('/')": ".is_relative_to()",
    "def f(n):\n    return n.bit_count()": ".bit_count()",
    "def f(n):\n    return n.to_bytes()": ".to_bytes()",
    "def f(a, b):\n    return zip(a, b, strict=True)": "zip(strict",
    "def f(x: list[int]) -> None: ...": "list[...]",  # no __future__ import: evaluated
    "class K:\n    a: tuple[int, ...] = ()": "tuple[...]",
    "from collections.abc import Iterator\nIt = Iterator[int]": "Iterator[...]",
    "import re\nP = re.Pattern[str]": "re.Pattern[...]",
    "from __future__ import annotations\n@app.command()\ndef run(x: str | None = None): ...": "X | Y",
    "import tomllib": "import tomllib",
    "try:\n    import tomllib\nexcept ImportError:\n    tomllib = None": "import tomllib",
    "def f(x):\n    match x:\n        case 1: pass": "not Python 3.8 syntax",
    "with (open('a') as a, open('b') as b):\n    pass": "not Python 3.8 syntax",
}


@pytest.mark.parametrize("snippet", PLANTED)
def test_each_py38_check_fires_on_a_planted_snippet(snippet):
    found = py38_lint.problems(snippet)
    assert any(PLANTED[snippet] in problem for problem in found), found


def test_py38_checks_leave_correct_code_alone():
    fine = '''from __future__ import annotations
import os, re
from typing import Dict, Optional, Tuple
try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
Shapes = Dict[str, Tuple[int, ...]]
FLAGS = os.O_CREAT | os.O_EXCL | re.I
def f(x: dict[str, int] | None, s: str) -> list[int] | None:
    y: set[int] | None = None
    seen = set() | {1}
    return isinstance(x, (int, str)) and s[len("a"):] and n.to_bytes(4, "little") and int.from_bytes(b, "big")
class K:
    a: tuple[int, ...] = ()
'''
    assert py38_lint.problems(fine) == []


# ---------------------------------------------------------------- 2. the guard

def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _guard_first(tree: ast.Module) -> bool:
    """Only `from __future__` and the guard's own import precede the guard call."""
    for stmt in tree.body:
        if device_side.calls_guard(ast.Module(body=[stmt], type_ignores=[])):
            return True
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            module = getattr(stmt, "module", None) or ""
            if module != "__future__" and not module.endswith("python_support"):
                return False
    return False


def test_every_compiler_module_calls_the_guard_first(walk):
    """Each compiler module calls the guard itself, first (it then parses as 3.8 so the guard is
    reached there), or sits in a package whose __init__ does (a parent runs before its child)."""
    unguarded = []
    for name in compiler_modules(walk):
        path = device_side.module_file(name, walk.dirs)
        tree = device_side.parse(path)
        if device_side.calls_guard(tree):
            assert _guard_first(tree), f"{name}: call require_compiler_python() before any import"
            ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=DEVICE_PYTHON)
        elif not any(device_side.calls_guard(walk.tree(pkg)) for pkg in _parents(name)):
            unguarded.append(name)
        # the compiler side claims 3.10: tomllib (3.11) needs its tomli fallback there too
        assert not [p for p in py38_lint.file_problems(path) if "import tomllib" in p], name
    assert unguarded == []


def _fake_38(script: str, tmp_path: Path) -> dict:
    """Run `script` (which prints one JSON line) in a Python that reports itself as 3.8.10."""
    res = subprocess.run([sys.executable, "-c", FAKE_38 + script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "EDGELM_TMP": str(tmp_path)})  # not ROOT: edgelm/ there
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


IMPORTS = """
import importlib, json, sys
HEAVY = ("torch", "onnx")
def attempt(name):
    had = {m for m in HEAVY if m in sys.modules}
    try:
        importlib.import_module(name)
        what = "ok"
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}"
    return {"result": what, "heavy": sorted({m for m in HEAVY if m in sys.modules} - had)}
print(json.dumps({name: attempt(name) for name in NAMES}))
"""


@pytest.fixture(scope="module")
def imports_as_38(walk, tmp_path_factory) -> dict:
    """Every module imported under Python "3.8.10": device modules first, then the compiler's."""
    order = sorted(walk.modules) + [TORCH_BACKEND] + sorted(compiler_modules(walk))
    return _fake_38(f"NAMES = {order!r}\n" + IMPORTS, tmp_path_factory.mktemp("py38"))


def _guard_line(text: str) -> bool:
    """The guard's message: one line naming the Python needed and the one running."""
    needed = f"needs Python {dotted(COMPILER_PYTHON)}+"
    return needed in text and "this is Python 3.8.10" in text and "\n" not in text.strip()


def test_device_modules_import_on_38(walk, imports_as_38):
    failed = {m: imports_as_38[m] for m in [*walk.modules, TORCH_BACKEND] if imports_as_38[m]["result"] != "ok"}
    assert failed == {}
    assert all(not imports_as_38[m]["heavy"] for m in walk.modules)


def test_torch_backend_on_38_says_which_python_it_needs(monkeypatch):
    from edgelm.runtime.backends import torch_ref

    monkeypatch.setattr(sys, "version_info", (3, 8, 10, "final", 0))
    assert f"Python {dotted(COMPILER_PYTHON)}+" in torch_ref.available()


@pytest.mark.parametrize("module", compiler_modules(device_side.device_walk(DEVICE_COMMANDS)))
def test_compiler_module_stops_on_38_before_torch(module, imports_as_38):
    got = imports_as_38[module]
    assert got["result"].startswith("EdgelmError: ") and _guard_line(got["result"]) and got["heavy"] == [], got


def test_compiler_commands_print_one_line_on_38(tmp_path):
    """`edgelm export ...` (and every other compiler path) under 3.8: the guard's line, exit 2."""
    script = """
import contextlib, io, json, os, sys
from edgelm.cli import main
out = {}
for name, argv in COMMANDS.items():
    err = io.StringIO()
    sys.argv = ["edgelm", *[a.format(tmp=os.environ["EDGELM_TMP"]) for a in argv]]
    with contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    out[name] = {"code": code, "stderr": err.getvalue()}
out["heavy"] = [m for m in ("torch", "onnx") if m in sys.modules]
print(json.dumps(out))
"""
    got = _fake_38(f"COMMANDS = {COMPILER_COMMANDS!r}\n" + script, tmp_path)
    assert got.pop("heavy") == []
    for name, res in got.items():
        lines = res["stderr"].strip().splitlines()
        assert res["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: ") and _guard_line(lines[0]), \
            (name, res)


# ---------------------------------------------------------------- 3. the wheel's metadata

def _environment(python: str, machine: str, extra: str = "") -> dict:
    return {"python_version": python, "python_full_version": f"{python}.10", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": extra}


def _installs(requires: list[Requirement], env: dict) -> set[str]:
    return {r.name for r in requires if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.slow
def test_wheel_metadata_installs_the_device_side_on_38_aarch64(core_wheel):  # noqa: F811
    with zipfile.ZipFile(core_wheel) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
    assert SpecifierSet(meta["Requires-Python"]).contains("3.8.10")
    assert "Programming Language :: Python :: 3.8" in meta.get_all("Classifier")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    xavier = _environment("3.8", "aarch64")
    core = _installs(requires, xavier)
    assert core == {"numpy", "onnxruntime", "typer", "tomli"}
    assert _installs(requires, {**xavier, "extra": "export"}) == core  # the export extra adds nothing
    host = _environment("3.11", "x86_64")
    assert _installs(requires, host) == {"numpy", "onnxruntime", "typer"}
    assert _installs(requires, {**host, "extra": "export"}) - _installs(requires, host) == {"torch", "onnx", "safetensors"}


# ---------------------------------------------------------------- 4. the oldest dependencies

def _min_venv() -> Path:
    """.venv-min's bin/. Under `make test` (EDGELM_MIN_VENV set) its absence is a failure: the
    install step makes it, so a missing one is a broken install. A plain pytest run skips, naming
    the command that makes it, rather than fetching packages itself."""
    env = os.environ.get("EDGELM_MIN_VENV")
    venv = Path(env) if env else min_deps.MIN_VENV
    if not (venv / ".installed").is_file():
        if env:
            pytest.fail(f"{venv} is missing or unfinished although make test made it; run `make install-min`")
        pytest.skip(f"no {venv}: `make install-min` builds it (make test always does)")
    return venv / "bin"


def _here(capsys, *args) -> str:
    """`edgelm ARGS` in this process (the main venv): its stdout."""
    code, out, err = cli(capsys, *map(str, args))
    assert code == 0, (args, err[-2000:])
    return out


def _edgelm(bin_dir: Path, *args, timeout: int = 120) -> str:
    res = subprocess.run([str(bin_dir / "edgelm"), *map(str, args)], capture_output=True, timeout=timeout,
                         cwd=bin_dir.parent)  # not the repo root, whose edgelm/ could shadow the install
    assert res.returncode == 0, (args, res.stderr.decode()[-2000:])
    return res.stdout.decode("utf-8", "replace")


# In .venv-min (Python 3.8 where one is installed: see the Makefile's PYTHON_MIN): its Python, the
# installed versions, which edgelm runs, and the device profiles as the oldest tomli (the loader's
# fallback below Python 3.11) parses them; the test compares those with tomllib's parse.
PROBE = """
import importlib.metadata as md, json, pathlib, sys, tomli, edgelm, edgelm.devices
names = [line.split("==")[0] for line in sys.argv[1:]]
profiles = {p.name: tomli.loads(p.read_text())
            for p in sorted((pathlib.Path(edgelm.devices.__file__).parent / "profiles").glob("*.toml"))}
print(json.dumps({"python": list(sys.version_info[:3]), "edgelm": edgelm.__file__, "profiles": profiles,
                  **{n: md.version(n) for n in names}}))
"""


@pytest.mark.slow
def test_device_commands_with_the_oldest_dependencies(bundle_dir, tmp_path, capsys):
    """run / eval / profile / devices / build with pyproject's lower bounds give what the main
    venv gives: catches numpy-2-only and new-onnxruntime-only calls, and graphs (IR version,
    opset) newer than the oldest onnxruntime reads."""
    old = _min_venv()
    pins = min_deps.pins()
    res = subprocess.run([str(old / "python"), "-c", PROBE, *pins], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    versions = json.loads(res.stdout)
    python, profiles = versions.pop("python"), versions.pop("profiles")
    assert python[:2] >= [3, 8] and profiles == {p.name: tomllib.loads(p.read_text())
                                                  for p in sorted((ROOT / "devices" / "profiles").glob("*.toml"))}
    assert Path(versions.pop("edgelm")).resolve().is_relative_to(ROOT), "the min venv runs another edgelm"
    stale = [pin for pin in pins if Version(versions[pin.split("==")[0]]) != Version(pin.split("==")[1])]
    assert stale == [], f"stale {old.parent} ({versions}): make install-min"
    bundle = bundle_dir("mamba")
    args = ("run", bundle, "--max-bytes", 32, "--seed", 0, "--backend", "onnxruntime")
    assert _edgelm(old, *args) == _here(capsys, *args)
    text = tmp_path / "heldout.txt"
    text.write_bytes(TEXT.read_bytes()[:2048])
    assert json.loads(_edgelm(old, "eval", bundle, "--data", text, "--json")) == \
        json.loads(_here(capsys, "eval", bundle, "--data", text, "--json"))
    assert json.loads(_edgelm(old, "devices", "--json")) == json.loads(_here(capsys, "devices", "--json"))
    report = tmp_path / "profile.json"
    _edgelm(old, "profile", bundle, "--bytes", 16, "--streams", "1,2", "--prompt-bytes", 8, "--json", report)
    assert json.loads(report.read_text())["latency_us"]["p50"] > 0
    if shutil.which("cc"):  # `edgelm build`: the native library, timed against onnxruntime
        built = copy_bundle(bundle, tmp_path / "built")
        assert "native library" in _edgelm(old, "build", built)
        args = ("--max-bytes", 32, "--seed", 0, "--backend", "native")
        assert _edgelm(old, "run", built, *args) == _here(capsys, "run", bundle, *args)


# ---------------------------------------------------------------- 5. weights for older onnxruntime

def test_external_tensors_read_what_onnx_reads(bundle_dir):
    onnx = pytest.importorskip("onnx")
    from edgelm.runtime.onnx_data import external_tensors

    path = bundle_dir("mamba") / "step.onnx"
    ours = external_tensors(path.read_bytes())
    model = onnx.load(str(path), load_external_data=False)
    theirs = [(t.name, t.data_type, tuple(t.dims), {e.key: e.value for e in t.external_data})
              for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert [(t.name, t.data_type, t.dims, t.location, str(t.offset), str(t.length)) for t in ours] == \
        [(n, d, s, e["location"], e.get("offset", "0"), e["length"]) for n, d, s, e in theirs]
    assert len(ours) > 10


def _greedy_logits(bundle) -> list:
    from edgelm.runtime import GREEDY, Session

    with Session.open(bundle, backend="onnxruntime") as sess:
        stream = sess.stream(GREEDY, prompt=b"def main():\n")
        return [stream.logits.copy(), b"".join(stream.generate(16))]


def test_one_array_per_weight_runs_what_the_whole_file_runs(bundle_dir, monkeypatch):
    """The path older onnxruntime takes (its only one on Python 3.8), forced on this one."""
    from edgelm.runtime import onnx_data

    bundle = bundle_dir("mamba")
    whole = _greedy_logits(bundle)
    monkeypatch.setattr(onnx_data, "takes_files_in_memory", lambda opts: False)
    per_weight = _greedy_logits(bundle)
    assert per_weight[1] == whole[1]
    assert abs(per_weight[0] - whole[0]).max() < 1e-5


@pytest.mark.parametrize("edit, match", [
    (lambda model: model[:len(model) // 2], "cannot be read"),  # truncated protobuf
    (lambda model: model.replace(b"weights.bin", b"weights.bak"), "not a weights file"),
    (lambda model: model.replace(b"98304", b"98308"), "does not fit"),  # a length past its shape
])
def test_a_forged_graph_is_one_line_error(bundle_dir, edit, match):
    from edgelm.errors import EdgelmError
    from edgelm.runtime.onnx_data import initializer_arrays

    bundle = bundle_dir("mamba")
    model = (bundle / "step.onnx").read_bytes()
    files = {"weights.bin": np.frombuffer((bundle / "weights.bin").read_bytes(), np.uint8)}
    assert len(initializer_arrays(model, files, "step.onnx")) > 10
    with pytest.raises(EdgelmError, match=match):
        initializer_arrays(edit(model), files, "step.onnx")


def test_int4_weights_on_older_onnxruntime_are_one_line_error():
    """numpy has no int4, so ONNX Runtime before 1.24 cannot be handed an int4 bundle's weights."""
    from edgelm.errors import EdgelmError
    from edgelm.runtime.onnx_data import ExternalTensor, _array

    int4 = ExternalTensor("w", 22, (4,), "weights.bin", 0, 2)
    with pytest.raises(EdgelmError, match="int4 or fp8.*1.24"):
        _array(int4, {"weights.bin": np.zeros(8, np.uint8)}, "step.onnx")
