"""Fused LSTM step: one Gemm and one Sigmoid for all gates of a layer.

- the embedding is folded into layer 0's input matmul: a (256, 4H) gate table, gathered and fed
  to Gemm as its C input, so layer 0 costs Gather + Gemm
- deeper layers run one Concat([x, h]) @ W_cat Gemm
- gates are reordered to [i, f, o | g] so one Sigmoid covers three gates
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...models import ByteLM
from .common import Frozen, FusedLM


class LSTMLayer(Frozen):
    """One layer's gate weights, pre-transposed (in, out), columns reordered to [i, f, o | g]."""

    def __init__(self, model: ByteLM, i: int, dtype: torch.dtype):
        super().__init__(dtype)
        H = self.H = model.config.d_hidden
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        w_ih, w_hh, b = model.layer_weights(i)
        self.first = i == 0
        if self.first:  # x is the byte: the embedding folded into the gate table
            self.keep_table(table=(model.embed.weight @ w_ih.t() + b)[:, order])  # (256, 4H)
            self.keep_mm(w_h=w_hh.t()[:, order])  # (H, 4H)
        else:  # x is the h of the layer below
            self.keep_mm(w_cat=torch.cat([w_ih, w_hh], 1).t()[:, order])  # (H + H, 4H)
            self.keep(b=b[order])  # (4H,)

    def gates(self, x, h):
        if self.first:
            return self.mm("w_h", h, self.lookup("table", x))  # Gather + Gemm: (B, 4H)
        return self.mm("w_cat", torch.cat([x, h], dim=-1), self.b)  # Concat + Gemm: (B, 4H)

    def step(self, x, h, c):
        s, g = self.gates(x, h).split([3 * self.H, self.H], dim=-1)  # (B, 3H), (B, H)
        i, f, o = torch.sigmoid(s).split([self.H] * 3, dim=-1)  # (B, H) each
        c = f * c + i * torch.tanh(g)
        return o * torch.tanh(c), c


class FusedLSTM(FusedLM):
    def __init__(self, model: ByteLM, dtype: torch.dtype):
        super().__init__(dtype)
        self.layers = nn.ModuleList(LSTMLayer(model, i, dtype) for i in range(model.config.n_layers))
        self.keep_mm(w_head=model.head.weight.t())  # (H, 256)
        self.keep(b_head=model.head.bias)  # (256,)

    def core(self, byte_ids, state):
        x, new = byte_ids, []
        for i, layer in enumerate(self.layers):
            x, c = layer.step(x, state[2 * i], state[2 * i + 1])  # x: this layer's h, (B, H)
            new += [x, c]
        return x, new

    def logits(self, h):
        return self.to_f(self.mm("w_head", h, self.b_head))  # (B, 256)


FUSED = FusedLSTM
