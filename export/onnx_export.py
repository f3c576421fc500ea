"""ONNX export of the step and prefill graphs (legacy TorchScript exporter, opset 17).

    step.onnx     byte_ids (B,) int64 + state_in.*  -> logits (B, 256) + state_out.*
    prefill.onnx  byte_ids (B, C) int64 + state_in.* -> logits (B, 256) of the last byte + state_out.*

Both are loop-free: the step is the fused module of export/fused/; the prefill is its chunk path
(matmuls over the whole chunk, a scan of the linear recurrence; LSTM / GRU unroll the step).
`export_naive_step` exports the model's own `step` unchanged (for node-count and latency
comparisons).
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import contextlib
import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .. import precision as precisions
from ..errors import EdgelmError
from ..models import ByteLM
from ..runtime.manifest import state_io
from .fused import FusedPrefill, fuse
from .graph_passes import compact, declare_outputs, lower_blocked_dq, narrow_byte_ids, tidy, unfuse_dq_gemm
from .validate import one_thread

OPSET = 17  # lowered per target to what its TensorRT parses (trt_ops.target_opset)
LOOP_OPS = ("LSTM", "GRU", "RNN", "Loop", "Scan", "If")


class NaiveStep(nn.Module):
    """model.step as it is, with the bundle's graph interface."""

    def __init__(self, model: ByteLM):
        super().__init__()
        self.model = model

    def forward(self, byte_ids, *state):
        logits, state = self.model.step(byte_ids, tuple(state))
        return (logits, *state)


def io_names(model: ByteLM) -> tuple[list[str], list[str]]:
    pairs = [state_io(n) for n in model.state_names()]
    return ["byte_ids"] + [i for i, _ in pairs], ["logits"] + [o for _, o in pairs]


def _export(module: nn.Module, args: tuple, path: Path, model: ByteLM, opset: int, ids: str = "int64") -> None:
    inputs, outputs = io_names(model)
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), one_thread():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False,
                          do_constant_folding=True, external_data=False, custom_opsets=_custom_opsets(module))
    unfuse_dq_gemm(path)  # quantized forms: the MatMul + Add ONNX Runtime fuses into integer kernels
    tidy(path)
    compact(path)
    lower_blocked_dq(path)  # int4 weights: edgelm.DequantizeBlocked -> opset 21 DequantizeLinear
    if ids == "int32":
        narrow_byte_ids(path)  # TensorRT 8 targets: no INT64
    declare_outputs(path, {"logits": ("batch", 256), **{state_io(n)[1]: ("batch", *shape)
                                                        for n, shape in model.state_spec()}})


def _custom_opsets(module: nn.Module) -> dict:
    """The `edgelm` domain where a form has int4 sites (blocked DQ placeholders), else none."""
    from .quant.sites import QuantMatMul

    blocked = any(m.group for m in module.modules() if isinstance(m, QuantMatMul))
    return {"edgelm": 1} if blocked else {}


def _compute_dtype(precision: str) -> torch.dtype:
    """The torch dtype a precision's fused graph computes in (edgelm.precision owns the rule)."""
    compute = precisions.get(precision).compute
    if compute is None:
        raise EdgelmError(f"edgelm does not export {precision} graphs yet; use {' or '.join(precisions.exported())}")
    return getattr(torch, compute)


def example_args(model: ByteLM, batch: int = 2, chunk: int | None = None) -> tuple:
    shape = (batch,) if chunk is None else (batch, chunk)
    return (torch.zeros(shape, dtype=torch.long), *model.init_state(batch))


def export_step(model: ByteLM, path: str | Path, precision: str = "fp32", opset: int = OPSET,
                form: nn.Module | None = None, ids: str = "int64") -> None:
    """The step graph of `form` (a quantized fused form), else of the model fused in `precision`;
    `ids`: the byte ids' dtype (int32 for TensorRT 8 targets)."""
    _export(form or fuse(model, _compute_dtype(precision)), example_args(model), Path(path), model, opset, ids)


def export_prefill(model: ByteLM, path: str | Path, precision: str = "fp32",
                   chunk: int | None = None, opset: int = OPSET, form: nn.Module | None = None,
                   ids: str = "int64", per_position: bool = False) -> None:
    """The prefill graph over `chunk` bytes (default: the form's PREFILL_CHUNK). per_position:
    the layers' recurrence per position (ResidualLayer.PER_POSITION; the native C target's form)."""
    step = form or fuse(model, _compute_dtype(precision))
    chunk = step.PREFILL_CHUNK if chunk is None else chunk
    layers = [m for m in step.modules() if hasattr(m, "PER_POSITION")]
    for m in layers:
        m.PER_POSITION = per_position
    try:
        _export(FusedPrefill(step, chunk), example_args(model, chunk=chunk), Path(path), model, opset, ids)
    finally:
        for m in layers:
            del m.PER_POSITION  # back to the class's default


def export_naive_step(model: ByteLM, path: str | Path, opset: int = OPSET) -> None:
    """Plain torch.onnx.export of model.step (fp32), for comparison."""
    _export(NaiveStep(model.eval()), example_args(model), Path(path), model, opset)


# -- graph facts --------------------------------------------------------------------------
def _dims(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def _dtype(value_info) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def io_spec(onnx_model) -> dict:
    """{"inputs": [{"name", "shape", "dtype"}], "outputs": [...]} of a graph."""
    g = onnx_model.graph
    return {"inputs": [{"name": v.name, "shape": _dims(v), "dtype": _dtype(v)} for v in g.input],
            "outputs": [{"name": v.name, "shape": _dims(v), "dtype": _dtype(v)} for v in g.output]}


def loop_ops(onnx_model) -> list[str]:
    """Recurrent/control-flow ops (LSTM, GRU, Loop, ...) present in a graph."""
    return sorted({n.op_type for n in onnx_model.graph.node if n.op_type in LOOP_OPS})
