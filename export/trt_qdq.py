"""TensorRT's explicit-quantization (Q/DQ) placement rules, checked on an ONNX graph without a GPU.

edgelm's quantized graphs (export/quant/) use three forms, all float32 outside Q/DQ:
  weights      INT8 initializer -> DequantizeLinear(1-D per-output-channel scale, axis) -> MatMul/Gemm
  activations  QuantizeLinear(x, scalar scale, INT8 zero point 0) -> DequantizeLinear -> MatMul/Gemm
  int4         INT4 initializer -> DequantizeLinear(2-D scale, block_size 64/128; opset 21) -> MatMul/Gemm
and gather tables as DequantizeLinear(INT8 table, per-column scale, axis=1) -> Gather (the CPU-only
form Gather(INT8 table) -> DequantizeLinear is refused: TensorRT's Gather takes no INT8).

Rules and their sources:
  [dq]  TensorRT operator reference, Dequantize: the scale is a build-time constant, a scalar (per
        tensor), 1-D (per channel) or 2-D (blocks, INT4 only); a zero point, if any, only zeros.
        https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/operators/Dequantize.html
  [q]   TensorRT operator reference, Quantize: build-time constant scalar or 1-D scale, zero zero point.
  [eq]  TensorRT developer guide, "Explicit Quantization": pre-quantized weights need a DequantizeLayer
        between the weights and the linear op that uses them; activations are quantized per tensor;
        scales must be positive; Q/DQ pairs are what TensorRT fuses into its integer kernels.
        https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
  [sch] TensorRT "Quantization Schemes": INT8 weights in [-127, 127]; INT4 needs per-block scales,
        block sizes {64, 128}; INT4 is weight-only.
        https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-schemes.html
  [ops] onnx-tensorrt docs/operators.md (data/tensorrt_onnx_ops.toml): the types each op takes
        (Gather: no INT8); [onnx] ONNX DequantizeLinear-21 adds INT4 and block_size; QuantizeLinear
        without an INT8 zero point (or output_dtype) outputs UINT8.
Values of initializers stored as external data are checked only when base_dir is given. The
entry point is trt_ops.qdq_problems (this module imports nothing from trt_ops: no import cycle).
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

INT4_TYPES = (TensorProto.INT4, TensorProto.UINT4)
FP8_TYPES = tuple(getattr(TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                                   "FLOAT8E5M2FNUZ"))
INT4_BLOCKS = (64, 128)  # [sch]
INT8_WEIGHT_MIN = -127  # [sch]
WEIGHT_USERS = {"MatMul": 1, "Gemm": 1, "Gather": 0}  # op -> the input a dequantized weight may feed


@dataclass
class _Graph:
    consts: dict  # name -> TensorProto: initializers and Constant outputs (build-time constants)
    consumers: dict  # tensor name -> [(node, input index)]
    outputs: set
    opset: int
    types: dict  # tensor name -> TensorRT type name (INT8, FP32, ...)
    supported: dict  # op -> the TensorRT types it takes (the parser's operator matrix)
    base_dir: str | None


def _name(node) -> str:
    return node.name or f"(output {node.output[0]})"


def _constant(node):
    attr = node.attribute[0] if node.attribute else None
    if attr is None or attr.name not in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        return None
    value = helper.get_attribute_value(attr)
    return value if attr.name == "value" else numpy_helper.from_array(np.array(value))


def _index(model, opset: int, types: dict, supported: dict, base_dir: str | None) -> _Graph:
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    consumers: dict = {}
    for node in g.node:
        if node.op_type == "Constant" and (value := _constant(node)) is not None:
            consts[node.output[0]] = value
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    return _Graph(consts, consumers, {o.name for o in g.output}, opset, types, supported, base_dir)


def _values(g: _Graph, name: str):
    """The constant's values, or None where they are not at hand (external data, no base_dir)."""
    t = g.consts.get(name)
    if t is None or (t.data_location == TensorProto.EXTERNAL and g.base_dir is None):
        return None
    try:
        return numpy_helper.to_array(t, g.base_dir or "")
    except (OSError, ValueError):
        return None


def _attr(node, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _scale_problems(g: _Graph, node) -> list[str]:
    """[dq] [q] [eq] scale a positive build-time constant; zero point absent or all zeros."""
    where, scale, zp = f"{node.op_type} {_name(node)}", _input(node, 1), _input(node, 2)
    if scale not in g.consts:
        return [f"{where}: scale {scale} is computed at run time; TensorRT needs Q/DQ scales as "
                "build-time constants: store it as an initializer"]
    problems = []
    values = _values(g, scale)
    if values is not None and not np.all(np.isfinite(v := values.astype(np.float64)) & (v > 0)):
        problems.append(f"{where}: scale {scale} has zero, negative or non-finite values; TensorRT "
                        "needs positive scales: clamp them when quantizing (e.g. to >= 1e-12)")
    if zp and zp not in g.consts:
        problems.append(f"{where}: zero point {zp} is computed at run time; TensorRT quantizes "
                        "symmetrically: make it an initializer of zeros or drop it")
    elif zp and (z := _values(g, zp)) is not None and np.any(z.astype(np.float64) != 0):
        problems.append(f"{where}: zero point {zp} is not all zero; TensorRT quantizes symmetrically: "
                        "use zero points of 0 (or none)")
    return problems


def _q_type(g: _Graph, node) -> int:
    """QuantizeLinear's output type: its zero point's, else output_dtype, else UINT8 [onnx]."""
    zp = _input(node, 2)
    if zp in g.consts:
        return g.consts[zp].data_type
    return _attr(node, "output_dtype", 0) or TensorProto.UINT8


def _quantize_problems(g: _Graph, node) -> list[str]:
    """[q] [eq] [sch] activations per tensor, in INT8 (or FP8); every Q followed by a DQ."""
    where, x, y = f"QuantizeLinear {_name(node)}", node.input[0], node.output[0]
    problems = _scale_problems(g, node)
    weight, scale = x in g.consts, g.consts.get(_input(node, 1))
    if not weight and scale is not None and len(scale.dims) != 0:
        problems.append(f"{where}: activation {x} has a scale of shape {list(scale.dims)}; TensorRT "
                        "quantizes activations per tensor: use a scalar scale")
    allowed = (TensorProto.INT8, *FP8_TYPES) + (INT4_TYPES if weight else ())
    if _q_type(g, node) not in allowed:
        kind = TensorProto.DataType.Name(_q_type(g, node))
        problems.append(f"{where}: quantizes {x} to {kind}; TensorRT quantizes activations to signed "
                        "INT8 (INT4 is weight-only): give it a scalar INT8 zero point 0")
    users = [n for n, _ in g.consumers.get(y, [])]
    if y in g.outputs or not users or any(n.op_type != "DequantizeLinear" for n in users):
        other = next((f"{n.op_type} {_name(n)}" for n in users if n.op_type != "DequantizeLinear"),
                     "the graph output")
        problems.append(f"{where}: output {y} feeds {other}, not a DequantizeLinear; TensorRT needs "
                        f"every QuantizeLinear followed by a DequantizeLinear: insert one on {y}")
    return problems


def _users_problems(g: _Graph, node, weight: str, int4: bool) -> list[str]:
    """[eq] a dequantized weight feeds the weight input of MatMul/Gemm (or a Gather table) directly."""
    allowed = {"MatMul": 1, "Gemm": 1} if int4 else WEIGHT_USERS
    users = g.consumers.get(node.output[0], [])
    bad = [(n, i) for n, i in users if allowed.get(n.op_type) != i]
    if node.output[0] in g.outputs or not users or bad:
        what = f"{bad[0][0].op_type} {_name(bad[0][0])} (input {bad[0][1]})" if bad else "the graph output"
        ops = "MatMul/Gemm" if int4 else "MatMul/Gemm or the table input of a Gather"
        return [f"DequantizeLinear {_name(node)}: weight {weight} feeds {what}; TensorRT takes a "
                f"dequantized weight only as the weight input of {ops}: connect it directly"]
    return []


def _out_axis(user, rank: int) -> int:
    """The output-channel axis of a weight: MatMul (in, out) and Gather tables by column."""
    if user.op_type == "Gemm":
        return 0 if _attr(user, "transB", 0) else 1
    return rank - 1


def _int8_weight_problems(g: _Graph, node, weight: str) -> list[str]:
    """[eq] [sch] per-output-channel 1-D scale on the output-channel axis; values in [-127, 127]."""
    where, shape = f"DequantizeLinear {_name(node)}: INT8 weight {weight}", list(g.consts[weight].dims)
    if len(shape) != 2:
        return [f"{where} has shape {shape}; TensorRT quantizes 2-D weights (a matrix or a table): "
                "reshape the float weight before quantizing it"]
    want = _out_axis(g.consumers[node.output[0]][0][0], len(shape))
    axis = _attr(node, "axis", 1) % max(len(shape), 1)
    scale = list(g.consts[_input(node, 1)].dims) if _input(node, 1) in g.consts else None
    problems = []
    if scale is not None and (len(scale) != 1 or axis != want or scale[0] != shape[want]):
        problems.append(f"{where} {shape} has a scale of shape {scale} on axis {axis}; quantize weights "
                        f"per output channel: a 1-D scale of {shape[want]} values with axis={want}")
    values = _values(g, weight)
    if values is not None and values.size and int(values.min()) < INT8_WEIGHT_MIN:
        problems.append(f"{where} holds {int(values.min())}; TensorRT's INT8 weights are in [-127, 127]: "
                        "clamp to -127 when quantizing")
    return problems


def _int4_weight_problems(g: _Graph, node, weight: str) -> list[str]:
    """[sch] [onnx] INT4 needs opset 21+ and per-block 2-D scales, blocks of 64 or 128."""
    where, shape = f"DequantizeLinear {_name(node)}: INT4 weight {weight}", list(g.consts[weight].dims)
    if g.opset < 21:
        return [f"{where} needs opset 21+ (INT4, blocked DequantizeLinear); the graph is opset "
                f"{g.opset}: export at opset 21"]
    block, axis = _attr(node, "block_size", 0), _attr(node, "axis", 1) % max(len(shape), 1)
    scale = list(g.consts[_input(node, 1)].dims) if _input(node, 1) in g.consts else None
    if scale is None:
        return []
    if len(scale) != 2 or len(shape) != 2 or block not in INT4_BLOCKS:
        return [f"{where} has a scale of shape {scale} and block_size {block}; TensorRT's INT4 needs "
                "per-block scales: a 2-D scale with block_size 64 or 128"]
    want = [math.ceil(d / block) if i == axis else d for i, d in enumerate(shape)]
    if scale != want:
        return [f"{where} {shape} in blocks of {block} along axis {axis} needs a scale of shape "
                f"{want}, not {scale}: recompute the scales"]
    return []


def _dequantize_problems(g: _Graph, node) -> list[str]:
    problems = _scale_problems(g, node)
    x = node.input[0]
    if x not in g.consts:  # an activation's DQ (after its Q)
        return problems
    kind = g.consts[x].data_type
    users = _users_problems(g, node, x, kind in INT4_TYPES)
    if users:  # the layout rules below assume a MatMul/Gemm/Gather user
        return problems + users
    if kind == TensorProto.INT8:
        problems += _int8_weight_problems(g, node, x)
    elif kind in INT4_TYPES:
        problems += _int4_weight_problems(g, node, x)
    return problems


def _quantized_input_problems(g: _Graph, node) -> list[str]:
    """[ops] [eq] other ops take INT8/INT4 only where TensorRT's matrix says so (Gather: never)."""
    supported = g.supported.get(node.op_type, set())
    for i, name in enumerate(node.input):
        kind = g.types.get(name)
        if kind not in ("INT8", "INT4") or kind in supported:
            continue
        if node.op_type == "Gather" and i == 0:
            return [f"Gather {_name(node)} reads {kind} table {name}; TensorRT's Gather takes no "
                    f"{kind}: dequantize the table first, DequantizeLinear({name}, per-column scale, "
                    "axis=1) -> Gather"]
        return [f"{node.op_type} {_name(node)} reads {kind} tensor {name}; TensorRT takes quantized "
                f"tensors only through DequantizeLinear: insert one before {node.op_type}"]
    return []


def placement_problems(onnx_model, opset: int, types: dict, supported: dict,
                       base_dir: str | None = None) -> list[str]:
    """Problems with the graph's Q/DQ placement that would stop (or silently de-quantize) a
    TensorRT build, one line each naming the node and the fix; empty for a graph without Q/DQ
    or quantized tensors. opset, types (tensor -> TensorRT type name) and supported (op -> types)
    come from trt_ops; base_dir: where the graph's external data lives (values checked too)."""
    g = _index(onnx_model, opset, types, supported, base_dir)
    problems: list[str] = []
    for node in onnx_model.graph.node:
        if node.op_type == "QuantizeLinear":
            problems += _quantize_problems(g, node)
        elif node.op_type == "DequantizeLinear":
            problems += _dequantize_problems(g, node)
        else:
            problems += _quantized_input_problems(g, node)
    return problems
