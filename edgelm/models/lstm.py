"""Multi-layer LSTM byte model: the classic char-RNN (Karpathy 2015), on bytes.

    bytes -> Embedding(256, E) -> LSTM x n_layers (hidden H) -> Linear(H, 256)

Training uses torch's fused nn.LSTM. `step` spells out the cell with MatMul and elementwise
ops on the very same parameters, so it exports to a loop-free ONNX graph.
Gate order follows torch: input, forget, cell, output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .common import VOCAB, ByteLM, State


@dataclass
class LSTMConfig:
    d_embed: int = 64
    d_hidden: int = 256
    n_layers: int = 1


class LSTMLM(ByteLM):
    arch = "lstm"
    Config = LSTMConfig
    PRESETS = {
        "tiny": dict(d_embed=32, d_hidden=128, n_layers=2),  # ~0.29M
        "small": dict(d_embed=128, d_hidden=512, n_layers=2),  # ~3.8M
    }

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.embed = nn.Embedding(VOCAB, config.d_embed)
        self.rnn = nn.LSTM(config.d_embed, config.d_hidden, config.n_layers, batch_first=True)
        self.head = nn.Linear(config.d_hidden, VOCAB)

    def state_spec(self):
        spec = []
        for i in range(self.config.n_layers):
            spec += [(f"{i}.h", (self.config.d_hidden,)), (f"{i}.c", (self.config.d_hidden,))]
        return spec

    def layer_weights(self, i: int):
        rnn = self.rnn
        return (getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}"),
                getattr(rnn, f"bias_ih_l{i}") + getattr(rnn, f"bias_hh_l{i}"))

    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(byte_ids)  # (B, E)
        new_state = []
        for i in range(self.config.n_layers):
            h, c = state[2 * i], state[2 * i + 1]  # (B, H) each
            w_ih, w_hh, bias = self.layer_weights(i)
            gates = x @ w_ih.t() + h @ w_hh.t() + bias  # (B, 4H)
            gi, gf, gg, go = gates.chunk(4, dim=-1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            h = torch.sigmoid(go) * torch.tanh(c)
            new_state += [h, c]
            x = h
        return self.head(x), tuple(new_state)  # (B, 256)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        h0 = torch.stack(state[0::2])  # (L, B, H)
        c0 = torch.stack(state[1::2])  # (L, B, H)
        out, (hn, cn) = self.rnn(self.embed(x), (h0.contiguous(), c0.contiguous()))  # (B, T, H)
        new_state = []
        for i in range(self.config.n_layers):
            new_state += [hn[i], cn[i]]
        return self.head(out), tuple(new_state)
