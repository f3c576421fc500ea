"""Backend registry: name -> module in this package, imported only when that backend is picked.

Each backend module defines `BACKEND` (a `base.Backend` subclass) and `available() -> str | None`
(None when usable, else the one-line reason, naming the package that provides it).
"""

from __future__ import annotations

import importlib

from ...errors import EdgelmError

BACKENDS = {"onnxruntime": "ort", "tensorrt": "trt", "torch": "torch_ref"}
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def backend_module(name: str):
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise EdgelmError(f"unknown backend {name!r}; choose auto, {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{BACKENDS[name]}")


def open_backend(name: str, bundle, device: str | None, max_streams: int):
    """Instantiate backend `name` ('auto' picks tensorrt if an engine is usable, else onnxruntime)."""
    if name == "auto":
        name = "tensorrt" if _trt_usable(bundle, device) else "onnxruntime"
    mod = backend_module(name)
    reason = mod.available()
    if reason:
        raise EdgelmError(reason)
    return mod.BACKEND(bundle, device, max_streams)


def _trt_usable(bundle, device: str | None) -> bool:
    if device not in (None, "cuda") or not all(bundle.artifact(g) for g in ("step", "prefill")):
        return False
    return importlib.import_module(f"{__name__}.trt").available() is None
