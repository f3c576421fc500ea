"""Shared fixtures of the runtime tests: one exported bundle per architecture.

By default each bundle is exported (target cpu, fp32, with model.pt for the torch backend) from
the committed trained model models/{arch}-tiny.pt: a trained model's outputs depend on its state,
so lost state, a wrong prefill or a stale slot shows up in its bytes (a random-init model's barely
change). seed/tag ask for a random-init model instead. Bundles are made once per test session
under pytest's tmp dir; EDGELM_TEST_BUNDLES=DIR uses prebuilt bundles DIR/{arch} instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ARCHS = ["lstm", "gru", "mingru", "mamba", "rglru"]
MODELS = Path(__file__).resolve().parents[1] / "models"
_CACHE: dict[str, Path] = {}


def prebuilt(key: str) -> Path | None:
    """EDGELM_TEST_BUNDLES/key when that prebuilt bundle exists (bench/mutation.py makes them)."""
    root = os.environ.get("EDGELM_TEST_BUNDLES")
    return Path(root) / key if root and (Path(root) / key).is_dir() else None


def export_tiny(arch: str, base: Path, seed: int = 0, tag: str = "") -> Path:
    key = f"{arch}{tag}"
    if key in _CACHE:
        return _CACHE[key]
    if prebuilt(key):
        _CACHE[key] = prebuilt(key)
        return _CACHE[key]
    torch = pytest.importorskip("torch")
    from edgelm.checkpoint import save_model
    from edgelm.models import build_model

    try:
        from edgelm.export import export_bundle
    except ImportError:
        pytest.skip("edgelm.export.export_bundle is not available yet")
    model_path = MODELS / f"{arch}-tiny.pt"
    if seed or tag:
        torch.manual_seed(seed)
        model_path = base / f"{key}.pt"
        save_model(build_model(arch, preset="tiny"), model_path)
    export_bundle(model_path, "cpu", None, base / key, with_reference=True)  # model.pt: torch backend
    _CACHE[key] = base / key
    return _CACHE[key]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    """bundle_dir(arch, seed=0, tag="") -> Path of an exported bundle (cached per session)."""
    base = tmp_path_factory.getbasetemp() / "runtime-bundles"
    base.mkdir(exist_ok=True)
    return lambda arch, seed=0, tag="": export_tiny(arch, base, seed, tag)
