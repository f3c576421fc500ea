"""Fake quantization in torch that exports as ONNX Q/DQ: one op set for eval and for the graph.

Each function computes in torch exactly what its ONNX nodes compute, so a quantized fused form
evaluated in PyTorch (`edgelm eval` on a quantized checkpoint) and the same form exported
(`edgelm export`) agree up to float summation order:

    act_qdq(x, s)              QuantizeLinear(x, s, 0:int8) -> DequantizeLinear      per tensor
    dequant(q, s)              DequantizeLinear(q:int8, s (out,), axis=1)            weights (in, out)
    dequant_blocked(q, s, G)   DequantizeLinear(q:int4, s (in/G, out), axis=0,       int4 weights
                               block_size=G)  (opset 21; emitted as edgelm.DequantizeBlocked and
                               rewritten by graph_passes.lower_blocked_dq)
Rounding is half-to-even and saturating, as ONNX QuantizeLinear specifies; zero points are 0
(symmetric), which is what TensorRT requires.
"""

from __future__ import annotations

import math

import torch

INT8_MAX = 127  # weights in [-127, 127] (TensorRT), activations in [-128, 127]
INT4_MIN, INT4_MAX = -8, 7
BLOCKED_OP = "DequantizeBlocked"  # placeholder op in the `edgelm` domain, lowered after export


class _ActQDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        return torch.clamp(torch.round(x / scale), -128, 127) * scale

    @staticmethod
    def symbolic(g, x, scale: float):
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class _Dequant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, scale):
        return q.to(scale.dtype) * scale  # (in, out) * (out,)

    @staticmethod
    def symbolic(g, q, scale):
        return g.op("DequantizeLinear", q, scale, axis_i=1)


class _DequantBlocked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, scale, block: int):
        rows = scale.repeat_interleave(block, dim=0)[:q.shape[0]]  # (in, out)
        return q.to(scale.dtype) * rows

    @staticmethod
    def symbolic(g, q, scale, block: int):
        out = g.op(f"edgelm::{BLOCKED_OP}", q, scale, block_size_i=block)
        out.setType(q.type().with_dtype(torch.float32))  # (in, out) float32, as DequantizeLinear's
        return out


def act_qdq(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ActQDQ.apply(x, float(scale))


def dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _Dequant.apply(q, scale)


def dequant_blocked(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    return _DequantBlocked.apply(q, scale, int(block))


# -- the quantizers: each returns what it stores and the error it causes ------------------------
def rel_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat|| / ||w|| (Frobenius)."""
    return float((w - w_hat).norm() / w.norm().clamp_min(1e-30))


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """w (in, out) -> int8 q (in, out), scale (out,) = max|w[:, o]| / 127, relative error."""
    scale = (w.abs().amax(0) / INT8_MAX).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale), -INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scale.float(), rel_error(w, q * scale)


def int4_groups_rtn(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """w (in, out) -> int4 values in int8 (in, out), scale (ceil(in/G), out), relative error."""
    n_in = w.shape[0]
    pad = -n_in % group
    wp = torch.cat([w, w.new_zeros(pad, w.shape[1])]).reshape(-1, group, w.shape[1])  # (in/G, G, out)
    scale = (wp.abs().amax(1) / INT4_MAX).clamp_min(1e-12)  # (in/G, out)
    q = torch.clamp(torch.round(wp / scale[:, None]), INT4_MIN, INT4_MAX).reshape(-1, w.shape[1])[:n_in]
    w_hat = q * scale.repeat_interleave(group, 0)[:n_in]
    return q.to(torch.int8), scale.float(), rel_error(w, w_hat)


def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix of order n (a power of two): H @ H.T = I, H = H.T."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).float()


def rotation_block(n: int, cap: int = 64) -> int:
    """The largest power of two <= cap dividing n: the block of the block-diagonal rotation."""
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b
