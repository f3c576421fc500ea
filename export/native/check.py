"""Export-time parity of the compiled C against the bundle's own ONNX graphs in ONNX Runtime.

Both sides stream the same random bytes for STEPS steps at batch BATCH (5: the kernels' 4-row
tile and a single row both run), each carrying its own state
(so drift accumulates as it would in use), then run one prefill chunk from there, then generate
GREEDY bytes greedily at batch 1 from the same prompt. fp32 must agree within FP32_ATOL on
logits (the rounding of a different summation order and of el_exp); int8 within the precision's
own atol and mean bound (the same integer arithmetic, but a value within rounding of a
quantization step may land on the other side, as between PyTorch and ONNX Runtime).
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy / onnx: on Python 3.8 one line says what to do

import ctypes
from pathlib import Path

import numpy as np

from ... import precision as precisions
from ...errors import EdgelmError
from ...runtime import manifest as fmt

FP32_ATOL = 1e-4
STEPS = 64
BATCH = 5
GREEDY = 64
_P = ctypes.c_void_p


class _Native:
    """The compiled library, called like the runtime's native backend (ctypes, batch-first arrays)."""

    def __init__(self, lib_path: Path, weights: bytes, ids_dtype: str):
        from ...runtime.backends.native import bind

        self.lib = ctypes.CDLL(str(lib_path.resolve()))
        self.fns = bind(self.lib)
        self.weights = np.frombuffer(weights, np.uint8).copy()  # numpy's allocation: 64-byte aligned here
        self.scratch = np.zeros(self.lib.edgelm_scratch_bytes(8) + 64, np.uint8)
        self.ids_dtype = ids_dtype  # edgelm_id_t

    def run(self, ids: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        ids = np.ascontiguousarray(ids, self.ids_dtype)
        batch = ids.shape[0]
        sin = [np.ascontiguousarray(s, np.float32) for s in states]
        sout = [np.empty_like(s) for s in sin]
        logits = np.empty((batch, 256), np.float32)
        arr = _P * len(sin)
        fn = self.fns["prefill" if ids.ndim == 2 else "step"]
        fn(self.weights.ctypes.data, batch, ids.ctypes.data, arr(*[s.ctypes.data for s in sin]),
           arr(*[s.ctypes.data for s in sout]), logits.ctypes.data, (self.scratch.ctypes.data + 63) & ~63)
        return logits, sout


class _Onnx:
    def __init__(self, directory: Path, manifest):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.sessions = {g: ort.InferenceSession(str(directory / manifest.graphs[g].file), opts,
                                                 providers=["CPUExecutionProvider"]) for g in fmt.GRAPHS}
        self.state, self.ids = manifest.state, manifest.graphs["step"].ids_dtype

    def run(self, ids: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        sess = self.sessions["prefill" if ids.ndim == 2 else "step"]
        feeds = {"byte_ids": ids.astype(self.ids), **{s.input: x for s, x in zip(self.state, states)}}
        out = sess.run(None, feeds)
        return out[0], out[1:]


def parity(directory: Path, lib_path: Path, manifest) -> dict:
    """Stream, prefill and greedy-generate on both; raise EdgelmError past the limits."""
    native = _Native(lib_path, (directory / fmt.WEIGHTS).read_bytes(), manifest.graphs["step"].ids_dtype)
    onnx = _Onnx(directory, manifest)
    try:
        return _compare(native, onnx, manifest)
    finally:
        from ...runtime.backends.native import unload

        unload(native.lib)


def _compare(native: _Native, onnx: _Onnx, manifest) -> dict:
    rng = np.random.default_rng(0)
    zeros = [np.zeros((BATCH, *s.shape), np.float32) for s in manifest.state]
    s_n, s_o, dl, ds, means = zeros, zeros, 0.0, 0.0, []
    for ids in rng.integers(0, 256, (STEPS, BATCH)):
        (l_n, s_n), (l_o, s_o) = native.run(ids, s_n), onnx.run(ids, s_o)
        dl, ds = max(dl, _diff(l_n, l_o)), max(ds, *(_diff(a, b) for a, b in zip(s_n, s_o)))
        means.append(float(np.abs(l_n - l_o).mean()))
    chunk = rng.integers(0, 256, (BATCH, manifest.prefill_chunk))
    (p_n, ps_n), (p_o, ps_o) = native.run(chunk, s_o), onnx.run(chunk, s_o)
    res = {"steps": STEPS, "batch": BATCH, "max_abs_logit_diff": dl, "max_abs_state_diff": ds,
           "mean_abs_logit_diff": float(np.mean(means)), "prefill_max_abs_diff": _diff(p_n, p_o),
           "prefill_max_abs_state_diff": max(_diff(a, b) for a, b in zip(ps_n, ps_o)),
           "greedy_bytes": GREEDY, "greedy_equal": _greedy(native, manifest.state) == _greedy(onnx, manifest.state)}
    _check(res, manifest.precision)
    return res


def _greedy(side, state_spec) -> bytes:
    states = [np.zeros((1, *s.shape), np.float32) for s in state_spec]
    out, byte = bytearray(), ord("T")
    for _ in range(GREEDY):
        logits, states = side.run(np.array([byte]), states)
        byte = int(np.argmax(logits[0]))
        out.append(byte)
    return bytes(out)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _check(res: dict, precision: str) -> None:
    prec = precisions.get(precision)
    atol = FP32_ATOL if precision == "fp32" else prec.atol
    limits = [("max_abs_logit_diff", atol), ("prefill_max_abs_diff", atol),
              ("max_abs_state_diff", atol * precisions.STATE_ATOL_FACTOR),
              ("prefill_max_abs_state_diff", atol * precisions.STATE_ATOL_FACTOR)]
    if precision != "fp32":
        limits.append(("mean_abs_logit_diff", prec.mean_atol))
    res["atol"] = atol
    bad = [f"{k} {res[k]:.2e}" for k, lim in limits if not res[k] <= lim]
    if precision == "fp32" and not res["greedy_equal"]:
        bad.append("greedy bytes differ")
    if bad:
        raise EdgelmError(f"the native C disagrees with the ONNX graphs ({', '.join(bad)}; atol {atol:.0e}): "
                          "not writing the bundle")
