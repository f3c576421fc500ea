"""The compiler side: checkpoint -> loop-free ONNX step/prefill graphs -> validated bundle.

    export_bundle(model_path, target, precision, out_dir, force=False) -> verified Manifest
    temporary_bundle(model_path) -> a context manager: a cpu bundle in a temporary directory
    check_tensorrt_compat(onnx_model, profile, base_dir) -> list of problems (empty: builds);
                                   base_dir: where external weights are, for value checks
    fused.fuse(model, dtype) -> the few-node single-step module the graphs are exported from
                                   (export/fused/, one file per architecture)

Imports torch and onnx lazily through the submodules: `import edgelm.export` stays cheap.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

from ..errors import EdgelmError


def export_bundle(model_path, target="cpu", precision=None, out_dir="bundle", force=False, **kw):
    from .bundle import export_bundle as _export_bundle

    return _export_bundle(model_path, target, precision, out_dir, force=force, **kw)


@contextlib.contextmanager
def temporary_bundle(model_path, target: str = "cpu", trusted: bool = False):
    """Export a model into a temporary bundle for `edgelm run MODEL`; removed afterwards."""
    if trusted:
        raise EdgelmError("--trusted-key checks a bundle's signature and a model has none: "
                          "`edgelm export` and `edgelm sign` it, then run the bundle")
    with tempfile.TemporaryDirectory(prefix="edgelm-run.") as tmp:
        start = time.perf_counter()
        export_bundle(model_path, target, None, Path(tmp) / "bundle")
        sys.stderr.write(f"exported {model_path} to a temporary {target} bundle in "
                         f"{time.perf_counter() - start:.1f} s; `edgelm export` it once to skip this\n")
        yield Path(tmp) / "bundle"


def check_tensorrt_compat(onnx_model, profile, base_dir: str | None = None) -> list[str]:
    from .trt_ops import check_tensorrt_compat as _check

    return _check(onnx_model, profile, base_dir)


__all__ = ["check_tensorrt_compat", "export_bundle", "temporary_bundle"]
