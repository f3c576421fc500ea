"""A stand-in for the parts of TensorRT 10 and cuda-python's cudart that edgelm uses, which really
computes: an "engine" runs its bundle's ONNX graph in ONNX Runtime on fake device memory. The same
engines and fake GPU also wear the TensorRT 8.5 and 8.2 Python APIs (Jetson Xavier, Jetson Nano):
`installed(api="8.5")` / `installed(api="8.2")`, from tests/trt_standin_v8.py, which documents
them and the NVIDIA documentation they follow.

Why: TensorRT cannot be installed on the development machines, so runtime/backends/trt.py and
export/trt_build.py would otherwise only ever be type-checked. With `installed()` active,
`import tensorrt` and `from cuda.bindings import runtime as cudart` find this module's stand-ins,
`edgelm.export.trt_build.build_engine` builds real (stand-in) plans, and
`Session.open(bundle, backend="tensorrt")` runs them: the bytes it produces can be compared with the
onnxruntime backend's.

Faithful where it matters to the code under test:
  - The API surface is checked against tensorrt-stubs (TensorRT 10): every class below subclasses
    its stub class when type-checking, so mypy checks each method's signature as an override
    (tests/test_trt_build.py runs mypy on this file). Enums mirror the stubs' names and values
    (tests/test_trt_backend.py compares them). Members of another generation's API are absent
    (`_Absent`: AttributeError on reading and on setting, as on the real pybind11 objects), e.g.
    IBuilderConfig.max_workspace_size here, builder_optimization_level in 8.x. Members named with a
    leading underscore and documented "not TensorRT API" are the stand-in's own.
  - A plan is tied to its graph: it holds a header (TensorRT version and GPU it was built for, the
    engine's I/O tensors and optimisation profile, the sha256 of the ONNX graph and of each weights
    file) followed by the graph's ONNX bytes and the weights it reads, and a sha256 trailer. A plan
    for another TensorRT version or GPU, or a corrupted one, does not deserialize (None, an error
    logged), as with TensorRT.
  - Device memory is separate from host memory: `cudaMalloc` hands out fake addresses above the
    47-bit user address space, backed by numpy buffers filled with 0xFF (uninitialised memory
    reads as NaN). `cudaMemcpyAsync` honours its `kind`: a host address where a device pointer
    belongs (or the reverse), or a copy past an allocation, fails with cudaErrorInvalidValue. An
    engine reads every input at its bound address with its bound shape and writes every output to
    its bound address; an access outside an allocation or a kernel fault (ONNX Runtime rejecting
    the data, e.g. a byte id out of range) is a sticky cudaErrorIllegalAddress, as on a GPU, that
    every later cudart call returns.
  - `set_input_shape` refuses (returns False, logs an error) a shape of the wrong rank, static
    dims that differ from the engine's, or a dynamic dim outside the optimisation profile.
    `execute_async_v3` refuses unset input shapes or addresses, and inputs that disagree on a
    shared dynamic dimension (the ONNX graph's `batch`).
  - Streams: host memory here is pageable numpy memory, for which CUDA's copies are synchronous
    with respect to the host, so work on a stream that is not capturing runs when it is enqueued.
    During capture (`cudaStreamBeginCapture`) work is recorded, not run, with the addresses and
    shapes bound at enqueue time; `cudaGraphLaunch` replays it. A copy from or to pageable host
    memory, or a synchronize, during capture fails with cudaErrorStreamCaptureUnsupported and
    invalidates the capture.
  - Timing caches carry the GPU and TensorRT version they were made on: `set_timing_cache(cache,
    ignore_mismatch=False)` with another GPU's cache returns False, as documented.

Deliberately stricter than TensorRT: `set_timing_cache`'s `ignore_mismatch` must be a bool. The
real pybind11 binding would convert any object with `__bool__` (0.5 -> True); the stubs declare
bool, and a float there is a bug that this stand-in makes fail loudly (TypeError).

Knobs on `Device` for the paths a real GPU takes only sometimes: `capture` ("ok", or "refuse":
an enqueue returns False during capture without touching the stream, or "invalidate": it breaks
the capture); `api` and `tensorrt_version` pick the generation. Counters (`kernel_runs`,
`graph_launches`, `calls` of the execution context's API, ...) let tests see what ran.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import enum
import hashlib
import importlib.machinery
import json
import operator
import struct
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, overload

import numpy as np
from typing_extensions import override  # typing.override from Python 3.12

if TYPE_CHECKING:  # checked against tensorrt-stubs (TensorRT 10): overrides must match the real API
    from tensorrt import Builder as _BuilderBase
    from tensorrt import BuilderFlag, DataType, MemoryPoolType, NetworkDefinitionCreationFlag, TensorIOMode
    from tensorrt import Dims as _DimsBase
    from tensorrt import ExecutionContextAllocationStrategy, IRuntimeConfig, IStreamReader, IStreamReaderV2
    from tensorrt import IBuilderConfig as _ConfigBase
    from tensorrt import ICudaEngine as _EngineBase
    from tensorrt import IExecutionContext as _ContextBase
    from tensorrt import IHostMemory as _HostMemoryBase
    from tensorrt import ILogger as _ILoggerBase
    from tensorrt import INetworkDefinition as _NetworkBase
    from tensorrt import IOptimizationProfile as _ProfileBase
    from tensorrt import ITimingCache as _TimingCacheBase
    from tensorrt import Logger as _LoggerBase
    from tensorrt import OnnxParser as _ParserBase
    from tensorrt import ParserError as _ParserErrorBase
    from tensorrt import Runtime as _RuntimeBase

    Severity = _ILoggerBase.Severity
else:
    _BuilderBase = _DimsBase = _ConfigBase = _EngineBase = _ContextBase = _HostMemoryBase = object
    _ILoggerBase = _NetworkBase = _ProfileBase = _TimingCacheBase = _LoggerBase = _ParserBase = object
    _ParserErrorBase = _RuntimeBase = object

    # The enums, with the stubs' names and values (tests/test_trt_backend.py compares them).
    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5
        FP8 = 6
        BF16 = 7
        INT64 = 8
        INT4 = 9
        FP4 = 10
        E8M0 = 11

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0
        DLA_MANAGED_SRAM = 1
        DLA_LOCAL_DRAM = 2
        DLA_GLOBAL_DRAM = 3
        TACTIC_DRAM = 4
        TACTIC_SHARED_MEMORY = 5

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1
        PREFER_JIT_PYTHON_PLUGINS = 2
        PREFER_AOT_PYTHON_PLUGINS = 3

    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        INT8 = 1
        DEBUG = 2
        GPU_FALLBACK = 3
        REFIT = 4
        DISABLE_TIMING_CACHE = 5
        TF32 = 6
        SPARSE_WEIGHTS = 7
        SAFETY_SCOPE = 8
        OBEY_PRECISION_CONSTRAINTS = 9
        PREFER_PRECISION_CONSTRAINTS = 10
        DIRECT_IO = 11
        REJECT_EMPTY_ALGORITHMS = 12
        VERSION_COMPATIBLE = 13
        EXCLUDE_LEAN_RUNTIME = 14
        FP8 = 15
        ERROR_ON_TIMING_CACHE_MISS = 16
        BF16 = 17
        DISABLE_COMPILATION_CACHE = 18
        WEIGHTLESS = 19
        STRIP_PLAN = 19  # an alias, as in the stubs
        REFIT_IDENTICAL = 20
        WEIGHT_STREAMING = 21
        INT4 = 22
        REFIT_INDIVIDUAL = 23
        STRICT_NANS = 24
        MONITOR_MEMORY = 25
        FP4 = 26
        EDITABLE_TIMING_CACHE = 27
        DISTRIBUTIVE_INDEPENDENCE = 28

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4


TRT_VERSION = "10.13.0.35"  # the stubs' version
API_VERSIONS = {"8.2": "8.2.1.8", "8.5": "8.5.2.2", "10": TRT_VERSION}  # installed(api=...): tensorrt.__version__
GPU = "NVIDIA H100 80GB HBM3"
COMPUTE_CAPABILITY = "9.0"

NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_,
               DataType.UINT8: np.uint8}
ONNX_TYPES = {1: DataType.FLOAT, 2: DataType.UINT8, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
              9: DataType.BOOL, 10: DataType.HALF, 16: DataType.BF16}


class _Absent:
    """A member the installed API generation lacks (e.g. max_workspace_size in 10.x,
    builder_optimization_level in 8.x): reading or setting it raises AttributeError, as the real
    pybind11 objects do, so code calling the wrong generation's API fails here too."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        raise AttributeError(f"'tensorrt.{getattr(owner, '__name__', '?')}' object has no attribute '{self.name}'")

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError(f"'tensorrt.{type(obj).__name__}' object has no attribute '{self.name}'")


def without(*names: str):
    """Class decorator: the stand-in lacks these members (each an _Absent), as an older API does."""
    def mark(cls: type) -> type:
        for name in names:
            member = _Absent()
            member.__set_name__(cls, name)
            setattr(cls, name, member)
        return cls
    return mark


def _log(logger: _ILoggerBase | None, severity: Severity, msg: str) -> None:
    if logger is not None:
        logger.log(severity, msg)


def _pybind_int(value: object, what: str) -> int:
    """What a pybind11 int argument accepts: ints and objects with __index__ or __int__, no floats."""
    if isinstance(value, float) or value is None:
        raise TypeError(f"{what}: incompatible function arguments ({type(value).__name__} is not an int)")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return int(value)  # type: ignore[call-overload]  # cuda-python handles define __int__


# ================================================================ the fake GPU (shared by both stand-ins)

class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


_KINDS = {(False, False): cudaMemcpyKind.cudaMemcpyHostToHost, (False, True): cudaMemcpyKind.cudaMemcpyHostToDevice,
          (True, False): cudaMemcpyKind.cudaMemcpyDeviceToHost, (True, True): cudaMemcpyKind.cudaMemcpyDeviceToDevice}


class _Handle:
    """cuda-python's opaque handle types (cudaStream_t, cudaGraph_t, cudaGraphExec_t): int() is the address."""

    def __init__(self, value: int = 0) -> None:
        self._value = int(value)

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class cudaStream_t(_Handle):  # noqa: N801
    pass


class cudaGraph_t(_Handle):  # noqa: N801
    def __init__(self, value: int, ops: list[Callable[[], None]]) -> None:
        super().__init__(value)
        self.ops = ops


class cudaGraphExec_t(cudaGraph_t):  # noqa: N801
    pass


class _Fault(Exception):
    """A device-side fault: becomes the sticky cudaErrorIllegalAddress."""


@dataclass
class _Stream:
    capturing: list[Callable[[], None]] | None = None
    invalidated: bool = False


@dataclass
class Device:
    """One fake GPU: its memory, streams and sticky error, and what has run on it."""

    name: str = GPU
    compute_capability: str = COMPUTE_CAPABILITY
    api: str = "10"  # the Python API generation: "10" (this file), "8.5" or "8.2" (tests/trt_standin_v8.py)
    tensorrt_version: str = ""  # tensorrt.__version__; by default API_VERSIONS[api]
    capture: str = "ok"  # "ok" | "refuse" | "invalidate": what an enqueue does during capture
    allocations: dict[int, np.ndarray] = field(default_factory=dict)  # base address -> bytes
    streams: dict[int, _Stream] = field(default_factory=lambda: {0: _Stream()})  # 0: the legacy stream
    sticky: cudaError_t | None = None
    kernel_runs: int = 0  # engine executions (direct or replayed)
    graph_launches: int = 0
    captures: int = 0
    copies: dict[str, int] = field(default_factory=lambda: {"h2d": 0, "d2h": 0, "d2d": 0})
    calls: collections.Counter = field(default_factory=collections.Counter)  # execution context API calls
    _next: int = 1 << 48  # above every user-space host address on x86-64 and aarch64
    _bases: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.api not in API_VERSIONS:
            raise ValueError(f"api must be one of {sorted(API_VERSIONS)}, not {self.api!r}")
        self.tensorrt_version = self.tensorrt_version or API_VERSIONS[self.api]
        major = self.tensorrt_version.split(".")[0]
        if not (self.tensorrt_version.startswith(self.api + ".") or self.api == "10" and int(major) >= 10):
            raise ValueError(f"TensorRT {self.tensorrt_version} does not have the {self.api} API")

    # -- memory --------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        base = self._next
        self.allocations[base] = np.full(max(nbytes, 1), 0xFF, np.uint8)  # uninitialised: NaN
        bisect.insort(self._bases, base)
        self._next = (base + nbytes + (1 << 20) + 255) // 256 * 256  # a guard gap after each buffer
        return base

    def free(self, ptr: int) -> bool:
        if ptr not in self.allocations:
            return False
        del self.allocations[ptr]
        self._bases.remove(ptr)
        return True

    def is_device(self, ptr: int) -> bool:
        return ptr >= 1 << 48

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The device bytes [ptr, ptr + nbytes) (a view); _Fault outside one allocation."""
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0 or nbytes < 0:
            raise _Fault(f"address 0x{ptr:x} is not device memory")
        base = self._bases[i]
        buf = self.allocations[base]
        if ptr + nbytes > base + len(buf):
            raise _Fault(f"{nbytes} bytes at 0x{ptr:x} run past the allocation at 0x{base:x} ({len(buf)} bytes)")
        return buf[ptr - base:ptr - base + nbytes]

    @staticmethod
    def host_ok(ptr: int) -> bool:
        return 4096 <= ptr < 1 << 47

    # -- streams -------------------------------------------------------------------------
    def stream(self, handle: object) -> _Stream | None:
        return self.streams.get(int(handle))  # type: ignore[call-overload]

    def submit(self, stream: _Stream, op: Callable[[], None]) -> cudaError_t:
        """Run `op` now, or record it if the stream is capturing."""
        if stream.capturing is not None:
            stream.capturing.append(op)
            return cudaError_t.cudaSuccess
        try:
            op()
        except _Fault:
            self.sticky = cudaError_t.cudaErrorIllegalAddress
        return cudaError_t.cudaSuccess  # a kernel's fault shows up at the next API call


# ================================================================ cudart (cuda-python 12 `cuda.bindings.runtime`)

class CudaRuntime:
    """cuda-python's cudart functions that edgelm uses; each returns (cudaError_t, *results).
    (The module also exports the enums and handle types above.)"""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._handles = 0x5000

    def _handle(self) -> int:
        self._handles += 0x10
        return self._handles

    def _sticky(self) -> cudaError_t | None:
        return self.device.sticky

    def cudaMalloc(self, size: int) -> tuple:  # noqa: N802
        if (err := self._sticky()) is not None:
            return err, None
        if _pybind_int(size, "cudaMalloc") < 0:
            return cudaError_t.cudaErrorInvalidValue, None
        return cudaError_t.cudaSuccess, self.device.malloc(int(size))

    def cudaFree(self, devPtr: object) -> tuple:  # noqa: N802,N803
        if (err := self._sticky()) is not None:
            return (err,)
        ptr = _pybind_int(devPtr, "cudaFree")
        if ptr == 0:
            return (cudaError_t.cudaSuccess,)
        return (cudaError_t.cudaSuccess if self.device.free(ptr) else cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamCreate(self) -> tuple:  # noqa: N802
        if (err := self._sticky()) is not None:
            return err, None
        handle = self._handle()
        self.device.streams[handle] = _Stream()
        return cudaError_t.cudaSuccess, cudaStream_t(handle)

    def cudaStreamDestroy(self, stream: object) -> tuple:  # noqa: N802
        handle = int(stream)  # type: ignore[call-overload]
        if handle == 0 or self.device.streams.pop(handle, None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: object) -> tuple:  # noqa: N802
        st = self.device.stream(stream)
        if st is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if st.capturing is not None:  # not allowed while capturing; it breaks the capture
            st.invalidated = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (self._sticky() or cudaError_t.cudaSuccess,)

    def cudaDeviceSynchronize(self) -> tuple:  # noqa: N802
        return (self._sticky() or cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: object, src: object, count: int, kind: object, stream: object) -> tuple:  # noqa: N802
        if (err := self._sticky()) is not None:
            return (err,)
        d, s, n = _pybind_int(dst, "cudaMemcpyAsync"), _pybind_int(src, "cudaMemcpyAsync"), int(count)
        st = self.device.stream(stream)
        if st is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        try:
            kind = cudaMemcpyKind(_pybind_int(kind, "cudaMemcpyAsync"))
        except ValueError:
            return (cudaError_t.cudaErrorInvalidMemcpyDirection,)
        dev = self.device
        if kind == cudaMemcpyKind.cudaMemcpyDefault:  # unified addressing: the pointers say it
            kind = _KINDS[(dev.is_device(s), dev.is_device(d))]
        src_dev = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        dst_dev = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        if n < 0:
            return (cudaError_t.cudaErrorInvalidValue,)
        if n == 0:
            return (cudaError_t.cudaSuccess,)
        # The direction must match the pointers: a host address is never a device pointer here.
        for ptr, on_dev in ((s, src_dev), (d, dst_dev)):
            if on_dev and not dev.is_device(ptr) or not on_dev and not dev.host_ok(ptr):
                return (cudaError_t.cudaErrorInvalidValue,)
            if on_dev:
                try:
                    dev.view(ptr, n)
                except _Fault:
                    return (cudaError_t.cudaErrorInvalidValue,)
        if st.capturing is not None and not (src_dev and dst_dev):
            st.invalidated = True  # pageable host memory cannot be captured
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        if src_dev and dst_dev:
            def op() -> None:
                dev.view(d, n)[:] = dev.view(s, n)
                dev.copies["d2d"] += 1
            return (dev.submit(st, op),)
        if dst_dev:  # pageable: the host bytes are taken now
            data = _host(s, n).copy()
            dev.view(d, n)[:] = data
            dev.copies["h2d"] += 1
        elif src_dev:
            _host(d, n)[:] = dev.view(s, n)
            dev.copies["d2h"] += 1
        else:
            ctypes.memmove(d, s, n)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream: object, mode: object) -> tuple:  # noqa: N802
        if (err := self._sticky()) is not None:
            return (err,)
        st = self.device.stream(stream)
        if st is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if int(stream) == 0:  # type: ignore[call-overload]  # the legacy stream cannot be captured
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        try:
            cudaStreamCaptureMode(_pybind_int(mode, "cudaStreamBeginCapture"))
        except ValueError:
            return (cudaError_t.cudaErrorInvalidValue,)
        if st.capturing is not None:
            return (cudaError_t.cudaErrorIllegalState,)
        st.capturing, st.invalidated = [], False
        self.device.captures += 1
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream: object) -> tuple:  # noqa: N802
        st = self.device.stream(stream)
        if st is None:
            return cudaError_t.cudaErrorInvalidResourceHandle, None
        if st.capturing is None:
            return cudaError_t.cudaErrorIllegalState, None
        ops, st.capturing = st.capturing, None
        if st.invalidated:
            st.invalidated = False
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return cudaError_t.cudaSuccess, cudaGraph_t(self._handle(), ops)

    def cudaGraphInstantiate(self, graph: object, flags: int = 0) -> tuple:  # noqa: N802
        if (err := self._sticky()) is not None:
            return err, None
        if not isinstance(graph, cudaGraph_t) or isinstance(graph, cudaGraphExec_t):
            return cudaError_t.cudaErrorInvalidValue, None
        return cudaError_t.cudaSuccess, cudaGraphExec_t(self._handle(), list(graph.ops))

    def cudaGraphLaunch(self, graphExec: object, stream: object) -> tuple:  # noqa: N802,N803
        if (err := self._sticky()) is not None:
            return (err,)
        st = self.device.stream(stream)
        if st is None or not isinstance(graphExec, cudaGraphExec_t):
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.device.graph_launches += 1
        for op in graphExec.ops:
            err = self.device.submit(st, op)
            if err:
                return (err,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph: object) -> tuple:  # noqa: N802
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graphExec: object) -> tuple:  # noqa: N802,N803
        return (cudaError_t.cudaSuccess,)

    def cudaGetErrorString(self, error: object) -> tuple:  # noqa: N802
        return cudaError_t.cudaSuccess, cudaError_t(_pybind_int(error, "cudaGetErrorString")).name.encode()


def _host(addr: int, nbytes: int) -> np.ndarray:
    """Host memory at a raw address (from ndarray.ctypes.data) as a writable uint8 array."""
    return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(addr))


# ================================================================ tensorrt: logging, dims, host memory

class ILogger(_ILoggerBase):
    if not TYPE_CHECKING:
        Severity = Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR,
                                                         Severity.WARNING, Severity.INFO, Severity.VERBOSE)

    def __init__(self) -> None:
        pass

    @override
    def log(self, severity: _ILoggerBase.Severity, msg: str) -> None:
        raise NotImplementedError("ILogger.log is abstract; subclass it or use trt.Logger")


class Logger(ILogger, _LoggerBase):
    """TensorRT's default logger: keeps messages at or above min_severity (here in `messages`)."""

    def __init__(self, min_severity: _ILoggerBase.Severity = Severity.WARNING) -> None:
        ILogger.__init__(self)
        self.min_severity = min_severity
        self.messages: list[str] = []

    @override
    def log(self, severity: _ILoggerBase.Severity, msg: str) -> None:
        if severity <= self.min_severity:
            self.messages.append(f"{severity.name}: {msg}")


class Dims(_DimsBase):
    MAX_DIMS = 8

    def __init__(self, shape: list[int] | tuple[int, ...] | None = None) -> None:
        dims = tuple(_pybind_int(d, "Dims") for d in (shape or ()))
        if len(dims) > self.MAX_DIMS:
            raise ValueError(f"Dims holds at most {self.MAX_DIMS} dimensions")
        self._dims = dims

    @override
    def __len__(self) -> int:
        return len(self._dims)

    @overload
    def __getitem__(self, arg0: int) -> int: ...

    @overload
    def __getitem__(self, arg0: slice) -> tuple: ...

    @override
    def __getitem__(self, arg0: int | slice) -> int | tuple:
        return self._dims[arg0]

    def __iter__(self) -> Iterator[int]:
        return iter(self._dims)

    @override
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dims):
            return self._dims == other._dims
        return isinstance(other, (list, tuple)) and self._dims == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    @override
    def __repr__(self) -> str:
        return f"({', '.join(map(str, self._dims))})"


def _as_dims(shape: object) -> tuple[int, ...]:
    if isinstance(shape, Dims):
        return tuple(shape)
    if isinstance(shape, (list, tuple)):
        return tuple(_pybind_int(d, "shape") for d in shape)
    raise TypeError(f"incompatible function arguments: a shape must be a Dims, list or tuple, not {type(shape).__name__}")


class HostMemory(_HostMemoryBase):
    """IHostMemory: bytes TensorRT owns (a plan, a serialized timing cache); bytes(m) copies them."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    @override
    def nbytes(self) -> int:
        return len(self._data)

    @property
    @override
    def dtype(self) -> DataType:
        return DataType.UINT8


# ================================================================ tensorrt: builder side

_TC_MAGIC = b"TRT-STANDIN-TIMING-CACHE\n"


class TimingCache(_TimingCacheBase):
    """Tactic timings, tagged with the GPU and TensorRT version that measured them."""

    def __init__(self, device: str, version: str, entries: dict[str, float] | None = None) -> None:
        self.device, self.version, self.entries = device, version, dict(entries or {})

    @override
    def serialize(self) -> HostMemory:
        body = json.dumps({"device": self.device, "tensorrt": self.version, "entries": self.entries},
                          sort_keys=True).encode()
        return HostMemory(_TC_MAGIC + body)

    @override
    def combine(self, input_cache: _TimingCacheBase, ignore_mismatch: bool) -> bool:
        if not isinstance(input_cache, TimingCache) or input_cache.version != self.version:
            return False
        if input_cache.device != self.device and not _strict_bool(ignore_mismatch, "combine"):
            return False
        for k, v in input_cache.entries.items():
            self.entries.setdefault(k, v)
        return True

    @override
    def reset(self) -> bool:
        self.entries.clear()
        return True

    @classmethod
    def parse(cls, data: bytes) -> TimingCache | None:
        if not data.startswith(_TC_MAGIC):
            return None
        try:
            raw = json.loads(data[len(_TC_MAGIC):])
            return cls(str(raw["device"]), str(raw["tensorrt"]), {str(k): float(v) for k, v in raw["entries"].items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def timing_cache_bytes(device: str = "NVIDIA A100-SXM4-80GB", version: str = TRT_VERSION,
                       entries: dict[str, float] | None = None) -> bytes:
    """A serialized timing cache as another GPU (by default) would have written it."""
    return bytes(TimingCache(device, version, entries if entries is not None else {"foreign:tactic": 1.0}).serialize())


def _strict_bool(value: object, what: str) -> bool:
    """Stricter than pybind11 (which converts anything with __bool__): the API says bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}(): incompatible function arguments: ignore_mismatch must be a bool, "
                        f"not {type(value).__name__} {value!r}")
    return bool(value)


class OptimizationProfile(_ProfileBase):
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self.errors: list[str] = []

    @override
    def set_shape(self, input: str, min: _DimsBase, opt: _DimsBase, max: _DimsBase) -> None:  # noqa: A002
        mn, op, mx = _as_dims(min), _as_dims(opt), _as_dims(max)
        if not len(mn) == len(op) == len(mx):
            self.errors.append(f"{input}: min/opt/max shapes of different ranks {mn} {op} {mx}")
        elif not all(0 <= a <= b <= c for a, b, c in zip(mn, op, mx)):
            self.errors.append(f"{input}: shapes must satisfy 0 <= min <= opt <= max, got {mn} {op} {mx}")
        self.shapes[input] = (mn, op, mx)

    @override
    def get_shape(self, input: str) -> list[_DimsBase]:  # noqa: A002
        return [Dims(list(s)) for s in self.shapes.get(input, ())]


class BuilderConfig(_ConfigBase):
    max_workspace_size = _Absent()  # TensorRT 8.x only (10.0 removed it)
    _flag_type: Any = BuilderFlag  # the generation's BuilderFlag (not TensorRT API)

    def __init__(self, builder: Builder) -> None:
        self._builder = builder
        self._level = 3
        self.pools: dict[MemoryPoolType, int] = {}
        self.builder_flags: set[int] = set()  # BuilderFlag values set
        self.profiles: list[OptimizationProfile] = []
        self.timing_cache: TimingCache | None = None

    def _settings(self) -> dict:
        """What the plan header records of this configuration (not TensorRT API)."""
        return {"optimization_level": self._level, "workspace": self.get_memory_pool_limit(MemoryPoolType.WORKSPACE),
                "precision_flags": self._precision_flags()}

    def _precision_flags(self) -> list[str]:
        """The precision-allowing builder flags set (FP16, INT8, ...), by name (not TensorRT API)."""
        kinds = self._flag_type
        names = [n for n in ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4") if hasattr(kinds, n)]
        return [n for n in names if int(getattr(kinds, n)) in self.builder_flags]

    def _flag(self, flag: object, where: str) -> int:
        """A pybind11 enum argument: this generation's BuilderFlag, not an int nor another enum."""
        if not isinstance(flag, self._flag_type):
            raise TypeError(f"{where}(): incompatible function arguments: a tensorrt.BuilderFlag, "
                            f"not {type(flag).__name__} {flag!r}")
        return int(flag)  # type: ignore[call-overload]

    @override
    def set_flag(self, flag: BuilderFlag) -> None:
        self.builder_flags.add(self._flag(flag, "set_flag"))

    @override
    def get_flag(self, flag: BuilderFlag) -> bool:
        return self._flag(flag, "get_flag") in self.builder_flags

    @override
    def clear_flag(self, flag: BuilderFlag) -> None:
        self.builder_flags.discard(self._flag(flag, "clear_flag"))

    @property
    @override
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    @override
    def builder_optimization_level(self, value: int) -> None:
        level = _pybind_int(value, "builder_optimization_level")
        if not 0 <= level <= 5:
            _log(self._builder.logger, Severity.ERROR, f"builder optimization level {level} is outside 0..5")
            return
        self._level = level

    @override
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = _pybind_int(pool_size, "set_memory_pool_limit")

    @override
    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool, 0)

    @property
    @override
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    @override
    def add_optimization_profile(self, profile: _ProfileBase) -> int:
        if not isinstance(profile, OptimizationProfile):
            raise TypeError("add_optimization_profile(): incompatible function arguments")
        if profile.errors or not profile.shapes:
            _log(self._builder.logger, Severity.ERROR, "optimization profile is invalid: "
                 + ("; ".join(profile.errors) or "no shapes set"))
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @override
    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        data = bytes(serialized_timing_cache)
        dev = self._builder.device
        if not data:
            return TimingCache(dev.name, dev.tensorrt_version)
        cache = TimingCache.parse(data)
        if cache is None:
            _log(self._builder.logger, Severity.WARNING, "the timing cache is corrupted; starting an empty one")
            return TimingCache(dev.name, dev.tensorrt_version)
        return cache

    @override
    def set_timing_cache(self, cache: _TimingCacheBase, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, TimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")
        ignore = _strict_bool(ignore_mismatch, "set_timing_cache")
        dev = self._builder.device
        if cache.version != dev.tensorrt_version:
            _log(self._builder.logger, Severity.ERROR, f"the timing cache is from TensorRT {cache.version}, "
                 f"this is {dev.tensorrt_version}")
            return False
        if cache.device != dev.name and not ignore:
            _log(self._builder.logger, Severity.ERROR, f"the timing cache was made on {cache.device}, "
                 f"not on this {dev.name}; set ignore_mismatch to use it anyway")
            return False
        self.timing_cache = cache
        return True

    @override
    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache  # type: ignore[return-value]  # None when none was set, as in TensorRT


@dataclass(frozen=True)
class _Tensor:
    name: str
    mode: str  # "input" | "output"
    dtype: int  # DataType value
    shape: tuple[int, ...]  # -1: dynamic
    symbols: tuple[str | None, ...]  # the ONNX dim_param of each dynamic dim
    graph_dtype: str | None = None  # the ONNX graph's numpy type where the binding's differs (8.x INT64)


@dataclass
class _Graph:
    onnx: bytes
    weights: dict[str, bytes]  # external-data file name -> its bytes
    tensors: list[_Tensor]
    nodes: int


class Network(_NetworkBase):
    """INetworkDefinition: here, the parsed ONNX graph (and its weights) the parser filled in."""

    def __init__(self, flags: int) -> None:
        self._flags = flags
        self.graph: _Graph | None = None

    def _strongly_typed(self) -> bool:
        """Whether the network was created strongly typed (not TensorRT API)."""
        return bool(self._flags >> int(NetworkDefinitionCreationFlag.STRONGLY_TYPED) & 1)

    @property
    @override
    def flags(self) -> int:
        return self._flags

    @property
    @override
    def num_inputs(self) -> int:
        return sum(t.mode == "input" for t in self.graph.tensors) if self.graph else 0

    @property
    @override
    def num_outputs(self) -> int:
        return sum(t.mode == "output" for t in self.graph.tensors) if self.graph else 0

    @property
    @override
    def num_layers(self) -> int:
        return self.graph.nodes if self.graph else 0


class ParserError(_ParserErrorBase):
    def __init__(self, desc: str, node: int = -1, operator: str = "") -> None:
        self._desc, self._node, self._op = desc, node, operator

    @override
    def desc(self) -> str:
        return self._desc

    @override
    def node(self) -> int:
        return self._node

    @override
    def node_name(self) -> str:
        return ""

    @override
    def node_operator(self) -> str:
        return self._op


class OnnxParser(_ParserBase):
    """Parses ONNX bytes into a Network; external weights are read beside `path`, as TensorRT does."""

    _error_type = ParserError  # the generation's ParserError (not TensorRT API)

    def __init__(self, network: _NetworkBase, logger: _ILoggerBase) -> None:
        if not isinstance(network, Network):
            raise TypeError("OnnxParser(): incompatible function arguments")
        self.network, self.logger = network, logger
        self._errors: list[ParserError] = []

    @property
    @override
    def num_errors(self) -> int:
        return len(self._errors)

    @override
    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    @override
    def clear_errors(self) -> None:
        self._errors.clear()

    def _fail(self, desc: str, node: int = -1, op: str = "") -> bool:
        self._errors.append(self._error_type(desc, node, op))
        _log(self.logger, Severity.ERROR, f"ModelImporter: {desc}")
        return False

    @override
    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        data = bytes(model)
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            return self._fail(f"failed to parse the ONNX model: {exc}")
        if not proto.graph.output:
            return self._fail("the network has no outputs")
        weights: dict[str, bytes] = {}
        for init in proto.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in init.external_data if e.key == "location"), "")
            if location in weights:
                continue
            if path is None:
                return self._fail(f"initializer {init.name} is stored in external file {location!r} but no "
                                  "model path was given to find it")
            file = Path(path).parent / location
            if not file.is_file():
                return self._fail(f"failed to open external weights file {file}")
            weights[location] = file.read_bytes()
        refused = self._check_model(proto)
        if refused:
            return self._fail(refused)
        tensors = [self._tensor(v, "input") for v in proto.graph.input
                   if v.name not in {i.name for i in proto.graph.initializer}]
        tensors += [self._tensor(v, "output") for v in proto.graph.output]
        self.network.graph = _Graph(data, weights, tensors, len(proto.graph.node))
        return True

    def _check_model(self, proto: Any) -> str | None:
        """Why this generation's parser refuses the network or model, if it does; it may log about
        the model too (not TensorRT API)."""
        return None

    def _tensor(self, value: Any, mode: str) -> _Tensor:
        """A graph input or output as this generation imports it (not TensorRT API)."""
        ttype = value.type.tensor_type
        dims = [(d.dim_value, None) if d.HasField("dim_value") else (-1, d.dim_param or None)
                for d in ttype.shape.dim]
        return _Tensor(value.name, mode, int(ONNX_TYPES.get(ttype.elem_type, DataType.FLOAT)),
                       tuple(d for d, _ in dims), tuple(s for _, s in dims))


_PLAN_MAGIC = b"TRT-STANDIN-PLAN"
_PLAN_HEAD = struct.Struct("<16sIQ")  # magic, plan format, header length
PLAN_FORMAT = 1


class Builder(_BuilderBase):
    _network_type: type[Network] = Network  # the generation's classes (not TensorRT API)
    _config_type: type[BuilderConfig] = BuilderConfig

    def __init__(self, logger: _ILoggerBase) -> None:
        self._logger = logger
        self.device = _active().device

    @property
    @override
    def logger(self) -> _ILoggerBase:
        return self._logger

    @override
    def create_network(self, flags: int = 0) -> Network:
        return self._network_type(_pybind_int(flags, "create_network"))

    @override
    def create_builder_config(self) -> BuilderConfig:
        return self._config_type(self)

    @override
    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def _error(self, msg: str) -> HostMemory:
        _log(self.logger, Severity.ERROR, msg)
        return None  # type: ignore[return-value]  # documented: None on failure (the stubs omit it)

    @override
    def build_serialized_network(self, network: _NetworkBase, config: _ConfigBase) -> HostMemory:
        if not isinstance(network, Network) or not isinstance(config, BuilderConfig):
            raise TypeError("build_serialized_network(): incompatible function arguments")
        graph = network.graph
        if graph is None:
            return self._error("Network must have at least one output")
        inputs = [t for t in graph.tensors if t.mode == "input"]
        profile: dict[str, list[list[int]]] = {}
        if any(-1 in t.shape for t in inputs):
            if not config.profiles:
                return self._error("Network has dynamic or shape inputs, but no optimization profile has been defined.")
            prof = config.profiles[0]
            unknown = sorted(set(prof.shapes) - {t.name for t in inputs})
            if unknown:
                return self._error(f"optimization profile names {unknown[0]}, which is not an input of the network")
            for t in inputs:
                if t.name not in prof.shapes:
                    return self._error(f"optimization profile is missing values for input {t.name}")
                mn, op, mx = prof.shapes[t.name]
                if len(mn) != len(t.shape):
                    return self._error(f"optimization profile for {t.name} has rank {len(mn)}, the input {len(t.shape)}")
                for i, d in enumerate(t.shape):
                    if d >= 0 and not mn[i] == op[i] == mx[i] == d:
                        return self._error(f"optimization profile for {t.name}: dimension {i} is {d} in the "
                                           f"network but {mn[i]}..{mx[i]} in the profile")
                profile[t.name] = [list(mn), list(op), list(mx)]
        onnx_sha = hashlib.sha256(graph.onnx).hexdigest()
        settings = config._settings()
        cache = config.timing_cache
        if cache is not None:  # the "tactics" this build timed, keyed by what was timed
            cache.entries.setdefault(f"{onnx_sha[:16]}:level{settings['optimization_level']}", float(graph.nodes))
        max_batch = max((p[2][0] for p in profile.values()), default=1)
        io_bytes = 0
        for t in graph.tensors:
            n = 1
            for d in t.shape:
                n *= max_batch if d < 0 else d
            io_bytes += n * np.dtype(NUMPY_TYPES.get(DataType(t.dtype), np.float32)).itemsize
        header = {"tensorrt_version": self.device.tensorrt_version, "api": self.device.api, "gpu": self.device.name,
                  "compute_capability": self.device.compute_capability,
                  "strongly_typed": network._strongly_typed(), **settings,
                  "device_memory": io_bytes,
                  "io": [{"name": t.name, "mode": t.mode, "dtype": t.dtype, "shape": list(t.shape),
                          "symbols": list(t.symbols), "graph_dtype": t.graph_dtype} for t in graph.tensors],
                  "profile": profile,
                  "onnx": {"bytes": len(graph.onnx), "sha256": onnx_sha},
                  "weights": [{"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                              for n, b in graph.weights.items()]}
        head = json.dumps(header, sort_keys=True).encode()
        body = _PLAN_HEAD.pack(_PLAN_MAGIC, PLAN_FORMAT, len(head)) + head + graph.onnx + b"".join(graph.weights.values())
        return HostMemory(body + hashlib.sha256(body).digest())


def plan_header(plan: bytes) -> dict:
    """The header of a stand-in plan (which graph, GPU, TensorRT version and profile it holds)."""
    magic, _, n = _PLAN_HEAD.unpack_from(plan)
    assert magic == _PLAN_MAGIC, "not a stand-in plan"
    return json.loads(plan[_PLAN_HEAD.size:_PLAN_HEAD.size + n])


# ================================================================ tensorrt: runtime side

_SESSIONS: dict[bytes, Any] = {}  # plan digest -> onnxruntime session (stateless between runs: shared)


def _ort_session(digest: bytes, onnx_bytes: bytes, weights: dict[str, bytes]) -> Any:
    sess = _SESSIONS.get(digest)
    if sess is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        if weights:
            names = list(weights)
            buffers = [np.frombuffer(weights[n], np.uint8) for n in names]
            opts.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
        sess = _SESSIONS[digest] = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        sess._standin_buffers = weights  # keep the weights alive as long as the session
    return sess


class Runtime(_RuntimeBase):
    _engine_type: type[CudaEngine]  # the generation's engine class (not TensorRT API); set below

    def __init__(self, logger: _ILoggerBase) -> None:
        self._logger = logger
        self.device = _active().device

    @property
    @override
    def logger(self) -> _ILoggerBase:
        return self._logger

    @overload
    def deserialize_cuda_engine(self, serialized_engine: bytes) -> CudaEngine: ...

    @overload
    def deserialize_cuda_engine(self, stream_reader: IStreamReader) -> CudaEngine: ...

    @overload
    def deserialize_cuda_engine(self, stream_reader_v2: IStreamReaderV2) -> CudaEngine: ...

    @override
    def deserialize_cuda_engine(self, *args: Any, **kwargs: Any) -> CudaEngine:
        if "serialized_engine" in kwargs:
            args = (kwargs.pop("serialized_engine"), *args)
        if kwargs or len(args) != 1 or not isinstance(args[0], (bytes, bytearray, memoryview, HostMemory)):
            raise NotImplementedError("the stand-in deserializes engines from a buffer only")
        plan = bytes(args[0])
        failed: CudaEngine = None  # type: ignore[assignment]  # documented: None on failure
        if len(plan) < _PLAN_HEAD.size + 32 or not plan.startswith(_PLAN_MAGIC):
            _log(self.logger, Severity.ERROR, "IRuntime::deserializeCudaEngine: the data is not a serialized engine")
            return failed
        body, digest = plan[:-32], plan[-32:]
        if hashlib.sha256(body).digest() != digest:
            _log(self.logger, Severity.ERROR, "IRuntime::deserializeCudaEngine: the engine is corrupted")
            return failed
        _, fmt, n = _PLAN_HEAD.unpack_from(body)
        header = json.loads(body[_PLAN_HEAD.size:_PLAN_HEAD.size + n])
        if fmt != PLAN_FORMAT or header["tensorrt_version"] != self.device.tensorrt_version:
            _log(self.logger, Severity.ERROR, "The engine plan file is not compatible with this version of TensorRT, "
                 f"expecting library version {self.device.tensorrt_version} got {header['tensorrt_version']}, "
                 "please rebuild.")
            return failed
        if header["compute_capability"] != self.device.compute_capability:
            _log(self.logger, Severity.ERROR, f"The engine plan file is generated on an incompatible device, "
                 f"expecting compute {self.device.compute_capability} got compute "
                 f"{header['compute_capability']}, please rebuild.")
            return failed
        at = _PLAN_HEAD.size + n
        onnx_bytes = body[at:at + header["onnx"]["bytes"]]
        at += header["onnx"]["bytes"]
        weights = {}
        for w in header["weights"]:
            weights[w["name"]] = body[at:at + w["bytes"]]
            at += w["bytes"]
        return self._engine_type(self, header, digest, onnx_bytes, weights)


class CudaEngine(_EngineBase):
    _context_type: type[ExecutionContext]  # the generation's context class (not TensorRT API); set below

    def __init__(self, runtime: Runtime, header: dict, digest: bytes, onnx_bytes: bytes,
                 weights: dict[str, bytes]) -> None:
        self.runtime, self.header, self.digest = runtime, header, digest
        self._onnx, self._weights = onnx_bytes, weights
        self.tensors = [_Tensor(t["name"], t["mode"], t["dtype"], tuple(t["shape"]), tuple(t["symbols"]),
                                t["graph_dtype"]) for t in header["io"]]
        self.by_name = {t.name: t for t in self.tensors}
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in header["profile"].items()}

    def session(self) -> Any:
        return _ort_session(self.digest, self._onnx, self._weights)

    @property
    @override
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    @override
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    @override
    def device_memory_size(self) -> int:
        return int(self.header["device_memory"])

    @property
    @override
    def device_memory_size_v2(self) -> int:
        return int(self.header["device_memory"])

    @override
    def get_tensor_name(self, index: int) -> str:
        i = _pybind_int(index, "get_tensor_name")
        return self.tensors[i].name if 0 <= i < len(self.tensors) else None  # type: ignore[return-value]

    @override
    def get_tensor_shape(self, name: str) -> Dims:
        t = self.by_name.get(name)
        return Dims(list(t.shape)) if t else Dims()

    @override
    def get_tensor_dtype(self, name: str) -> DataType:
        t = self.by_name.get(name)
        return DataType(t.dtype) if t else DataType.FLOAT

    @override
    def get_tensor_mode(self, name: str) -> TensorIOMode:
        t = self.by_name.get(name)
        return TensorIOMode.NONE if t is None else TensorIOMode.INPUT if t.mode == "input" else TensorIOMode.OUTPUT

    @override
    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[_DimsBase]:
        return [Dims(list(s)) for s in self.profile.get(name, ())]

    @overload
    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy = ...) -> ExecutionContext: ...

    @overload
    def create_execution_context(self, runtime_config: IRuntimeConfig | None = None) -> ExecutionContext: ...

    @override
    def create_execution_context(self, *args: Any, **kwargs: Any) -> ExecutionContext:
        return self._context_type(self)


class ExecutionContext(_ContextBase):
    def __init__(self, engine: CudaEngine) -> None:
        self._engine = engine
        self.logger = engine.runtime.logger
        self.device = engine.runtime.device
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _error(self, msg: str) -> bool:
        _log(self.logger, Severity.ERROR, msg)
        return False

    @override
    def set_input_shape(self, name: str, shape: tuple | list | _DimsBase) -> bool:
        self.device.calls["set_input_shape"] += 1
        return self._set_shape(name, _as_dims(shape), "IExecutionContext::setInputShape")

    def _set_shape(self, name: str, dims: tuple[int, ...], where: str) -> bool:
        """An input's shape for the next enqueue, checked against the engine and its profile."""
        t = self._engine.by_name.get(name)
        if t is None or t.mode != "input":
            return self._error(f"{where}: {name} is not an input tensor of the engine")
        if len(dims) != len(t.shape):
            return self._error(f"{where}: {name} has {len(t.shape)} dimensions, not {len(dims)} ({dims})")
        mn, _, mx = self._engine.profile.get(name, (t.shape, t.shape, t.shape))
        for i, (d, want) in enumerate(zip(dims, t.shape)):
            if want >= 0 and d != want:
                return self._error(f"{where}: dimension {i} of {name} is static ({want}), not {d}")
            if want < 0 and not mn[i] <= d <= mx[i]:
                return self._error(f"{where}: dimension {i} of {name} is {d}, outside "
                                   f"the optimization profile's {mn[i]}..{mx[i]}")
        self.shapes[name] = dims
        return True

    @override
    def get_tensor_shape(self, name: str) -> Dims:
        shape = self.shapes.get(name)
        if shape is not None:
            return Dims(list(shape))
        t = self._engine.by_name.get(name)
        if t is None:
            return Dims()
        resolved = self._resolve()
        return Dims([resolved.get(s, -1) if d < 0 else d for d, s in zip(t.shape, t.symbols)])

    def _resolve(self) -> dict[str | None, int]:
        sizes: dict[str | None, int] = {}
        for name, dims in self.shapes.items():
            for d, s in zip(dims, self._engine.by_name[name].symbols):
                if s is not None:
                    sizes.setdefault(s, d)
        return sizes

    @override
    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.device.calls["set_tensor_address"] += 1
        return self._set_address(name, _pybind_int(memory, "set_tensor_address"), "IExecutionContext::setTensorAddress")

    def _set_address(self, name: str, ptr: int, where: str) -> bool:
        t = self._engine.by_name.get(name)
        if t is None:
            return self._error(f"{where}: {name} is not a tensor of the engine")
        align = np.dtype(NUMPY_TYPES.get(DataType(t.dtype), np.uint8)).itemsize
        if ptr % align:
            return self._error(f"{where}: address 0x{ptr:x} of {name} is not aligned to {align} bytes")
        self.addresses[name] = ptr
        return True

    @override
    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    @override
    def execute_async_v3(self, stream_handle: int) -> bool:
        self.device.calls["execute_async_v3"] += 1
        return self._enqueue(_pybind_int(stream_handle, "execute_async_v3"), "IExecutionContext::enqueueV3")

    def _enqueue(self, handle: int, where: str) -> bool:
        """Check the bound shapes and addresses, then run (or record, while capturing) the engine."""
        stream = self.device.stream(handle)
        if stream is None:
            return self._error(f"{where}: invalid stream handle 0x{handle:x}")
        engine = self._engine
        inputs = [t for t in engine.tensors if t.mode == "input"]
        for t in inputs:
            if t.name not in self.shapes:
                return self._error(f"{where}: the input shape of {t.name} is not specified")
        sizes: dict[str | None, int] = {}
        for t in inputs:
            for d, s in zip(self.shapes[t.name], t.symbols):
                if s is not None and sizes.setdefault(s, d) != d:
                    return self._error(f"{where}: input {t.name} has {s}={d}, another "
                                       f"input {s}={sizes[s]}: the dimensions are inconsistent")
        for t in engine.tensors:
            if not self.addresses.get(t.name):
                return self._error(f"{where}: the address of {t.name} is not set")
        if stream.capturing is not None and self.device.capture == "refuse":
            return self._error(f"{where}: this engine cannot be captured into a CUDA graph")
        if stream.capturing is not None and self.device.capture == "invalidate":
            stream.invalidated = True  # e.g. a synchronous call inside the enqueue broke the capture
            return self._error(f"{where}: a CUDA call was not permitted while the stream "
                               "is capturing (cudaErrorStreamCaptureUnsupported)")
        # The work captures the addresses and shapes bound now, as recorded kernels do.
        ins = [(t, self.addresses[t.name], self.shapes[t.name]) for t in inputs]
        outs = [(t, self.addresses[t.name], tuple(sizes.get(s, d) if d < 0 else d
                                                 for d, s in zip(t.shape, t.symbols)))
                for t in engine.tensors if t.mode == "output"]
        if self.device.sticky is not None:  # an earlier kernel's fault
            return self._error(f"{where}: CUDA error {int(self.device.sticky)}")
        self.device.submit(stream, lambda: _run_kernel(self.device, engine, ins, outs))
        return True  # a fault of this work shows at the next CUDA call, as on a GPU


Runtime._engine_type, CudaEngine._context_type = CudaEngine, ExecutionContext


def _run_kernel(device: Device, engine: CudaEngine, ins: list, outs: list) -> None:
    """The engine's work on the device: inputs from their addresses, outputs to theirs."""
    device.kernel_runs += 1
    feeds = {}
    spans = []
    for t, addr, shape in ins:
        dtype = np.dtype(NUMPY_TYPES[DataType(t.dtype)])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        feeds[t.name] = device.view(addr, nbytes).view(dtype).reshape(shape).astype(t.graph_dtype or dtype)
        spans.append((addr, addr + nbytes))
    try:
        results = engine.session().run([t.name for t, _, _ in outs], feeds)
    except Exception as exc:  # noqa: BLE001 - a kernel fault (e.g. an index out of range)
        raise _Fault(f"kernel fault: {str(exc)[:200]}") from None
    for (t, addr, shape), value in zip(outs, results):
        data: np.ndarray = np.ascontiguousarray(value, NUMPY_TYPES[DataType(t.dtype)])
        assert data.shape == shape, (t.name, data.shape, shape)  # the stand-in's own consistency
        raw = data.reshape(-1).view(np.uint8)
        dst = device.view(addr, raw.nbytes)
        if any(addr < hi and lo < addr + raw.nbytes for lo, hi in spans):
            dst[:] = 0xFF  # an output aliasing an input: undefined on a GPU, visibly wrong here
        else:
            dst[:] = raw


# ================================================================ installing the stand-ins

@dataclass
class StandIn:
    tensorrt: types.ModuleType
    cudart: types.ModuleType
    device: Device


_INSTALLED: list[StandIn] = []
MODULES = ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart")
TRT_NAMES = ("ILogger", "Logger", "Dims", "DataType", "TensorIOMode", "MemoryPoolType", "BuilderFlag",
             "NetworkDefinitionCreationFlag", "Builder", "OnnxParser", "ParserError", "Runtime")


def _active() -> StandIn:
    if not _INSTALLED:
        raise RuntimeError("the TensorRT stand-in is not installed (use trt_standin.installed())")
    return _INSTALLED[-1]


def surface() -> dict[str, Any]:
    """The `tensorrt` module's names of the 10.x stand-in."""
    names = {name: globals()[name] for name in TRT_NAMES}
    return {**names, "ICudaEngine": CudaEngine, "IExecutionContext": ExecutionContext, "IBuilderConfig": BuilderConfig,
            "IOptimizationProfile": OptimizationProfile, "ITimingCache": TimingCache, "INetworkDefinition": Network,
            "IHostMemory": HostMemory}


def _modules(device: Device) -> StandIn:
    trt = types.ModuleType("tensorrt", f"TensorRT {device.api} stand-in (tests/trt_standin.py)")
    if device.api == "10":
        names = surface()
    else:
        import trt_standin_v8  # the 8.x surfaces (it imports this module)

        names = trt_standin_v8.surface(device.api)
    for name, value in names.items():
        setattr(trt, name, value)
    trt.__version__ = device.tensorrt_version  # type: ignore[attr-defined]
    rt = CudaRuntime(device)
    cudart = types.ModuleType("cuda.bindings.runtime", "cuda-python cudart stand-in (tests/trt_standin.py)")
    for name in dir(rt):
        if name.startswith("cuda"):
            setattr(cudart, name, getattr(rt, name))
    for cls in (cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStream_t, cudaGraph_t, cudaGraphExec_t):
        setattr(cudart, cls.__name__, cls)
    return StandIn(trt, cudart, device)


@contextlib.contextmanager
def installed(**device: Any) -> Iterator[StandIn]:
    """`tensorrt` and cuda-python's `cuda.bindings.runtime` (and the older `cuda.cudart`) in
    sys.modules for the duration; keyword arguments set up the fake GPU (see `Device`), e.g.
    api="8.2" for Jetson Nano's TensorRT API."""
    standin = _modules(Device(**device))
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = standin.cudart  # type: ignore[attr-defined]
    cuda.bindings, cuda.cudart = bindings, standin.cudart  # type: ignore[attr-defined]
    new = {"tensorrt": standin.tensorrt, "cuda": cuda, "cuda.bindings": bindings,
           "cuda.bindings.runtime": standin.cudart, "cuda.cudart": standin.cudart}
    for name, mod in new.items():  # importlib.util.find_spec (torch calls it) needs a __spec__
        package = name in ("cuda", "cuda.bindings")
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
        if package:
            mod.__path__ = []  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in MODULES}
    sys.modules.update(new)
    _INSTALLED.append(standin)
    try:
        yield standin
    finally:
        _INSTALLED.remove(standin)
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def build_engines(bundle_dir: str | Path, **device: Any) -> list:
    """Build and record a bundle's step and prefill engines exactly as `edgelm build` does: the real
    export/trt_build.build_engine, run against the stand-in (installed for the call if it is not)."""
    from edgelm.export.trt_build import build_engine

    if _INSTALLED and sys.modules.get("tensorrt") is _INSTALLED[-1].tensorrt and not device:
        return build_engine(bundle_dir)
    with installed(**device):
        return build_engine(bundle_dir)
