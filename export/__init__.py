"""The compiler side: checkpoint -> loop-free ONNX step/prefill graphs -> validated bundle.

    export_bundle(model_path, target, precision, out_dir, force=False) -> verified Manifest
    check_tensorrt_compat(onnx_model, profile, base_dir) -> list of problems (empty: builds);
                                   base_dir: where external weights are, for value checks
    fused.fuse(model, dtype) -> the few-node single-step module the graphs are exported from
                                   (export/fused/, one file per architecture)

Imports torch and onnx lazily through the submodules: `import edgelm.export` stays cheap.
"""

from __future__ import annotations


def export_bundle(model_path, target="cpu", precision=None, out_dir="bundle", force=False, **kw):
    from .bundle import export_bundle as _export_bundle

    return _export_bundle(model_path, target, precision, out_dir, force=force, **kw)


def check_tensorrt_compat(onnx_model, profile, base_dir: str | None = None) -> list[str]:
    from .trt_ops import check_tensorrt_compat as _check

    return _check(onnx_model, profile, base_dir)


__all__ = ["check_tensorrt_compat", "export_bundle"]
