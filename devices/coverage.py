"""Which edgelm runtime paths work on a device, and why (standard library only).

A Jetson's software is fixed by its JetPack: Ubuntu, Python, CUDA and TensorRT come together, and
the paths that run there follow from them. Profiles record each JetPack line they run as a
`SoftwareStack` (devices/profiles/jetson.toml, with sources); `stack_problems` checks that the paths
a stack claims are possible with what it ships, so the table cannot promise a path its Python or
TensorRT rules out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

# The runtime paths, in order of preference on a device that has several.
PATHS = {
    "tensorrt": "edgelm's Python runtime on TensorRT engines that `edgelm build` makes on the device "
                "(JetPack's tensorrt module + cuda-python)",
    "python-ort": "edgelm's Python runtime on ONNX Runtime (`edgelm run` / `profile`; numpy + onnxruntime)",
    "native-c": "the bundle's C library on the CPU (`build_native.sh` or `edgelm build`); apps link model.h, "
                "no Python (fp32 and int8 bundles)",
    "trtexec": "`build_engine.sh` (trtexec) writes the engines for your own C++ TensorRT app; "
               "edgelm's runtime does not drive them",
}
PYTHON_PATHS = ("tensorrt", "python-ort")  # need the device-side Python minimum
TENSORRT_PATHS = ("tensorrt", "trtexec")  # need TensorRT on the device


@dataclass(frozen=True)
class SoftwareStack:
    """One JetPack release line a device runs, and the edgelm runtime paths that work on it."""

    jetpack: str  # "5.1.2-5.1.5": the releases this line covers
    l4t: str  # Jetson Linux (L4T) release
    ubuntu: str
    python: str  # the system Python JetPack ships
    cuda: str
    tensorrt: str  # "" where JetPack has none for the device
    paths: Tuple[str, ...]
    note: str = ""  # what a user of this line must know (one sentence)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["paths"] = list(self.paths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SoftwareStack":
        return cls(**{**d, "paths": tuple(d.get("paths", ()))})


def version_tuple(text: str) -> Tuple[int, ...]:
    """"3.10" -> (3, 10); "8.5.2" -> (8, 5, 2)."""
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def python_runtime_min() -> Tuple[int, int]:
    from ..python_support import DEVICE_PYTHON  # the one owner of the Python minimums

    return DEVICE_PYTHON


def stack_problems(stack: SoftwareStack, tensorrt_versions: Tuple[str, ...]) -> list:
    """Why a stack's claimed paths cannot work with what it ships (empty: consistent)."""
    problems = [f"unknown runtime path {p!r} (known: {', '.join(PATHS)})" for p in stack.paths if p not in PATHS]
    need = python_runtime_min()
    if version_tuple(stack.python) < need:
        problems += [f"JetPack {stack.jetpack} ships Python {stack.python}; path {p} needs Python "
                     f"{'.'.join(map(str, need))}+" for p in stack.paths if p in PYTHON_PATHS]
    if not stack.tensorrt:
        problems += [f"JetPack {stack.jetpack} has no TensorRT for path {p}" for p in stack.paths
                     if p in TENSORRT_PATHS]
    elif not any(stack.tensorrt.startswith(v) for v in tensorrt_versions):
        problems.append(f"JetPack {stack.jetpack}'s TensorRT {stack.tensorrt} is not among the profile's "
                        f"tensorrt_versions {list(tensorrt_versions)}")
    if stack.paths and "native-c" not in stack.paths:
        problems.append("every Linux device with a C compiler runs the native-c path")
    return problems


def paths_of(stacks) -> Tuple[str, ...]:
    """The paths any of the stacks runs, in PATHS order."""
    found = {p for s in stacks for p in s.paths}
    return tuple(p for p in PATHS if p in found)
