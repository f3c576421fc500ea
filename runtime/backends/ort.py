"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers where installed.

Graphs are loaded from the bundle's verified bytes, never by path, and their weights file is
handed to ONNX Runtime from memory (one buffer shared by the step and prefill sessions), so what
runs is exactly what was hashed. Each graph's inputs and outputs are checked against the
manifest's state spec before it runs. Each (graph, batch) pair gets one IOBinding, made once, that binds slices of the preallocated
buffers as OrtValues; a call is then a single `run_with_iobinding` that writes logits and new
state straight into the output buffers. The provider actually used is checked after the session
is created: asking for CUDA and getting CPU is an error, never a silent fallback.
Tiny recurrent steps are latency-bound, so ONNX Runtime runs one intra-op thread unless
EDGELM_ORT_THREADS says otherwise (0 = ONNX Runtime's default, one per core).
"""

from __future__ import annotations

import os

import numpy as np

from ...errors import EdgelmError
from ..manifest import TensorSpec
from .base import Backend

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
PROVIDERS = {
    None: ["CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ONNX Runtime's MatMulAddFusion (level 1) turns MatMul + Add back into Gemm before its QDQ
# fusions (level 2) run, and DQ -> Gemm with a per-row bias or quantized activations is then left
# as a full weight dequantization per call. Disabled for quantized graphs, DQ -> MatMul becomes
# MatMulNBits / MatMulIntegerToFloat: lstm-tiny w8a8 34 us per byte instead of ~500 (measured).
QUANTIZED_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def disabled_optimizers(precision: str) -> list[str]:
    """The ONNX Runtime graph optimizers a bundle of `precision` runs without."""
    return list(QUANTIZED_DISABLED_OPTIMIZERS) if precision in ("int8", "int4") else []


def session_config(precision: str, graph: str) -> dict[str, str]:
    """Session config entries for one graph of a bundle of `precision`.

    An int4 prefill graph dequantizes each weight once per chunk and shares it across the
    chunk's positions; ONNX Runtime's QDQ handling would copy that DequantizeLinear for every
    consumer (one full int4 dequantization per byte, which it does not fuse for M = 1 rows), so
    the int4 prefill runs with it off: gru-tiny w4 prefill 1,800 -> 20,400 bytes/s, mingru-tiny
    56k -> 82k (measured). int8 graphs and every step graph keep it (their integer kernels win).
    """
    return {"session.disable_quant_qdq": "1"} if precision == "int4" and graph == "prefill" else {}


def available() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu for CUDA)"
    return None


def _session_options(ort, threads: int | None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = os.environ.get("EDGELM_ORT_ARENA", "1") == "1"
    if threads is None:
        threads = int(os.environ.get("EDGELM_ORT_THREADS", "1"))
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads == 1 else "1")
    opts.log_severity_level = 3
    return opts


def _check_providers(ort, device: str | None) -> list[str]:
    if device not in PROVIDERS:
        raise EdgelmError(f"unknown device {device!r} for onnxruntime; use cpu, cuda or tensorrt")
    wanted = PROVIDERS[device]
    have = ort.get_available_providers()
    if wanted[0] not in have:
        raise EdgelmError(f"onnxruntime here has no {wanted[0]} (available: {', '.join(have)}); "
                          "install onnxruntime-gpu with matching CUDA libraries, or use device='cpu'")
    return wanted


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, device, max_streams, threads: int | None = None):
        super().__init__(bundle, device, max_streams)
        import onnxruntime as ort

        self._ort = ort
        providers = _check_providers(ort, device)
        self._data: dict[str, np.ndarray] = {}  # weights files, kept alive as long as the sessions
        self._initializers: list = []  # older ONNX Runtime: per-initializer views of _data
        self.sessions = {g: self._session(g, threads, providers) for g in ("step", "prefill")}
        got = self.sessions["step"].get_providers()
        if got[0] != providers[0]:
            raise EdgelmError(f"onnxruntime fell back to {got[0]} although {providers[0]} was asked for "
                              "(CUDA/TensorRT libraries missing or incompatible); fix the install or use device='cpu'")
        self.providers = got
        self._bindings: dict[tuple[str, int, int], object] = {}  # (graph, batch, parity)

    def _session(self, graph: str, threads: int | None, providers: list[str]):
        spec, opts = self.bundle.manifest.graphs[graph], _session_options(self._ort, threads)
        for key, value in session_config(self.bundle.manifest.precision, graph).items():
            opts.add_session_config_entry(key, value)
        for name in spec.data:
            if name not in self._data:
                self._data[name] = np.frombuffer(self.bundle.read(name), np.uint8)
        model = self.bundle.read(spec.file)
        if spec.data:
            self._add_weights(opts, spec, model)
        try:
            sess = self._ort.InferenceSession(model, opts, providers=providers,
                                              disabled_optimizers=disabled_optimizers(self.bundle.manifest.precision))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for bad graphs
            first = (str(exc).strip().splitlines() or ["no details"])[0][:200]
            raise EdgelmError(f"{spec.file} in {self.bundle.path} cannot be loaded by onnxruntime ({first}); "
                              "re-export the bundle") from None
        self.bundle.check_io(graph, _io(sess.get_inputs()), _io(sess.get_outputs()))
        return sess

    def _add_weights(self, opts, spec, model: bytes) -> None:
        """Hand the graph its weights from memory (runtime/onnx_data.py: whole files on ONNX Runtime
        1.24+, one array per initializer on older releases, all that Python 3.8 has)."""
        from ..onnx_data import add_weights

        files = {n: self._data[n] for n in spec.data}
        self._initializers += add_weights(self._ort, opts, model, files, f"{spec.file} in {self.bundle.path}")

    def _binding(self, graph: str, batch: int):
        key = (graph, batch, self.parity)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = self._make_binding(graph, batch)
        return binding

    def _make_binding(self, graph: str, batch: int):
        ov = self._ort.OrtValue.ortvalue_from_numpy
        binding = self.sessions[graph].io_binding()
        ids = self.ids_prefill if graph == "prefill" else self.ids_step
        binding.bind_ortvalue_input("byte_ids", ov(ids[:batch]))
        binding.bind_ortvalue_output("logits", ov(self.logits[:batch]))
        for spec, src, dst in zip(self.bundle.state, self.state_in, self.state_out):
            binding.bind_ortvalue_input(spec.input, ov(src[:batch]))
            binding.bind_ortvalue_output(spec.output, ov(dst[:batch]))
        return binding

    def _run(self, graph: str, batch: int) -> None:
        self.sessions[graph].run_with_iobinding(self._binding(graph, batch))

    def describe(self) -> str:
        return f"onnxruntime {self._ort.__version__} ({self.providers[0]})"

    def close(self) -> None:
        """Drop the ONNX Runtime sessions, their bindings and the weights they were given."""
        self._bindings.clear()
        self.sessions.clear()
        self._data.clear()


def _io(args) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(a.name, tuple(a.shape), ORT_TYPES.get(a.type, a.type)) for a in args)


BACKEND = OrtBackend
