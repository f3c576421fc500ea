"""Fused RG-LRU (Hawk) step.

- log a = -c * softplus(-Lambda) * r: the factor k_a = -c * softplus(-Lambda) is precomputed
- the gate branch's gelu is gelu_scaled: k1 folded into in_proj's gate columns, 1/k1 into
  out_proj
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.common import causal_conv_step
from ...models.rglru import C_SCALE
from .common import GELU_K1, FusedResidual, ResidualLayer, gelu_scaled


class RGLRULayer(ResidualLayer):
    def __init__(self, block, cfg, eps: float, dtype: torch.dtype):
        super().__init__(block, eps, dtype)
        self.dr = cfg.d_rnn
        w = block.in_proj.weight.t().clone()  # (D, 2Dr): [gate, u]
        w[:, :w.shape[1] // 2] *= GELU_K1
        self.keep_mm(w_in=w)
        self.keep(conv_w=block.conv_weight)  # (Dr, K)
        self.keep(conv_b=block.conv_bias)  # (Dr,)
        self.keep_mm(w_g=block.gates.weight.t())  # (Dr, 2Dr): [r, i]
        self.keep(b_g=block.gates.bias)  # (2Dr,)
        self.keep(k_a=-C_SCALE * F.softplus(-block.a_param))  # (Dr,): log a = k_a * r
        self.keep_mm(w_out=block.out_proj.weight.t() / GELU_K1)  # (Dr, D)

    def rglru(self, u, h):
        """u, h (B, Dr) -> the new h."""
        r, ig = torch.sigmoid(self.mm("w_g", u, self.b_g)).split([self.dr] * 2, dim=-1)
        a = torch.exp(r * self.k_a)  # (B, Dr)
        mult = torch.sqrt((1.0 - a * a).clamp_min(1e-12))
        return a * h + mult * (ig * u)

    def step(self, x, conv, h):
        """x (B, D) float32 residual stream, conv (B, Dr, K-1), h (B, Dr) -> x, conv, h."""
        gate, u = self.mm("w_in", self.norm(x, self.nw)).split([self.dr] * 2, dim=-1)  # (B, Dr) each
        u, conv = causal_conv_step(u, conv, self.conv_w, self.conv_b)
        h = self.rglru(u, h)
        x = x + self.to_f(self.mm("w_out", h * gelu_scaled(gate)))
        return self.mlp(x), conv, h


class FusedRGLRU(FusedResidual):
    Layer = RGLRULayer


FUSED = FusedRGLRU
