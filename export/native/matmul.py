"""The matmul emitters of the native C target (a part of ops.Emitter): MatMul / Gemm on a stored
weight call kernels.h's el_mm_f32 / el_mm_w8 / el_mm_a8w8 (a fused DequantizeLinear reads the
int8 weight itself), skipping a weight's all-zero column blocks; batched MatMul loops el_mm_f32."""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy: on Python 3.8 one line says what to do

import numpy as np

from ...errors import EdgelmError
from .cexpr import attr, fmt_float


class MatMulOps:
    """Mixed into ops.Emitter, which supplies t, ptr, value and count."""

    def op_Gemm(self, node):
        if attr(node, "transA", 0) or attr(node, "transB", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            raise EdgelmError("the native C target runs Gemm without transposes or scaling only")
        return self.op_MatMul(node)

    def op_MatMul(self, node):
        fused = self.plan.fused.get(node.output[0], {})
        x, o = self.t(node.input[0]), self.t(node.output[0])
        w = self.t(fused["w"].input[0]) if "w" in fused else self.t(node.input[1])
        if w.batched or w.home not in ("weight", "const") or len(w.shape) != 2:
            return self._batched_matmul(node)
        k, n = w.shape
        rows = f"(B * {x.numel // k})" if x.batched else str(x.numel // k)
        bias, c_rows = None, 0
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = self.t(node.input[2])
            bias, c_rows = self.ptr(c.name), int(c.batched or (len(c.shape) == 2 and c.shape[0] > 1))
        if "w" not in fused:
            kernel, xp, scale, xs = "el_mm_f32", self.ptr(x.name), None, "0.0f"
        else:
            ws = self.t(fused["w"].input[1])
            scale = (self.ptr(ws.name), ws.numel)
            kernel, xp, xs = "el_mm_w8", self.ptr(x.name), "0.0f"
            if "x" in fused:
                dq = fused["x"]
                kernel, xp = "el_mm_a8w8", self.ptr(dq.input[0])
                xs = fmt_float(float(self.value(dq.input[1]).reshape(-1)[0]))
        calls = []
        for n0, n1, k0, k1 in nonzero_blocks(w.value):
            ws_arg = "NULL, 0" if scale is None else (f"{scale[0]} + {n0}, {n1 - n0}" if scale[1] > 1 else f"{scale[0]}, 1")
            c_arg = "NULL" if bias is None else f"{bias} + {n0}"
            if k1 == k0:  # an all-zero column block: only the bias
                calls.append(self._fill(o.name, rows, n, n0, n1, c_arg, c_rows))
                continue
            calls.append(f"{kernel}({self.ptr(o.name)} + {n0}, {n}, {xp} + {k0}, {k}, {self.ptr(w.name)} + {k0 * n + n0}, "
                         f"{n}, {ws_arg}, {xs}, {c_arg}, {c_rows}, {rows}, {k1 - k0}, {n1 - n0});")
        return "\n".join(calls)

    def _fill(self, out: str, rows: str, n: int, n0: int, n1: int, c_arg: str, c_rows: int) -> str:
        value = "0.0f" if c_arg == "NULL" else (f"({c_arg})[r * {n} + j]" if c_rows else f"({c_arg})[j]")
        return (f"for (size_t r = 0; r < (size_t){rows}; r++) for (int j = 0; j < {n1 - n0}; j++) "
                f"{self.ptr(out)}[r * {n} + {n0} + j] = {value};")

    def _batched_matmul(self, node) -> str:
        """(..., M, K) @ (..., K, N), the same leading dims on both sides (Mamba's <h, C>)."""
        a, b, o = (self.t(x) for x in (node.input[0], node.input[1], node.output[0]))
        (m, k), n = a.shape[-2:], b.shape[-1]
        lead_a, lead_b = a.numel // (m * k), b.numel // (k * n)
        if len(a.shape) < 3 or lead_a != lead_b or a.batched != b.batched or a.dtype != "float32":
            raise EdgelmError("the native C target runs batched MatMul on matching float leading dims only")
        lead = f"(B * {lead_a})" if a.batched else str(lead_a)
        return (f"for (size_t l = 0; l < (size_t){lead}; l++) el_mm_f32({self.ptr(o.name)} + l * {m * n}, {n}, "
                f"{self.ptr(a.name)} + l * {m * k}, {k}, {self.ptr(b.name)} + l * {k * n}, {n}, NULL, 0, 0.0f, NULL, 0, "
                f"{m}, {k}, {n});")


MAX_BLOCKS = 8  # more column blocks than this: the weight is not block-structured, run it whole
MIN_SAVING = 0.1  # skip zeros only where that saves at least this share of the products


def nonzero_blocks(w: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(n0, n1, k0, k1): column ranges of a stored (K, N) weight and the rows holding their
    nonzeros. GRU's fused gates carry all-zero (H, H) blocks (one Gemm in ONNX instead of two);
    compiled C need not multiply them: gru-tiny's step does 25% fewer products."""
    k, n = w.shape
    whole = [(0, n, 0, k)]
    if not n or not k:
        return whole
    nz = w != 0
    any_col = nz.any(axis=0)
    first = np.where(any_col, nz.argmax(axis=0), 0)
    last = np.where(any_col, k - nz[::-1].argmax(axis=0), 0)
    blocks, start = [], 0
    for j in range(1, n + 1):
        if j == n or (first[j], last[j]) != (first[start], last[start]):
            blocks.append((start, j, int(first[start]), int(last[start])))
            start = j
    kept = sum((n1 - n0) * (k1 - k0) for n0, n1, k0, k1 in blocks)
    if len(blocks) > MAX_BLOCKS or kept > (1 - MIN_SAVING) * k * n:
        return whole
    return blocks
