"""Fused Mamba step.

- A = -exp(A_log) is precomputed, (N, Di) like the state
- x_proj's B and C columns come out of one Split; <h, C> is one batched MatMul (B, 1, N) @ (B, N, Di)
- the low-rank dt pair stays two matmuls: multiplying it out into one Gemm saves 2 nodes but
  costs ~5x the FLOPs of that projection; measured no faster
"""

from __future__ import annotations

import torch

from ...models.common import causal_conv_step
from .common import FusedResidual, ResidualLayer, _Softplus, causal_conv_chunk, chunk_scan


class MambaLayer(ResidualLayer):
    ROLES = {"w_x": "ssm_in", "w_dt": "float", "w_out": "ssm_out"}  # w_dt: low rank, kept float

    def __init__(self, block, cfg, eps: float, dtype: torch.dtype):
        super().__init__(block, eps, dtype)
        self.di, self.n, self.r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.keep_mm(w_in=block.in_proj.weight.t())  # (D, 2Di): [x_in, z]
        self.keep(b_in=block.in_proj.bias, b_out=block.out_proj.bias)  # (2Di,), (D,) or None (no bias)
        self.keep(conv_w=block.conv_weight)  # (Di, K)
        self.keep(conv_b=block.conv_bias)  # (Di,) or None
        self.keep_mm(w_x=block.x_proj.weight.t())  # (Di, R + 2N)
        self.keep_mm(w_dt=block.dt_proj.weight.t())  # (R, Di)
        self.keep(b_dt=block.dt_proj.bias)  # (Di,)
        self.keep(A=-torch.exp(block.A_log).t())  # (N, Di)
        self.keep(D=block.D)  # (Di,)
        self.keep_mm(w_out=block.out_proj.weight.t())  # (Di, D)

    def ssm(self, u, ssm):
        """u (B, Di), ssm (B, N, Di) -> y (B, Di), ssm."""
        dt, bc = self.mm("w_x", u).split([self.r, 2 * self.n], dim=-1)  # (B, R), (B, 2N)
        dt = _Softplus.apply(self.mm("w_dt", dt, self.b_dt)).unsqueeze(1)  # (B, 1, Di)
        b, c = bc.unsqueeze(1).split([self.n, self.n], dim=-1)  # (B, 1, N) each
        y, ssm = self.recur(dt, u.unsqueeze(1), b, c, ssm)
        y = y.reshape(-1, self.di) + self.D * u  # (B, Di)
        self.observe("ssm_out", y)
        return y, ssm

    def recur(self, dt, u, b, c, ssm):
        """One position of the selective scan: dt, u (B, 1, Di), b, c (B, 1, N), ssm (B, N, Di)
        -> y (B, 1, Di), ssm."""
        ssm = torch.exp(dt * self.A) * ssm + (dt * u) * b.transpose(1, 2)  # (B, N, Di)
        return torch.matmul(c, ssm), ssm

    def step(self, x, conv, ssm):
        """x (B, D) float32 residual stream, conv (B, K-1, Di), ssm (B, N, Di) -> x, conv, ssm."""
        xin, z = self.mm("w_in", self.norm(x, self.nw), self.b_in).split([self.di] * 2, dim=-1)  # (B, Di) each
        u, conv = causal_conv_step(xin, conv, self.conv_w, self.conv_b)
        u = u * torch.sigmoid(u)  # silu
        y, ssm = self.ssm(u, ssm)
        x = x + self.to_f(self.mm("w_out", y * (z * torch.sigmoid(z)), self.b_out))
        return x, conv, ssm

    def seq(self, x, conv, ssm):
        """x (B, C, D) float32 -> x (B, C, D), conv and ssm after the chunk. The decay
        exp(dt * A) and the input term of every position are one op each over (B, C, N, Di)."""
        xin, z = self.mm("w_in", self.norm(x, self.nw), self.b_in).split([self.di] * 2, dim=-1)  # (B, C, Di)
        u, conv = causal_conv_chunk(xin, conv, self.conv_w, self.conv_b)
        u = u * torch.sigmoid(u)  # silu
        dt, bc = self.mm("w_x", u).split([self.r, 2 * self.n], dim=-1)  # (B, C, R), (B, C, 2N)
        dt = _Softplus.apply(self.mm("w_dt", dt, self.b_dt))  # (B, C, Di)
        if self.PER_POSITION:  # the step's recurrence at each position: no (B, C, N, Di) tensor
            ys = []
            for dt_t, u_t, bc_t in zip(dt.split(1, dim=1), u.split(1, dim=1), bc.split(1, dim=1)):  # (B, 1, *)
                y_t, ssm = self.recur(dt_t, u_t, *bc_t.split([self.n, self.n], dim=-1), ssm)
                ys.append(y_t)
            y = torch.cat(ys, dim=1) + self.D * u  # (B, C, Di)
        else:
            b, c = bc.unsqueeze(2).split([self.n, self.n], dim=-1)  # (B, C, 1, N) each
            log_a = dt.unsqueeze(2) * self.A  # (B, C, N, Di)
            hs, ssm = chunk_scan(torch.exp(log_a), (dt * u).unsqueeze(2) * b.transpose(2, 3), ssm, self.SCAN_BLOCK,
                                 log_a)
            y = torch.matmul(c, hs).reshape(-1, int(x.shape[1]), self.di) + self.D * u  # (B, C, Di)
        x = x + self.to_f(self.mm("w_out", y * (z * torch.sigmoid(z)), self.b_out))
        return x, conv, ssm


class FusedMamba(FusedResidual):
    NATIVE_PREFILL = "per_position"  # measured (see FusedLM.NATIVE_PREFILL)
    Layer = MambaLayer


FUSED = FusedMamba
