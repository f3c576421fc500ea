"""Backend registry: name -> module in this package, imported only when that backend is picked.

Each backend module defines `BACKEND` (a `base.Backend` subclass) and `available() -> str | None`
(None when usable, else the one-line reason, naming the package that provides it).
"""

from __future__ import annotations

import importlib

from ...errors import EdgelmError

BACKENDS = {"onnxruntime": "ort", "tensorrt": "trt", "native": "native", "torch": "torch_ref"}
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "c": "native"}


def backend_module(name: str):
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise EdgelmError(f"unknown backend {name!r}; choose auto, {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{BACKENDS[name]}")


def open_backend(name: str, bundle, device: str | None, max_streams: int):
    """Instantiate backend `name`. 'auto' picks tensorrt if an engine is usable, else native if
    its library was built for this CPU and measured faster than onnxruntime when it was built,
    else onnxruntime."""
    if name == "auto":
        name = ("tensorrt" if _trt_usable(bundle, device) else
                "native" if _native_preferred(bundle, device) else "onnxruntime")
    mod = backend_module(name)
    reason = mod.available()
    if reason:
        raise EdgelmError(reason)
    return mod.BACKEND(bundle, device, max_streams)


def _native_preferred(bundle, device: str | None) -> bool:
    """A signed bundle opened with trusted keys never loads native code by default: the library is
    built on the device, outside the signature; backend='native' is the explicit opt-in."""
    art = bundle.native_library() if device in (None, "cpu") and not bundle.signed else None
    if art is None or art.bundle_id != bundle.bundle_id:  # none, or stale: built from another bundle
        return False
    timing = art.info.get("timing", {})
    faster = timing.get("native_us", float("inf")) < timing.get("onnxruntime_us", 0.0)
    return faster and importlib.import_module(f"{__name__}.native").usable(art) is None


def _trt_usable(bundle, device: str | None) -> bool:
    if device not in (None, "cuda") or not all(bundle.artifact(g) for g in ("step", "prefill")):
        return False
    return importlib.import_module(f"{__name__}.trt").available() is None
