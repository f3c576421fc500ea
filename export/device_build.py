"""`edgelm build BUNDLE`: what the device builds from a bundle, on the device.

- the native C library (model.so) where the bundle carries C (fp32 / int8 bundles): a C
  compiler is required on CPU targets and optional beside TensorRT
- the TensorRT engines where the bundle's target has TensorRT
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgelmError
from ..runtime import manifest as fmt
from ..runtime.manifest import Artifact


def build_bundle(bundle_dir: str | Path) -> list[Artifact]:
    from ..runtime.bundle import load_bundle
    from .native.build import build_native, compiler

    manifest = load_bundle(bundle_dir).manifest
    engines = bool(manifest.target.get("tensorrt_versions"))
    has_c = fmt.NATIVE_SOURCES[1] in manifest.files
    if not engines and not has_c:
        why = manifest.validation.get("native", {}).get("status", "none: exported before the native C target")
        why = why[len("none: "):] if why.startswith("none: ") else why  # not removeprefix: Python 3.8
        raise EdgelmError(f"{bundle_dir} has nothing to build here: its target {manifest.target['name']} has no "
                          f"TensorRT and the bundle carries no C ({why})")
    arts = []
    if has_c and (not engines or compiler() is not None):
        arts.append(build_native(bundle_dir))
    if engines:
        from .trt_build import build_engine

        arts += build_engine(bundle_dir)
    return arts
