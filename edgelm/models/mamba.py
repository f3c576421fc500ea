"""Mamba byte model (MambaByte: Wang et al., 2024; block from Gu & Dao, 2023).

Each residual block: x + out_proj(SSM(conv(x_in)) * silu(z)), with
    xz = in_proj(RMSNorm(x))                     x_in, z: (B, Di)
    u  = silu(causal depthwise conv(x_in))       conv state: the last d_conv-1 inputs
    dt, B, C = x_proj(u);  dt = softplus(dt_proj(dt))
    h  = exp(dt * A) * h + dt * B * u            A = -exp(A_log), h: (B, N, Di)
    y  = <h, C> + D * u
The state per layer is (conv (d_conv-1, Di), ssm (N, Di)): fixed, whatever the stream length.
The SSM state is stored (N, Di), Di innermost (mamba_ssm keeps (Di, N)): every broadcast of the
update then runs along the long Di axis, which ONNX Runtime does 3-5x faster than along N = 16
(measured, bench/results/bench.md).

The options past `dt_rank` exist for imported models (edgelm/importers/mamba_dirs.py maps
transformers' MambaConfig and mamba_ssm's config onto them); their defaults are edgelm's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import VOCAB, ByteLM, RMSNorm, State, causal_conv_seq, causal_conv_step


@dataclass
class MambaConfig:
    d_model: int = 128
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = ceil(d_model / 16)
    d_inner: int = 0  # 0 = expand * d_model (transformers: intermediate_size)
    conv_bias: bool = True  # bias on the depthwise conv (transformers: use_conv_bias)
    proj_bias: bool = False  # bias on in_proj and out_proj (transformers: use_bias)
    norm_eps: float = 1e-5  # every RMSNorm's epsilon (transformers: layer_norm_epsilon)

    def __post_init__(self):
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.d_inner == 0:
            self.d_inner = self.expand * self.d_model
        if min(self.d_model, self.n_layers, self.d_state, self.d_conv, self.dt_rank, self.d_inner) < 1:
            raise ValueError("every width must be positive")


class MambaBlock(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        di, n = cfg.d_inner, cfg.d_state
        self.cfg = cfg
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=cfg.proj_bias)
        self.conv_weight = nn.Parameter(torch.randn(di, cfg.d_conv) / math.sqrt(cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(di)) if cfg.conv_bias else None
        self.x_proj = nn.Linear(di, cfg.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(cfg.dt_rank, di)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=cfg.proj_bias)
        # dt starts log-uniform in [1e-3, 1e-1], as in the reference implementation
        dt = torch.exp(torch.rand(di) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def ssm_params(self, u: torch.Tensor):
        dt, b, c = self.x_proj(u).split([self.cfg.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), b, c  # (..., Di), (..., N), (..., N)

    def step(self, x, conv_state, ssm_state):
        xin, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, Di) each
        u, conv_state = causal_conv_step(xin, conv_state, self.conv_weight, self.conv_bias)
        u = F.silu(u)
        dt, b, c = self.ssm_params(u)
        A = -torch.exp(self.A_log).t()  # (N, Di)
        dA = torch.exp(dt.unsqueeze(1) * A)  # (B, N, Di)
        ssm_state = dA * ssm_state + (dt * u).unsqueeze(1) * b.unsqueeze(-1)
        y = (ssm_state * c.unsqueeze(-1)).sum(1) + self.D * u  # (B, Di)
        return x + self.out_proj(y * F.silu(z)), conv_state, ssm_state

    def forward(self, x, conv_state, ssm_state):
        xin, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, T, Di) each
        u, conv_state = causal_conv_seq(xin, conv_state, self.conv_weight, self.conv_bias)
        u = F.silu(u)
        dt, b, c = self.ssm_params(u)
        A = -torch.exp(self.A_log).t()  # (N, Di)
        dA = torch.exp(dt.unsqueeze(2) * A)  # (B, T, N, Di)
        dBu = (dt * u).unsqueeze(2) * b.unsqueeze(-1)  # (B, T, N, Di)
        hs = []
        h = ssm_state
        # The selective scan: only this update is sequential. unbind() (not dA[:, t]) keeps
        # the backward pass linear in T.
        for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
            h = dA_t * h + dBu_t  # (B, N, Di)
            hs.append(h)
        y = torch.einsum("btnd,btn->btd", torch.stack(hs, dim=1), c) + self.D * u  # (B, T, Di)
        return x + self.out_proj(y * F.silu(z)), conv_state, h


class MambaLM(ByteLM):
    arch = "mamba"
    Config = MambaConfig
    PRESETS = {
        "tiny": dict(d_model=96, n_layers=4, d_state=16),  # ~0.32M
        "small": dict(d_model=256, n_layers=8, d_state=16),  # ~3.6M
    }

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.blocks = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)

    def state_spec(self):
        c = self.config
        spec = []
        for i in range(c.n_layers):
            spec += [(f"{i}.conv", (c.d_conv - 1, c.d_inner)), (f"{i}.ssm", (c.d_state, c.d_inner))]
        return spec

    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(byte_ids)  # (B, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, conv, ssm = block.step(x, state[2 * i], state[2 * i + 1])
            new_state += [conv, ssm]
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, 256)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        x = self.embed(x)  # (B, T, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, conv, ssm = block(x, state[2 * i], state[2 * i + 1])
            new_state += [conv, ssm]
        return self.head(self.norm_f(x)), tuple(new_state)  # (B, T, 256)
