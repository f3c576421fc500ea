"""Native backend: the bundle's step and prefill graphs compiled to C (model.so, built on this
device by `edgelm build`), called through ctypes. No ONNX Runtime, no per-node dispatch.

The library is loaded from the bundle's verified bytes, never by path: its sha256 is checked
against the manifest's `built` record, the bytes go into an anonymous memory file
(memfd_create; a private temporary file where there is none) and that is what dlopen maps, so
what runs is exactly what was hashed. The weights are the bundle's verified weights.bin, in
memory once; the library checks their size and checksum against what it was generated from.
Buffers are the base class's ping-pong state arrays: the C functions read state_in and write
state_out through one pointer per state tensor, precomputed for both parities.
"""

from __future__ import annotations

import ctypes
import os
import platform
import tempfile

import numpy as np

from ...errors import EdgelmError
from ..manifest import NATIVE_LIBRARY, WEIGHTS
from .base import Backend

ABI_VERSION = 1
_P = ctypes.c_void_p


def available() -> str | None:
    return None  # ctypes and numpy only; whether a bundle has a library is the bundle's question


def host_id() -> str:
    """This CPU: machine, model name and instruction-set flags. A library built with
    -march=native runs only where this matches (elsewhere it may die on an illegal instruction)."""
    import hashlib

    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "CPU part") and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.strip()
    except OSError:
        pass
    return f"{platform.machine()} {model} {hashlib.sha256(flags.encode()).hexdigest()[:12]}".strip()


def usable(art) -> str | None:
    """None if the library `art` can run on this CPU, else why not."""
    if art.info.get("machine", platform.machine()) != platform.machine():
        return f"{art.file} was compiled for {art.info['machine']}, not this {platform.machine()}; run `edgelm build` here"
    built_for = art.info.get("host")
    if built_for is not None and built_for != host_id():
        return (f"{art.file} was compiled for another CPU ({built_for}); run `edgelm build` on this machine")
    return None


def load_library(data: bytes) -> tuple[ctypes.CDLL, int | None]:
    """dlopen the verified bytes: (library, the memory file's fd to keep open)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("edgelm-model.so", getattr(os, "MFD_CLOEXEC", 0))
        os.write(fd, data)
        return ctypes.CDLL(f"/proc/self/fd/{fd}"), fd
    with tempfile.TemporaryDirectory() as tmp:  # 0700: nobody else can swap the file
        path = os.path.join(tmp, NATIVE_LIBRARY)
        with open(path, "wb") as f:
            f.write(data)
        return ctypes.CDLL(path), None


def _aligned(data: bytes, align: int = 64) -> np.ndarray:
    """The weights in a cache-line-aligned buffer: the bundle's tensors sit at 64-byte offsets,
    and a misaligned base costs lstm-tiny 40% of its step (17-19 us against 12.8, measured)."""
    raw = np.empty(len(data) + align, np.uint8)
    start = (-raw.ctypes.data) % align
    out = raw[start:start + len(data)]
    out[:] = np.frombuffer(data, np.uint8)
    return out


def bind(lib: ctypes.CDLL) -> dict:
    """Declare model.h's functions to ctypes; returns {"step": ..., "prefill": ...}, the batch
    calls (weights, streams, bytes, state_in[], state_out[], logits, scratch)."""
    lib.edgelm_abi_version.restype = ctypes.c_int
    lib.edgelm_check_weights.argtypes = [_P, ctypes.c_size_t]
    lib.edgelm_check_weights.restype = ctypes.c_int
    lib.edgelm_scratch_bytes.argtypes = [ctypes.c_size_t]
    lib.edgelm_scratch_bytes.restype = ctypes.c_size_t
    for fn in (lib.edgelm_step_batch, lib.edgelm_prefill_batch):
        fn.argtypes = [_P, ctypes.c_size_t, _P, _P, _P, _P, _P]
        fn.restype = None
    return {"step": lib.edgelm_step_batch, "prefill": lib.edgelm_prefill_batch}


def unload(lib: ctypes.CDLL) -> None:
    import _ctypes

    (getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary"))(lib._handle)


class NativeBackend(Backend):
    name = "native"

    def __init__(self, bundle, device, max_streams):
        super().__init__(bundle, device, max_streams)
        if device not in (None, "cpu"):
            raise EdgelmError(f"the native backend runs on the CPU, not {device!r}; use device='cpu'")
        art = bundle.native_library()
        if art is None:
            raise EdgelmError(f"{bundle.path} has no native library; run `edgelm build {bundle.path}` "
                              "on this machine (needs a C compiler), or use backend='onnxruntime'")
        reason = usable(art)
        if reason:
            raise EdgelmError(reason)
        self._lib, self._fd = load_library(bundle.read_artifact(art))
        self._calls: dict[tuple[str, int, int], tuple] = {}
        try:
            self._check(bundle, art)
        except BaseException:
            self.close()
            raise
        self._scratch = np.zeros(0, np.uint8)
        self._ptrs = {}  # parity -> (state_in pointers, state_out pointers)
        a, b = self.state_in, self.state_out
        arr = ctypes.c_void_p * max(1, len(a))
        self._ptrs[0] = (arr(*[x.ctypes.data for x in a]), arr(*[x.ctypes.data for x in b]))
        self._ptrs[1] = (self._ptrs[0][1], self._ptrs[0][0])
        self.info = art.info

    def _check(self, bundle, art) -> None:
        """Bind the ABI; refuse another ABI version or another bundle's weights."""
        self._bind()
        if self._lib.edgelm_abi_version() != ABI_VERSION:
            raise EdgelmError(f"{art.file} speaks native ABI {self._lib.edgelm_abi_version()}, this edgelm "
                              f"{ABI_VERSION}; run `edgelm build {bundle.path}` again")
        self._weights = _aligned(bundle.read(WEIGHTS))
        if self._lib.edgelm_check_weights(self._weights.ctypes.data, self._weights.nbytes) != 0:
            raise EdgelmError(f"{art.file} was not generated from this bundle's {WEIGHTS}; run "
                              f"`edgelm build {bundle.path}` again")

    def _bind(self) -> None:
        self._fns = bind(self._lib)

    @property
    def buffer_bytes(self) -> int:
        return super().buffer_bytes + self._scratch.nbytes

    def _scratch_for(self, batch: int) -> int:
        need = self._lib.edgelm_scratch_bytes(batch) + 64
        if self._scratch.nbytes < need:  # grown: every cached call's scratch pointer is stale
            self._scratch = np.zeros(need, np.uint8)
            self._calls.clear()
        return (self._scratch.ctypes.data + 63) & ~63  # 64-byte aligned

    def _run(self, graph: str, batch: int) -> None:
        key = (graph, batch, self.parity)
        call = self._calls.get(key)
        if call is None:  # pointers are fixed for a (graph, batch, parity): work them out once
            ids = self.ids_prefill if graph == "prefill" else self.ids_step
            sin, sout = self._ptrs[self.parity]
            scratch = self._scratch_for(batch)
            args = (_P(self._weights.ctypes.data), ctypes.c_size_t(batch), _P(ids.ctypes.data), sin, sout,
                    _P(self.logits.ctypes.data), _P(scratch))  # ctypes objects: no conversion per call
            call = self._calls[key] = (self._fns[graph], args)
        call[0](*call[1])

    def describe(self) -> str:
        return f"native C ({self.info.get('compiler', 'unknown compiler')}, {' '.join(self.info.get('flags', []))})"

    def close(self) -> None:
        """Unload the library, then release its memory file. In that order: dlopen knows a library
        by its path, and a later /proc/self/fd/N with the same N must load afresh."""
        self._calls.clear()
        self._fns = {}
        if self._lib is not None:
            unload(self._lib)
            self._lib = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


BACKEND = NativeBackend
