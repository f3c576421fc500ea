"""mypy against tensorrt-stubs (TensorRT 10), shared by tests/test_trt_build.py (edgelm's TensorRT
code and tests/trt_standin.py) : the repaired stubs as a fixture, and the mypy command.

tensorrt-stubs 10.13.0.35.1 as installed is invisible to mypy (its `tensorrt/` has no py.typed, so
the plain command passes without checking anything), its tensorrt_bindings/tensorrt.pyi has five
syntax errors, and it defines the module-level data type `bool: DataType` (tensorrt.bool), which
shadows the builtin in every `-> bool` / `x: bool` annotation of the stub, so mypy reads them all
as Any (a float passed as `ignore_mismatch: bool` went unnoticed). So we copy the stubs, fix
those lines, spell the annotations `builtins.bool`, and put the copy on MYPYPATH.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB_FIXES = [(r"\(self(: IPluginV3)?, in: ", r"(self\1, in_: "),
              (r"channel_axis: int\) -> IScaleLayer", "channel_axis: int = ...) -> IScaleLayer"),
              # `bool` in an annotation means the builtin, not tensorrt.bool (a DataType)
              (r"(?:(?<=: )|(?<=-> )|(?<=\[)|(?<=, )|(?<=\| ))bool\b", "builtins.bool"),
              (r"\nimport typing\n", "\nimport builtins\nimport typing\n")]
MYPY_INI = "[mypy]\n[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n"


@pytest.fixture(scope="module")
def trt_stubs(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None or importlib.util.find_spec("mypy") is None:
        pytest.skip("tensorrt-stubs or mypy is not installed (pip install 'edgelm[test]')")
    site = Path(spec.origin).parent.parent
    out = tmp_path_factory.mktemp("trt_stubs")
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / pkg, out / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pyi = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = pyi.read_text()
    for pattern, repl in STUB_FIXES:
        text = re.sub(pattern, repl, text, count=1 if "import" in pattern else 0)
    pyi.write_text(text)
    (out / "mypy.ini").write_text(MYPY_INI)
    return out


def run_mypy(stubs: Path, path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"),
           "--cache-dir", str(stubs / ".mypy_cache"), "--ignore-missing-imports",
           "--follow-imports=silent", str(path)]
    env = {"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
