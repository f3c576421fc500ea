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
from .common import GELU_K1, FusedResidual, ResidualLayer, causal_conv_chunk, chunk_scan, gelu_scaled


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

    def coefficients(self, u):
        """u (..., Dr) -> log a, the input term b of h = a * h + b."""
        r, ig = torch.sigmoid(self.mm("w_g", u, self.b_g)).split([self.dr] * 2, dim=-1)
        log_a = r * self.k_a
        a = torch.exp(log_a)
        return log_a, a, torch.sqrt((1.0 - a * a).clamp_min(1e-12)) * (ig * u)

    def rglru(self, u, h):
        """u, h (B, Dr) -> the new h."""
        _, a, b = self.coefficients(u)
        return a * h + b

    def step(self, x, conv, h):
        """x (B, D) float32 residual stream, conv (B, K-1, Dr), h (B, Dr) -> x, conv, h."""
        gate, u = self.mm("w_in", self.norm(x, self.nw)).split([self.dr] * 2, dim=-1)  # (B, Dr) each
        u, conv = causal_conv_step(u, conv, self.conv_w, self.conv_b)
        h = self.rglru(u, h)
        x = x + self.to_f(self.mm("w_out", h * gelu_scaled(gate)))
        return self.mlp(x), conv, h

    def seq(self, x, conv, h):
        """x (B, C, D) float32 -> x (B, C, D), conv and h after the chunk."""
        gate, u = self.mm("w_in", self.norm(x, self.nw)).split([self.dr] * 2, dim=-1)  # (B, C, Dr) each
        u, conv = causal_conv_chunk(u, conv, self.conv_w, self.conv_b)
        log_a, a, b = self.coefficients(u)
        hs, h = chunk_scan(a, b, h, self.SCAN_BLOCK, log_a)  # (B, C, Dr)
        x = x + self.to_f(self.mm("w_out", hs * gelu_scaled(gate)))
        return self.mlp(x), conv, h


class FusedRGLRU(FusedResidual):
    PREFILL_CHUNK = 64  # measured (see FusedLM.PREFILL_CHUNK)
    NATIVE_PREFILL = "graph"  # measured (see FusedLM.NATIVE_PREFILL)
    Layer = RGLRULayer


FUSED = FusedRGLRU
