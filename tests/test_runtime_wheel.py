"""The core wheel installs into a fresh venv without torch, and runs a bundle end to end.

Builds the wheel from a copy of the source tree, installs it (numpy, onnxruntime, typer come
from PyPI) into a new venv under tmp, with pip's cache under tmp too. Slow (network), but it is
the one test that proves a device install works; `make test` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime_fixtures import bundle_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "edgelm", "runtime", "export", "devices"]


def _sh(args, env, timeout=600):
    res = subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout, env=env,
                         cwd=env["EDGELM_TEST_CWD"])  # never the repo root: its edgelm/ would shadow the wheel
    assert res.returncode == 0, (args, res.stdout.decode()[-2000:], res.stderr.decode()[-2000:])
    return res.stdout.decode()


def _copy_sources(dest: Path) -> None:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    if not (dest / "README.md").exists():
        (dest / "README.md").write_text("edgelm\n")


def _env(tmp: Path) -> dict:
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    env["EDGELM_TEST_CWD"] = str(tmp)
    return env


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (tests/test_device_python.py reads its metadata)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    _copy_sources(src)
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src], _env(tmp))
    return next(dist.glob("edgelm-*.whl"))


@pytest.mark.slow
def test_wheel_installs_without_torch_and_runs_a_bundle(bundle_dir, core_wheel, tmp_path):
    bundle = bundle_dir("mamba")
    env = _env(tmp_path)
    venv, wheel = tmp_path / "venv", core_wheel
    _sh([sys.executable, "-m", "venv", venv], env)
    py, edgelm = venv / "bin" / "python", venv / "bin" / "edgelm"
    _sh([py, "-m", "pip", "install", "-q", wheel], env)
    probe = ("import importlib.util as u, sys; assert u.find_spec('torch') is None, 'torch installed'; "
             "import edgelm.runtime; assert 'torch' not in sys.modules; print(edgelm.runtime.__file__)")
    assert str(venv) in _sh([py, "-c", probe], env, timeout=120)
    res = subprocess.run([py, "-c", "import torch"], capture_output=True, env=env, timeout=60, cwd=tmp_path)
    assert res.returncode != 0
    out = _sh([edgelm, "run", bundle, "--max-bytes", "20", "--seed", "1", "--json"], env, timeout=120)
    assert '"bytes": 20' in out.splitlines()[-1]
    again = subprocess.run([str(edgelm), "run", str(bundle), "--max-bytes", "20", "--seed", "1"],
                           capture_output=True, env=env, timeout=120, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout
    report = tmp_path / "profile.json"  # the profiler runs where the bundle runs: no torch either
    _sh([edgelm, "profile", bundle, "--bytes", "32", "--streams", "1,2", "--prompt-bytes", "16",
         "--json", report], env, timeout=120)
    assert json.loads(report.read_text())["latency_us"]["p50"] > 0
    bad = subprocess.run([str(edgelm), "run", str(bundle), "--backend", "torch"],
                         capture_output=True, env=env, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and b"pip install 'edgelm[export]'" in bad.stderr
