"""TensorRT backend: the native `engine.plan` that `edgelm build` writes on the device.

Written against the TensorRT 10/11 Python API (name-based I/O): deserialize_cuda_engine,
create_execution_context, set_input_shape, set_tensor_address, execute_async_v3. Device memory
comes from cuda-python (cudart). Two device copies of the state ping-pong (an input is never an
output); each (graph, batch, parity) enqueue is captured once as a CUDA graph and replayed.
The engine holds the step graph; a prefill chunk runs through `engine.prefill.plan` when the
bundle has one, else as `chunk` steps (the same state either way).
tensorrt and cuda-python are imported only when this backend is picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import EdgelmError
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


class _Engine:
    """One deserialized engine + context with ping-pong device buffers and captured graphs."""

    def __init__(self, runtime: trt.Runtime, path: Path, backend: TrtBackend, ids_shape: tuple) -> None:
        self.cudart, self.backend = backend.cudart, backend
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EdgelmError(f"{path} cannot be deserialized here (built for another GPU or TensorRT "
                              f"version {backend.trt.__version__}); run `edgelm build` again on this device")
        self.engine: trt.ICudaEngine = engine
        self.ctx: trt.IExecutionContext = engine.create_execution_context()
        n = backend.max_streams
        self.d_ids = self._alloc(n * int(np.prod(ids_shape)) * 8)
        self.d_logits = self._alloc(n * 256 * 4)
        self.d_state = [[self._alloc(b.nbytes) for b in backend.state_in] for _ in range(2)]
        self.graphs: dict[tuple[int, int], object] = {}

    def free(self) -> None:
        """Release the device buffers (once; later calls do nothing)."""
        for ptr in [self.d_ids, self.d_logits, *self.d_state[0], *self.d_state[1]]:
            if ptr:
                self.cudart.cudaFree(ptr)
        self.d_ids = self.d_logits = 0
        self.d_state = [[], []]

    def _alloc(self, nbytes: int) -> int:
        return int(_ck(self.cudart.cudaMalloc(nbytes)))

    def _bind(self, batch: int, parity: int, ids_shape: tuple) -> None:
        ctx, specs = self.ctx, self.backend.bundle.state
        ctx.set_input_shape("byte_ids", (batch, *ids_shape))
        ctx.set_tensor_address("byte_ids", self.d_ids)
        ctx.set_tensor_address("logits", self.d_logits)
        for s, src, dst in zip(specs, self.d_state[parity], self.d_state[parity ^ 1]):
            ctx.set_input_shape(s.input, (batch, *s.shape))
            ctx.set_tensor_address(s.input, src)
            ctx.set_tensor_address(s.output, dst)

    def enqueue(self, stream: int, batch: int, parity: int, ids_shape: tuple) -> None:
        key = (batch, parity)
        self._bind(batch, parity, ids_shape)
        if key in self.graphs:
            _ck(self.cudart.cudaGraphLaunch(self.graphs[key], stream))
            return
        if not self.ctx.execute_async_v3(stream):
            raise EdgelmError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        self.graphs[key] = self._capture(stream)

    def _capture(self, stream: int) -> object:
        cudart = self.cudart
        try:
            _ck(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self.ctx.execute_async_v3(stream)
            graph = _ck(cudart.cudaStreamEndCapture(stream))
            return _ck(cudart.cudaGraphInstantiate(graph, 0))
        except EdgelmError:  # some engines cannot be captured: keep enqueueing directly
            return None


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle, device: str | None, max_streams: int) -> None:
        super().__init__(bundle, device, max_streams)
        import tensorrt as trt

        if device not in (None, "cuda"):
            raise EdgelmError(f"the tensorrt backend runs on the GPU only; device {device!r} is not possible")
        self.trt, self.cudart = trt, _cudart()
        eng = bundle.manifest.get("engine", {})
        path = bundle.path / eng.get("file", "engine.plan")
        if not path.is_file():
            raise EdgelmError(f"bundle {bundle.path} has no {path.name}; run `edgelm build {bundle.path}` on this device")
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.stream = _ck(self.cudart.cudaStreamCreate())
        self.step_engine = _Engine(runtime, path, self, ())
        pre = bundle.path / eng.get("prefill_file", "engine.prefill.plan")
        self.prefill_engine = _Engine(runtime, pre, self, (self.chunk,)) if pre.is_file() else None
        self._dev_parity = 0

    def _h2d(self, dst: int, src: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _ck(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self.stream))

    def _d2h(self, dst: np.ndarray, src: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ck(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self.stream))

    def _run(self, graph: str, batch: int) -> None:
        eng = self.step_engine
        if graph == "prefill":
            if self.prefill_engine is None:
                return self._prefill_by_steps(batch)
            eng = self.prefill_engine
        ids = self.ids_prefill[:batch] if graph == "prefill" else self.ids_step[:batch]
        p = self._dev_parity
        self._h2d(eng.d_ids, ids)
        for d, h in zip(eng.d_state[p], self.state_in):
            self._h2d(d, h[:batch])
        eng.enqueue(self.stream, batch, p, ids.shape[1:])
        self._d2h(self.logits[:batch], eng.d_logits)
        for h, d in zip(self.state_out, eng.d_state[p ^ 1]):
            self._d2h(h[:batch], d)
        _ck(self.cudart.cudaStreamSynchronize(self.stream))

    def _prefill_by_steps(self, batch: int) -> None:
        ids = self.ids_prefill[:batch]
        for t in range(self.chunk):
            self.ids_step[:batch] = ids[:, t]
            self._run("step", batch)
            if t < self.chunk - 1:  # carry the state: out -> in (host buffers)
                for dst, src in zip(self.state_in, self.state_out):
                    dst[:batch] = src[:batch]

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__}"

    def close(self) -> None:
        self.step_engine.free()
        if self.prefill_engine is not None:
            self.prefill_engine.free()


BACKEND = TrtBackend
