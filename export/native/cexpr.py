"""The C text of the emitted code's pieces: elementwise ops as expression templates (and which of
them the plan may fuse), a tensor as a pointer over a shape (View), its strides when contiguous
or broadcast to another shape, ONNX attributes and float literals. Nothing here reads a plan's
buffers, so the plan and the emitters both build on it."""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy / onnx: on Python 3.8 one line says what to do

from dataclasses import dataclass

import numpy as np
from onnx import helper

from ...errors import EdgelmError


UNARY = {"Sigmoid": "el_sigmoid({0})", "Tanh": "el_tanh({0})", "Exp": "el_exp({0})", "Log": "el_log({0})",
         "Sqrt": "sqrtf({0})", "Relu": "({0} > 0.0f ? {0} : 0.0f)", "Abs": "fabsf({0})", "Neg": "(-{0})",
         "Reciprocal": "(1.0f / {0})", "Softplus": "({0} > 0.0f ? {0} : 0.0f) + log1pf(el_exp(-fabsf({0})))"}
BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}",
          "Max": "({0} > {1} ? {0} : {1})", "Min": "({0} < {1} ? {0} : {1})"}


def fusable(plan, node) -> bool:
    """An elementwise float op that plan._fuse_elementwise may put in one loop with others
    (plan: a plan.Plan; this module imports nothing of it)."""
    t = plan.tensors
    if node.op_type not in UNARY and node.op_type not in BINARY and node.op_type != "Pow":
        return False
    return len(node.output) == 1 and all(t[x].dtype == "float32" for x in [*data_inputs(node), node.output[0]])


def data_inputs(node) -> list[str]:
    """A fusable node's operands (Pow's exponent is a constant read at generation time)."""
    return list(node.input[:1] if node.op_type == "Pow" else node.input)


@dataclass
class View:
    """An operand of a loop: a C pointer expression over a shape (dim 0 x batch when batched)."""

    ptr: str
    shape: tuple[int, ...]
    batched: bool = False
    ctype: str = "float"


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fmt_float(v: float) -> str:
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{float(np.float32(v))!r}f"


def split_at(t, axis: int) -> tuple[str, int]:
    """A plan.Tensor as rows around `axis`: (the C count of rows before it, elements after it)."""
    outer = int(np.prod(t.shape[:axis], dtype=np.int64))
    return (f"(B * {outer})" if t.batched else str(outer)), int(np.prod(t.shape[axis + 1:], dtype=np.int64))


def out_name(k: int) -> str:
    return "o" if k == 0 else f"o{k}"


def contiguous(shape) -> list[int]:
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return st[::-1]


def broadcast(v: View, out: View) -> list[int]:
    """v's stride along each of out's axes (numpy broadcasting: right-aligned, size 1 -> 0)."""
    r, rv = len(out.shape), len(v.shape)
    st = contiguous(v.shape)
    strides = []
    for a in range(r):
        b = a - (r - rv)
        if b < 0:
            strides.append(0)
            continue
        vb, ob = (v.batched and b == 0), (out.batched and a == 0)
        if v.shape[b] == 1 and not vb and (ob or out.shape[a] != 1):
            strides.append(0)
        elif vb == ob and v.shape[b] == out.shape[a]:
            strides.append(st[b])
        else:
            raise EdgelmError(f"the native C target cannot broadcast {v.shape} to {out.shape}")
    return strides
