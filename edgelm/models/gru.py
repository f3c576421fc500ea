"""Multi-layer GRU byte model (char-RNN with GRU cells).

    bytes -> Embedding(256, E) -> GRU x n_layers (hidden H) -> Linear(H, 256)

Training uses torch's fused nn.GRU; `step` spells the cell out with MatMul and elementwise ops
on the same parameters. Gate order follows torch: reset, update, new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .common import VOCAB, ByteLM, State


@dataclass
class GRUConfig:
    d_embed: int = 64
    d_hidden: int = 256
    n_layers: int = 1


class GRULM(ByteLM):
    arch = "gru"
    Config = GRUConfig
    PRESETS = {
        "tiny": dict(d_embed=32, d_hidden=160, n_layers=2),  # ~0.33M
        "small": dict(d_embed=128, d_hidden=576, n_layers=2),  # ~3.6M
    }

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.embed = nn.Embedding(VOCAB, config.d_embed)
        self.rnn = nn.GRU(config.d_embed, config.d_hidden, config.n_layers, batch_first=True)
        self.head = nn.Linear(config.d_hidden, VOCAB)

    def state_spec(self):
        return [(f"{i}.h", (self.config.d_hidden,)) for i in range(self.config.n_layers)]

    def layer_weights(self, i: int):
        rnn = self.rnn
        return (getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
                getattr(rnn, f"bias_ih_l{i}"), getattr(rnn, f"bias_hh_l{i}"))

    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(byte_ids)  # (B, E)
        new_state = []
        for i in range(self.config.n_layers):
            h = state[i]  # (B, H)
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(i)
            xr, xz, xn = (x @ w_ih.t() + b_ih).chunk(3, dim=-1)  # (B, H) each
            hr, hz, hn = (h @ w_hh.t() + b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = n + z * (h - n)  # == (1 - z) * n + z * h
            new_state.append(h)
            x = h
        return self.head(x), tuple(new_state)  # (B, 256)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        h0 = torch.stack(state).contiguous()  # (L, B, H)
        out, hn = self.rnn(self.embed(x), h0)  # (B, T, H)
        return self.head(out), tuple(hn[i] for i in range(self.config.n_layers))
