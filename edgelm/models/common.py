"""Building blocks shared by the architectures, and the contract every model follows.

Contract (the same at every level, so one module trains, steps and exports to ONNX):
  init_state(batch)        -> tuple of fixed-shape tensors, named by state_names()
  step(byte_ids, state)    -> (logits (B, 256), state)
  forward(bytes, state)    -> (logits (B, T, 256), state)
State tensors are batch-first and their shapes depend only on the config and the batch.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..vocab import VOCAB

State = tuple[torch.Tensor, ...]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedMLP(nn.Module):
    """GeGLU feed-forward (Griffin's MLP block): down(gelu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate, approximate="tanh") * up)


# The conv state is (B, K-1, C), channels innermost: the window's concat, its weighted sum over
# K and the shift that drops the oldest input then all move whole rows of C (ONNX Runtime runs
# them several times faster than along a K-1 = 3 innermost axis, measured at 64 streams).
def causal_conv_step(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a causal depthwise conv. x (B, C), conv_state (B, K-1, C), weight (C, K)."""
    window = torch.cat([conv_state, x.unsqueeze(1)], dim=1)  # (B, K, C)
    y = (window * weight.t()).sum(1)  # (B, C)
    return (y if bias is None else y + bias), window[:, 1:]


def causal_conv_seq(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over a sequence. x (B, T, C), conv_state (B, K-1, C)."""
    xt = torch.cat([conv_state, x], dim=1)  # (B, K-1+T, C)
    y = F.conv1d(xt.transpose(1, 2), weight.unsqueeze(1), bias, groups=weight.shape[0])  # (B, C, T)
    return y.transpose(1, 2), xt[:, x.shape[1]:]


def linear_scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                chunk: int = 16) -> torch.Tensor:
    """Chunked parallel scan of h_t = exp(log_a_t) * h_{t-1} + b_t.

    log_a, b: (B, T, D) with log_a <= 0; h0: (B, D). Returns h for every t: (B, T, D).
    Inside a chunk the decay between positions s <= t is exp(cumsum_t - cumsum_s), which is
    computed as a difference of log-decays and so never overflows.
    """
    outs = []
    h = h0
    for start in range(0, log_a.shape[1], chunk):
        la = log_a[:, start:start + chunk]  # (B, L, D)
        bc = b[:, start:start + chunk]  # (B, L, D)
        cs = la.cumsum(dim=1)  # (B, L, D)
        seg = cs.unsqueeze(2) - cs.unsqueeze(1)  # (B, L_t, L_s, D)
        n = la.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=la.device).tril()
        decay = torch.where(causal[None, :, :, None], seg, torch.full_like(seg, -torch.inf)).exp()
        y = torch.einsum("btsd,bsd->btd", decay, bc) + cs.exp() * h.unsqueeze(1)  # (B, L, D)
        outs.append(y)
        h = y[:, -1]
    return torch.cat(outs, dim=1)


class ByteLM(nn.Module):
    """Base class: an embedding of the 256 bytes, a recurrent stack, and a 256-way head."""

    arch: ClassVar[str]
    Config: ClassVar[type]
    PRESETS: ClassVar[dict[str, dict]]

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- state -------------------------------------------------------------------------
    def state_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, per-stream shape) of each state tensor, in state-tuple order."""
        raise NotImplementedError

    def state_names(self) -> list[str]:
        return [name for name, _ in self.state_spec()]

    def state_bytes_per_stream(self, bytes_per_value: int = 4) -> int:
        total = 0
        for _, shape in self.state_spec():
            n = 1
            for d in shape:
                n *= d
            total += n * bytes_per_value
        return total

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        device = device or next(self.parameters()).device
        return tuple(torch.zeros((batch, *shape), device=device, dtype=dtype)
                     for _, shape in self.state_spec())

    # -- compute -----------------------------------------------------------------------
    def step(self, byte_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    # -- bookkeeping -------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)
