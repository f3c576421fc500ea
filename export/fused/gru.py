"""Fused GRU step: one Gemm and one Sigmoid for all gates of a layer.

Gate pre-activations come out of one (B, 4H) Gemm as [x_rz + h_rz + b, x_n + b_in, h_n + b_hn]:
the r/z input and hidden parts are summed by the matmul itself, while n keeps its two halves
apart (n = tanh(x_n + r * h_n)).
- the embedding is folded into layer 0's input matmul: a (256, 4H) gate table, gathered and fed
  to Gemm as its C input, so layer 0 costs Gather + Gemm
- deeper layers run one Concat([x, h]) @ W_cat Gemm
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...models import ByteLM
from .common import Frozen, FusedLM


class GRULayer(Frozen):
    """One layer's gate weights, pre-transposed (in, out), as [rz | x_n | h_n] columns."""

    def __init__(self, model: ByteLM, i: int, dtype: torch.dtype):
        super().__init__(dtype)
        H = self.H = model.config.d_hidden
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(i)
        wx = torch.cat([w_ih.t(), torch.zeros(w_ih.shape[1], H)], 1)  # (In, 4H)
        wh = torch.cat([w_hh.t()[:, :2 * H], torch.zeros(H, H), w_hh.t()[:, 2 * H:]], 1)  # (H, 4H)
        b = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])  # (4H,)
        self.first = i == 0
        if self.first:  # x is the byte: the embedding folded into the gate table
            self.keep_table(table=model.embed.weight @ wx + b)  # (256, 4H)
            self.keep_mm(w_h=wh)  # (H, 4H)
        else:  # x is the h of the layer below
            self.keep_mm(w_cat=torch.cat([wx, wh], 0))  # (H + H, 4H)
            self.keep(b=b)  # (4H,)

    def gates(self, x, h):
        if self.first:
            return self.mm("w_h", h, self.lookup("table", x))  # Gather + Gemm: (B, 4H)
        return self.mm("w_cat", torch.cat([x, h], dim=-1), self.b)  # Concat + Gemm: (B, 4H)

    def step(self, x, h):
        s_rz, xn, hn = self.gates(x, h).split([2 * self.H, self.H, self.H], dim=-1)
        r, z = torch.sigmoid(s_rz).split([self.H] * 2, dim=-1)  # (B, H) each
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n)


class FusedGRU(FusedLM):
    def __init__(self, model: ByteLM, dtype: torch.dtype):
        super().__init__(dtype)
        self.layers = nn.ModuleList(GRULayer(model, i, dtype) for i in range(model.config.n_layers))
        self.keep_mm(w_head=model.head.weight.t())  # (H, 256)
        self.keep(b_head=model.head.bias)  # (256,)

    def core(self, byte_ids, state):
        x, new = byte_ids, []
        for i, layer in enumerate(self.layers):
            x = layer.step(x, state[i])  # this layer's h, (B, H)
            new.append(x)
        return x, new

    def logits(self, h):
        return self.to_f(self.mm("w_head", h, self.b_head))  # (B, 256)


FUSED = FusedGRU
