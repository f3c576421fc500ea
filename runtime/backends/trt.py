"""TensorRT backend: the native engines `edgelm build` writes and records on the device.

Device memory comes from cuda-python (cudart). Two engines, both required: `engine.plan` for the
step graph and `engine.prefill.plan` for the prefill graph, each deserialized from bytes checked
against the sha256 the manifest's `built` section records, and each checked against the manifest's
state spec before it runs. Each engine owns device buffers for the byte ids, the logits and the
state in and out; each (engine, batch) enqueue is captured once as a CUDA graph and replayed.
tensorrt and cuda-python are imported only when this backend is picked.

The installed TensorRT's version picks its I/O API (NVIDIA's Python API reference of each release):
  8.0-8.4 (Jetson Nano: 8.2)   bindings only: engine.num_bindings, get_binding_name/dtype/shape,
                               binding_is_input; context.set_binding_shape(index, shape) and
                               execute_async_v2(bindings=[a device pointer per binding index])
  8.5-9.x (Xavier: 8.5)        tensors by name beside the deprecated bindings: num_io_tensors,
                               get_tensor_name/mode/dtype/shape, set_input_shape, set_tensor_address,
                               execute_async_v3; used from 8.5 on
  10, 11                       tensors by name only (10.0 removed the bindings API)
Byte ids: TensorRT 8 has no INT64, and its ONNX parser makes an int64 graph input an INT32 binding,
so the device buffer takes the type the engine reports, whatever the manifest says; ids are
0..255, so int32 <-> int64 is converted on the host.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgelmError
from ..manifest import TensorSpec
from .base import Backend

if TYPE_CHECKING:  # typed against tensorrt-stubs (10.x) in the test suite (tests/test_trt_build.py)
    import tensorrt as trt

MISSING = ("tensorrt is not installed: on Jetson it comes with JetPack (apt install python3-libnvinfer), "
           "on a desktop GPU pip install tensorrt; or use --backend onnxruntime")
NAMED_IO = (8, 5)  # num_io_tensors ... execute_async_v3 arrived in TensorRT 8.5
MEMORY_V2 = (10, 1)  # ICudaEngine.device_memory_size_v2 (device_memory_size before, deprecated from 10.1)
DTYPES = (("FLOAT", "float32"), ("HALF", "float16"), ("INT64", "int64"), ("INT32", "int32"), ("INT8", "int8"))
BYTE_ID_TYPES = {"int32", "int64"}  # byte ids are 0..255: either holds them


def available() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return MISSING
    if not hasattr(tensorrt, "Runtime"):  # e.g. only the tensorrt-stubs namespace package
        return MISSING
    try:
        _cudart()
    except ImportError:
        return "cuda-python is not installed (the tensorrt backend needs it): pip install cuda-python"
    return None


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ck(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgelmError(f"CUDA error {err} in the tensorrt backend")
    return rest[0] if len(rest) == 1 else rest


def api_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version ("8.2.1.8" -> (8, 2)): what picks the API."""
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def _dims(shape: Any) -> tuple:
    return tuple("batch" if shape[i] < 0 else int(shape[i]) for i in range(len(shape)))


def _dtype_names() -> dict:
    """TensorRT data types -> numpy dtype names, for the types this TensorRT has (8.x: no INT64)."""
    import tensorrt as trt

    return {getattr(trt.DataType, k): v for k, v in DTYPES if hasattr(trt.DataType, k)}


def _named_io(engine: trt.ICudaEngine) -> list[tuple[bool, TensorSpec]]:
    """TensorRT 8.5+: (is input, spec) of each I/O tensor, by name."""
    import tensorrt as trt

    types, found = _dtype_names(), []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = types.get(engine.get_tensor_dtype(name), "unsupported")
        found.append((engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                      TensorSpec(name, _dims(engine.get_tensor_shape(name)), dtype)))
    return found


def _binding_io(engine: Any) -> list[tuple[bool, TensorSpec]]:
    """TensorRT 8.0-8.4: (is input, spec) of each binding (no stubs exist for 8.x: the 8.x
    stand-in, tests/trt_standin_v8.py, is what checks these calls)."""
    types, found = _dtype_names(), []
    for i in range(engine.num_bindings):
        dtype = types.get(engine.get_binding_dtype(i), "unsupported")
        found.append((bool(engine.binding_is_input(i)),
                      TensorSpec(engine.get_binding_name(i), _dims(engine.get_binding_shape(i)), dtype)))
    return found


def engine_io(engine: trt.ICudaEngine) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """An engine's inputs and outputs as TensorSpecs (a dynamic dimension reads as "batch"), with the
    dtypes the engine reports, through the installed TensorRT's I/O API."""
    import tensorrt as trt

    found = _named_io(engine) if api_version(trt.__version__) >= NAMED_IO else _binding_io(engine)
    return tuple(s for is_in, s in found if is_in), tuple(s for is_in, s in found if not is_in)


def _ids_as(specs: tuple[TensorSpec, ...], want: str) -> tuple[TensorSpec, ...]:
    """byte_ids presented as the manifest's integer type when the engine's is the other one (an
    int64 bundle's engine on TensorRT 8 takes INT32): the host converts; any other type mismatch
    is still refused by check_io."""
    return tuple(dataclasses.replace(t, dtype=want) if t.name == "byte_ids" and {t.dtype, want} == BYTE_ID_TYPES
                 else t for t in specs)


class _NamedIO:
    """TensorRT 8.5+: shapes and device addresses set by tensor name, then execute_async_v3."""

    call = "execute_async_v3"

    def __init__(self, ctx: trt.IExecutionContext) -> None:
        self.ctx = ctx

    def bind(self, name: str, address: int, shape: tuple | None = None) -> None:
        if shape is not None:
            self.ctx.set_input_shape(name, shape)
        self.ctx.set_tensor_address(name, address)

    def enqueue(self, stream: Any) -> bool:
        return self.ctx.execute_async_v3(stream)


class _BindingIO:
    """TensorRT 8.0-8.4: shapes set by binding index; the device pointers go to execute_async_v2 as
    one list indexed by binding (the engine's one optimization profile)."""

    call = "execute_async_v2"

    def __init__(self, ctx: Any, engine: Any, names: list[str]) -> None:
        self.ctx, self.index = ctx, {name: int(engine.get_binding_index(name)) for name in names}
        self.pointers = [0] * int(engine.num_bindings)

    def bind(self, name: str, address: int, shape: tuple | None = None) -> None:
        index = self.index[name]
        if shape is not None:
            self.ctx.set_binding_shape(index, shape)
        self.pointers[index] = address

    def enqueue(self, stream: Any) -> bool:
        return bool(self.ctx.execute_async_v2(bindings=self.pointers, stream_handle=stream))


class _Engine:
    """One deserialized engine + context with its device buffers and captured CUDA graphs."""

    def __init__(self, runtime: trt.Runtime, plan: bytes, backend: TrtBackend, graph: str) -> None:
        self.cudart, self.backend, self.graph = backend.cudart, backend, graph
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EdgelmError(f"the {graph} engine of {backend.bundle.path} cannot be deserialized here (built "
                              f"for another GPU or TensorRT version {backend.trt.__version__}); run "
                              "`edgelm build` again on this device")
        ins, outs = engine_io(engine)
        ids_type = self._check_io(ins, outs)
        self.engine: trt.ICudaEngine = engine
        self.ctx: trt.IExecutionContext = engine.create_execution_context()
        names = [t.name for t in ins + outs]
        self.io = _NamedIO(self.ctx) if backend.api >= NAMED_IO else _BindingIO(self.ctx, engine, names)
        ids = backend.ids_prefill if graph == "prefill" else backend.ids_step
        self.ids, self.ids_shape = ids, ids.shape[1:]
        self.staged = ids if ids.dtype == ids_type else np.zeros(ids.shape, ids_type)  # as the engine takes them
        self.d_ids = self._alloc(self.staged.nbytes)
        self.d_logits = self._alloc(backend.logits.nbytes)
        self.d_in = [self._alloc(b.nbytes) for b in backend.state_in]
        self.d_out = [self._alloc(b.nbytes) for b in backend.state_out]
        self.graphs: dict[int, object | None] = {}  # batch -> CUDA graph; None: cannot be captured

    def _check_io(self, ins: tuple[TensorSpec, ...], outs: tuple[TensorSpec, ...]) -> str:
        """Refuse an engine whose I/O is not the manifest's; return its byte_ids type."""
        bundle = self.backend.bundle
        bundle.check_io(self.graph, _ids_as(ins, bundle.manifest.graphs[self.graph].ids_dtype), outs)
        return next(t.dtype for t in ins if t.name == "byte_ids")

    def free(self) -> None:
        """Release the device buffers (once; later calls do nothing)."""
        for ptr in [self.d_ids, self.d_logits, *self.d_in, *self.d_out]:
            if ptr:
                self.cudart.cudaFree(ptr)
        self.d_ids = self.d_logits = 0
        self.d_in, self.d_out = [], []

    def _alloc(self, nbytes: int) -> int:
        return int(_ck(self.cudart.cudaMalloc(nbytes)))

    def _bind(self, batch: int) -> None:
        io, specs = self.io, self.backend.bundle.state
        io.bind("byte_ids", self.d_ids, (batch, *self.ids_shape))
        io.bind("logits", self.d_logits)
        for s, src, dst in zip(specs, self.d_in, self.d_out):
            io.bind(s.input, src, (batch, *s.shape))
            io.bind(s.output, dst)

    def run(self, stream: int, batch: int) -> None:
        """Host buffers in -> engine -> host buffers out (ids, state_in -> logits, state_out)."""
        be = self.backend
        if self.staged is not self.ids:  # the engine's other integer type (ids are 0..255)
            np.copyto(self.staged[:batch], self.ids[:batch], casting="unsafe")
        be.h2d(self.d_ids, self.staged[:batch])
        for d, h in zip(self.d_in, be.state_in):
            be.h2d(d, h[:batch])
        self._enqueue(stream, batch)
        be.d2h(be.logits[:batch], self.d_logits)
        for h, d in zip(be.state_out, self.d_out):
            be.d2h(h[:batch], d)
        _ck(self.cudart.cudaStreamSynchronize(stream))

    def _enqueue(self, stream: int, batch: int) -> None:
        self._bind(batch)
        graph = self.graphs.get(batch)
        if graph is not None:
            _ck(self.cudart.cudaGraphLaunch(graph, stream))
            return
        if not self.io.enqueue(stream):
            raise EdgelmError(f"TensorRT {self.io.call} failed on the {self.graph} engine; see the TensorRT log")
        if batch not in self.graphs:  # capture once; an engine that cannot be captured is enqueued directly
            self.graphs[batch] = self._capture(stream)

    def _capture(self, stream: int) -> object | None:
        cudart = self.cudart
        try:
            _ck(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            enqueued = self.io.enqueue(stream)
            graph = _ck(cudart.cudaStreamEndCapture(stream))  # ends the capture even if the enqueue failed
            # an enqueue TensorRT refused captured nothing: replaying that graph would run nothing
            return _ck(cudart.cudaGraphInstantiate(graph, 0)) if enqueued else None
        except EdgelmError:  # some engines cannot be captured: keep enqueueing directly
            return None

    @property
    def context_memory(self) -> int:
        """Device memory the execution context needs (device_memory_size_v2 from TensorRT 10.1)."""
        engine = self.engine
        return int(engine.device_memory_size_v2 if self.backend.api >= MEMORY_V2 else engine.device_memory_size)


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle, device: str | None, max_streams: int) -> None:
        super().__init__(bundle, device, max_streams)
        import tensorrt as trt

        if device not in (None, "cuda"):
            raise EdgelmError(f"the tensorrt backend runs on the GPU only; device {device!r} is not possible")
        plans = {}
        for graph in ("step", "prefill"):
            art = bundle.artifact(graph)
            if art is None:
                raise EdgelmError(f"bundle {bundle.path} has no {graph} engine built for this device; "
                                  f"run `edgelm build {bundle.path}` on it")
            plans[graph] = bundle.read_artifact(art)
        self.trt, self.cudart = trt, _cudart()
        self.api = api_version(trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.stream = _ck(self.cudart.cudaStreamCreate())
        self.engines = {g: _Engine(runtime, plan, self, g) for g, plan in plans.items()}

    def h2d(self, dst: int, src: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _ck(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self.stream))

    def d2h(self, dst: np.ndarray, src: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ck(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self.stream))

    def _run(self, graph: str, batch: int) -> None:
        self.engines[graph].run(self.stream, batch)

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__}"

    @property
    def device_memory_bytes(self) -> int:
        """What the engines' execution contexts need on the device (activations, scratch), plus the
        buffers this backend allocated there: `edgelm profile` reports it."""
        contexts = sum(eng.context_memory for eng in self.engines.values())
        return contexts + len(self.engines) * self.buffer_bytes

    def close(self) -> None:
        for eng in self.engines.values():
            eng.free()


BACKEND = TrtBackend
