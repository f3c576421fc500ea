"""TensorRT backend: the native engines `edgelm build` writes and records on the device.

Written against the TensorRT 10/11 Python API (name-based I/O): deserialize_cuda_engine,
create_execution_context, set_input_shape, set_tensor_address, execute_async_v3. Device memory
comes from cuda-python (cudart). Two engines, both required: `engine.plan` for the step graph and
`engine.prefill.plan` for the prefill graph, each deserialized from bytes checked against the
sha256 the manifest's `built` section records, and each checked against the manifest's state
spec before it runs. Each engine owns device buffers for the byte ids, the logits and the state
in and out; each (engine, batch) enqueue is captured once as a CUDA graph and replayed.
tensorrt and cuda-python are imported only when this backend is picked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...errors import EdgelmError
from ..manifest import TensorSpec
from .base import Backend

if TYPE_CHECKING:  # typed against tensorrt-stubs in the test suite (tests/test_trt_build.py)
    import tensorrt as trt

MISSING = ("tensorrt is not installed: on Jetson it comes with JetPack (apt install python3-libnvinfer), "
           "on a desktop GPU pip install tensorrt; or use --backend onnxruntime")


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


def engine_io(engine: trt.ICudaEngine) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """An engine's inputs and outputs as TensorSpecs (a dynamic dimension reads as "batch")."""
    import tensorrt as trt

    types = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.INT64: "int64",
             trt.DataType.INT32: "int32", trt.DataType.INT8: "int8"}
    ins: list[TensorSpec] = []
    outs: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = engine.get_tensor_shape(name)
        dims = tuple("batch" if shape[i] < 0 else int(shape[i]) for i in range(len(shape)))
        spec = TensorSpec(name, dims, types.get(engine.get_tensor_dtype(name), "unsupported"))
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(spec)
    return tuple(ins), tuple(outs)


class _Engine:
    """One deserialized engine + context with its device buffers and captured CUDA graphs."""

    def __init__(self, runtime: trt.Runtime, plan: bytes, backend: TrtBackend, graph: str) -> None:
        self.cudart, self.backend, self.graph = backend.cudart, backend, graph
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EdgelmError(f"the {graph} engine of {backend.bundle.path} cannot be deserialized here (built "
                              f"for another GPU or TensorRT version {backend.trt.__version__}); run "
                              "`edgelm build` again on this device")
        backend.bundle.check_io(graph, *engine_io(engine))
        self.engine: trt.ICudaEngine = engine
        self.ctx: trt.IExecutionContext = engine.create_execution_context()
        ids = backend.ids_prefill if graph == "prefill" else backend.ids_step
        self.ids, self.ids_shape = ids, ids.shape[1:]
        self.d_ids = self._alloc(ids.nbytes)
        self.d_logits = self._alloc(backend.logits.nbytes)
        self.d_in = [self._alloc(b.nbytes) for b in backend.state_in]
        self.d_out = [self._alloc(b.nbytes) for b in backend.state_out]
        self.graphs: dict[int, object | None] = {}  # batch -> CUDA graph; None: cannot be captured

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
        ctx, specs = self.ctx, self.backend.bundle.state
        ctx.set_input_shape("byte_ids", (batch, *self.ids_shape))
        ctx.set_tensor_address("byte_ids", self.d_ids)
        ctx.set_tensor_address("logits", self.d_logits)
        for s, src, dst in zip(specs, self.d_in, self.d_out):
            ctx.set_input_shape(s.input, (batch, *s.shape))
            ctx.set_tensor_address(s.input, src)
            ctx.set_tensor_address(s.output, dst)

    def run(self, stream: int, batch: int) -> None:
        """Host buffers in -> engine -> host buffers out (ids, state_in -> logits, state_out)."""
        be = self.backend
        be.h2d(self.d_ids, self.ids[:batch])
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
        if not self.ctx.execute_async_v3(stream):
            raise EdgelmError(f"TensorRT execute_async_v3 failed on the {self.graph} engine; see the TensorRT log")
        if batch not in self.graphs:  # capture once; an engine that cannot be captured is enqueued directly
            self.graphs[batch] = self._capture(stream)

    def _capture(self, stream: int) -> object | None:
        cudart = self.cudart
        try:
            _ck(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            enqueued = self.ctx.execute_async_v3(stream)
            graph = _ck(cudart.cudaStreamEndCapture(stream))  # ends the capture even if the enqueue failed
            # an enqueue TensorRT refused captured nothing: replaying that graph would run nothing
            return _ck(cudart.cudaGraphInstantiate(graph, 0)) if enqueued else None
        except EdgelmError:  # some engines cannot be captured: keep enqueueing directly
            return None


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
        contexts = sum(eng.engine.device_memory_size_v2 for eng in self.engines.values())
        return contexts + len(self.engines) * self.buffer_bytes

    def close(self) -> None:
        for eng in self.engines.values():
            eng.free()


BACKEND = TrtBackend
