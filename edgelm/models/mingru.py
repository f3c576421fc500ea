"""minGRU byte model, from "Were RNNs All We Needed?" (Feng et al., 2024).

The gates depend only on the input, never on h, so the recurrence
    h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t),   z_t = sigmoid(k_t)
is a diagonal linear recurrence: training runs it as a parallel (chunked) scan, inference as
a two-op update. g keeps candidates positive as in the paper's log-space form.

    bytes -> Embedding(256, D) -> [x + minGRU(norm(x)); x + MLP(norm(x))] x n_layers
          -> RMSNorm -> Linear(D, 256)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import VOCAB, ByteLM, GatedMLP, RMSNorm, State, linear_scan


@dataclass
class MinGRUConfig:
    d_model: int = 128
    d_hidden: int = 256  # width of the recurrent state
    n_layers: int = 2
    mlp_mult: int = 2


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive candidate activation: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRUBlock(nn.Module):
    def __init__(self, cfg: MinGRUConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model)
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_hidden)  # -> gate k, candidate h~
        self.out_proj = nn.Linear(cfg.d_hidden, cfg.d_model, bias=False)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_mult * cfg.d_model)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, cand = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, Dh) each
        z = torch.sigmoid(k)
        h = h + z * (g(cand) - h)  # == (1 - z) * h + z * g(cand)
        x = x + self.out_proj(h)
        return x + self.mlp(self.mlp_norm(x)), h

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, cand = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, T, Dh) each
        log_a = -F.softplus(k)  # log(1 - z)
        b = torch.sigmoid(k) * g(cand)  # z * g(h~)
        h = linear_scan(log_a, b, h0)  # (B, T, Dh)
        x = x + self.out_proj(h)
        return x + self.mlp(self.mlp_norm(x)), h[:, -1]


class MinGRULM(ByteLM):
    arch = "mingru"
    Config = MinGRUConfig
    PRESETS = {
        "tiny": dict(d_model=96, d_hidden=192, n_layers=2, mlp_mult=2),  # ~0.29M
        "small": dict(d_model=256, d_hidden=512, n_layers=6, mlp_mult=2),  # ~3.6M
    }

    def __init__(self, config: MinGRUConfig):
        super().__init__(config)
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.blocks = nn.ModuleList(MinGRUBlock(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)

    def state_spec(self):
        return [(f"{i}.h", (self.config.d_hidden,)) for i in range(self.config.n_layers)]

    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(byte_ids)  # (B, D)
        new_state = []
        for block, h in zip(self.blocks, state):
            x, h = block.step(x, h)
            new_state.append(h)
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, 256)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        x = self.embed(x)  # (B, T, D)
        new_state = []
        for block, h in zip(self.blocks, state):
            x, h = block(x, h)
            new_state.append(h)
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, T, 256)
