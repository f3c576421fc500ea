"""Hawk byte model: Griffin's recurrent block with the RG-LRU (De et al., 2024).

Each layer is a temporal-mixing block and a gated MLP, both residual:
    gate, u = split(in_proj(RMSNorm(x)))          gate branch: gelu(gate)
    u       = causal depthwise conv(u)            width 4, conv state: the last 3 inputs
    r, i    = sigmoid(gates(u))                   recurrence and input gates
    log a   = -c * softplus(-Lambda) * r          a = sigmoid(Lambda) ** (c * r), c = 8
    h       = a * h + sqrt(1 - a^2) * (i * u)     the RG-LRU; a diagonal linear recurrence
    x       = x + out_proj(h * gelu(gate))
Training runs the RG-LRU as a chunked parallel scan. (Griffin's gate weights are
block-diagonal; here they are dense, which at these widths costs little.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import (VOCAB, ByteLM, GatedMLP, RMSNorm, State, causal_conv_seq,
                     causal_conv_step, linear_scan)

C_SCALE = 8.0  # Griffin's fixed constant c


@dataclass
class RGLRUConfig:
    d_model: int = 128
    d_rnn: int = 192
    n_layers: int = 2
    d_conv: int = 4
    mlp_mult: int = 2


class RGLRUBlock(nn.Module):
    def __init__(self, cfg: RGLRUConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model)
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_rnn, bias=False)  # -> gate branch, u
        self.conv_weight = nn.Parameter(torch.randn(cfg.d_rnn, cfg.d_conv) / math.sqrt(cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(cfg.d_rnn))
        self.gates = nn.Linear(cfg.d_rnn, 2 * cfg.d_rnn)  # -> recurrence gate r, input gate i
        # a = sigmoid(Lambda) ** c starts uniform in [0.9, 0.999], as in Griffin
        a0 = torch.empty(cfg.d_rnn).uniform_(0.9, 0.999)
        self.a_param = nn.Parameter(torch.logit(a0 ** (1.0 / C_SCALE)))
        self.out_proj = nn.Linear(cfg.d_rnn, cfg.d_model, bias=False)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_mult * cfg.d_model)

    def coefficients(self, u: torch.Tensor):
        """log a and the gated, normalised input b for h = a * h + b. u: (..., Dr)."""
        r, i = torch.sigmoid(self.gates(u)).chunk(2, dim=-1)
        log_a = -C_SCALE * F.softplus(-self.a_param) * r
        mult = torch.sqrt((1.0 - torch.exp(2.0 * log_a)).clamp_min(1e-12))
        return log_a, mult * (i * u)

    def step(self, x, conv_state, h):
        gate, u = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, Dr) each
        u, conv_state = causal_conv_step(u, conv_state, self.conv_weight, self.conv_bias)
        log_a, b = self.coefficients(u)
        h = torch.exp(log_a) * h + b  # (B, Dr)
        x = x + self.out_proj(h * F.gelu(gate, approximate="tanh"))
        return x + self.mlp(self.mlp_norm(x)), conv_state, h

    def forward(self, x, conv_state, h0):
        gate, u = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, T, Dr) each
        u, conv_state = causal_conv_seq(u, conv_state, self.conv_weight, self.conv_bias)
        log_a, b = self.coefficients(u)
        h = linear_scan(log_a, b, h0)  # (B, T, Dr)
        x = x + self.out_proj(h * F.gelu(gate, approximate="tanh"))
        return x + self.mlp(self.mlp_norm(x)), conv_state, h[:, -1]


class RGLRULM(ByteLM):
    arch = "rglru"
    Config = RGLRUConfig
    PRESETS = {
        "tiny": dict(d_model=96, d_rnn=128, n_layers=2, mlp_mult=2),  # ~0.30M
        "small": dict(d_model=256, d_rnn=384, n_layers=4, mlp_mult=2),  # ~3.9M
    }

    def __init__(self, config: RGLRUConfig):
        super().__init__(config)
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.blocks = nn.ModuleList(RGLRUBlock(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)

    def state_spec(self):
        c = self.config
        spec = []
        for i in range(c.n_layers):
            spec += [(f"{i}.conv", (c.d_conv - 1, c.d_rnn)), (f"{i}.h", (c.d_rnn,))]
        return spec

    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(byte_ids)  # (B, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, conv, h = block.step(x, state[2 * i], state[2 * i + 1])
            new_state += [conv, h]
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, 256)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        x = self.embed(x)  # (B, T, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, conv, h = block(x, state[2 * i], state[2 * i + 1])
            new_state += [conv, h]
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, T, 256)
