"""Fused minGRU step: one Gemm for the gate and both candidate forms, no Where.

g(x) = x + 0.5 for x >= 0, sigmoid(x) below, is computed as max(x + 0.5, sigmoid(x)): exact,
since the branches cross at 0 (x + 0.5 >= sigmoid(x) for x >= 0, and below it for x < 0).
The in_proj is widened to [k, cand, cand + 0.5] so the + 0.5 costs no node.
"""

from __future__ import annotations

import torch

from .common import FusedResidual, ResidualLayer, _Softplus, chunk_scan


class MinGRULayer(ResidualLayer):
    def __init__(self, block, cfg, eps: float, dtype: torch.dtype):
        super().__init__(block, eps, dtype)
        self.dh = cfg.d_hidden
        w, b = block.in_proj.weight.t(), block.in_proj.bias  # (D, 2Dh), (2Dh,)
        self.keep_mm(w_in=torch.cat([w, w[:, self.dh:]], 1))  # (D, 3Dh): [k, cand, cand + 0.5]
        self.keep(b_in=torch.cat([b, b[self.dh:] + 0.5]))  # (3Dh,)
        self.keep_mm(w_out=block.out_proj.weight.t())  # (Dh, D)

    def step(self, x, h):
        """x (B, D) float32 residual stream, h (B, Dh) -> x, h."""
        k, cand, cand5 = self.mm("w_in", self.norm(x, self.nw), self.b_in).split([self.dh] * 3, dim=-1)
        gc = torch.maximum(cand5, torch.sigmoid(cand))  # g(cand), (B, Dh)
        h = h + torch.sigmoid(k) * (gc - h)  # == (1 - z) * h + z * g(cand)
        x = x + self.to_f(self.mm("w_out", h))
        return self.mlp(x), h

    def seq(self, x, h):
        """x (B, C, D) float32, h (B, Dh) -> x (B, C, D), h after the chunk."""
        k, cand, cand5 = self.mm("w_in", self.norm(x, self.nw), self.b_in).split([self.dh] * 3, dim=-1)
        gc = torch.maximum(cand5, torch.sigmoid(cand))  # (B, C, Dh)
        z = torch.sigmoid(k)
        log_a = -_Softplus.apply(k) if self.SCAN_BLOCK > 1 else None  # log(1 - z), without underflow
        hs, h = chunk_scan(1.0 - z, z * gc, h, self.SCAN_BLOCK, log_a)  # (B, C, Dh)
        x = x + self.to_f(self.mm("w_out", hs))
        return self.mlp(x), h


class FusedMinGRU(FusedResidual):
    PREFILL_CHUNK = 64  # measured (see FusedLM.PREFILL_CHUNK)
    NATIVE_PREFILL = "graph"  # measured (see FusedLM.NATIVE_PREFILL)
    Layer = MinGRULayer


FUSED = FusedMinGRU
