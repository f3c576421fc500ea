"""Fused export modules: a trained model's weights folded into few-node step graphs.

At batch 1 every ONNX node costs a kernel launch (or a CPU dispatch) and the matmuls are tiny,
so node count, not FLOPs, sets the step latency. Each `Fused*` module computes exactly what the
model's `step` computes, rearranged so the legacy exporter emits as few nodes as possible:

- the embedding is folded into the first matmul (LSTM/GRU: a (256, G) gate table, gathered and
  fed to Gemm as its C input, so layer 0 costs Gather + Gemm)
- deeper LSTM/GRU layers run one Concat([x, h]) @ W_cat Gemm; LSTM gates are reordered to
  [i, f, o | g] so one Sigmoid covers three gates; GRU's r/z input and hidden parts are summed
  by the matmul itself
- RMSNorm is kept in the exact form ONNX Runtime fuses into one SimplifiedLayerNormalization
- weights are stored pre-transposed (in, out); -exp(A_log) and RG-LRU's -c * softplus(-Lambda)
  are precomputed. (Multiplying Mamba's low-rank dt pair out into one Gemm saves 2 nodes but
  costs ~5x the FLOPs of that projection; measured no faster, so the pair stays.)
- tanh-GELU is x * sigmoid(k1 x + k2 x^3), with k1 folded into the gate columns and 1/k1 into
  the next weights; minGRU's g(x) = max(x + 0.5, sigmoid(x)) (exact: the branches cross at 0)

fp16: weights and compute in half, graph IO in float32 (Cast at the edges). The residual
stream of the norm-based archs stays float32, so the RMSNorm mean of squares cannot overflow;
each sub-block casts to half after its norm and back after its output matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import ByteLM
from ..models.common import causal_conv_step
from ..models.rglru import C_SCALE

GELU_K1 = 2.0 * math.sqrt(2.0 / math.pi)  # tanh-gelu(x) = x * sigmoid(k1 x + k1 * 0.044715 x^3)
GELU_C = 0.044715 / GELU_K1 ** 2  # with g = k1 x: argument = g + GELU_C * g^3


class _Softplus(torch.autograd.Function):
    """softplus exported as the single ONNX Softplus node (F.softplus gives 3 nodes)."""

    @staticmethod
    def forward(ctx, x):
        return F.softplus(x)

    @staticmethod
    def symbolic(g, x):
        return g.op("Softplus", x)


def gelu_scaled(g: torch.Tensor) -> torch.Tensor:
    """k1 * gelu_tanh(x) for g = k1 * x (6 nodes)."""
    return g * torch.sigmoid(g * (g * g * GELU_C + 1.0))


class FusedLM(nn.Module):
    """Common edges: Cast in/out for fp16, head, and the step/prefill entry points."""

    def __init__(self, model: ByteLM, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.half = dtype != torch.float32

    def buf(self, name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        self.register_buffer(name, t.detach().to(dtype or self.dtype).contiguous())

    def layer(self, i: int):
        """Accessor for layer i's buffers: layer(i)("w_in") is the buffer "w_in{i}"."""
        return lambda name: getattr(self, f"{name}{i}")

    def to_c(self, x):  # float32 -> compute dtype (no node in fp32)
        return x.to(self.dtype) if self.half else x

    def to_f(self, x):  # compute dtype -> float32 graph IO
        return x.float() if self.half else x

    def forward(self, byte_ids: torch.Tensor, *state: torch.Tensor):
        """One byte: byte_ids (B,) int64, states fp32 -> logits (B, 256) fp32, states fp32."""
        x, state = self.core(byte_ids, [self.to_c(s) for s in state])
        return (self.logits(x), *[self.to_f(s) for s in state])

    def core(self, byte_ids, state):
        raise NotImplementedError

    def logits(self, x):
        raise NotImplementedError


class FusedPrefill(nn.Module):
    """C bytes per stream, unrolled over the fused step: byte_ids (B, C) -> last logits."""

    def __init__(self, step: FusedLM, chunk: int):
        super().__init__()
        self.step, self.chunk = step, chunk

    def forward(self, byte_ids: torch.Tensor, *state: torch.Tensor):
        s = self.step
        state = [s.to_c(t) for t in state]
        for t in range(self.chunk):
            x, state = s.core(byte_ids[:, t], state)  # one Gather per position
        return (s.logits(x), *[s.to_f(t) for t in state])


# -- LSTM / GRU ------------------------------------------------------------------------------
class FusedLSTM(FusedLM):
    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.n_layers, H = model.config.n_layers, model.config.d_hidden
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        self.H = H
        with torch.no_grad():
            w_ih, w_hh, b = model.layer_weights(0)
            self.buf("table", (model.embed.weight @ w_ih.t() + b)[:, order])  # (256, 4H)
            self.buf("w_h0", w_hh.t()[:, order])  # (H, 4H)
            for i in range(1, self.n_layers):
                w_ih, w_hh, b = model.layer_weights(i)
                self.buf(f"w_cat{i}", torch.cat([w_ih, w_hh], 1).t()[:, order])  # (H + H, 4H)
                self.buf(f"b{i}", b[order])
            self.buf("w_head", model.head.weight.t())  # (H, 256)
            self.buf("b_head", model.head.bias)

    def cell(self, gates, c):
        s, g = gates.split([3 * self.H, self.H], dim=-1)
        i, f, o = torch.sigmoid(s).split([self.H] * 3, dim=-1)
        c = f * c + i * torch.tanh(g)
        return o * torch.tanh(c), c

    def core(self, byte_ids, state):
        new = []
        h, c = self.cell(torch.addmm(self.table[byte_ids], state[0], self.w_h0), state[1])  # Gather+Gemm
        new += [h, c]
        for i in range(1, self.n_layers):
            xh = torch.cat([h, state[2 * i]], dim=-1)  # (B, 2H)
            h, c = self.cell(torch.addmm(getattr(self, f"b{i}"), xh, getattr(self, f"w_cat{i}")), state[2 * i + 1])
            new += [h, c]
        return h, new

    def logits(self, h):
        return self.to_f(torch.addmm(self.b_head, h, self.w_head))  # (B, 256)


class FusedGRU(FusedLM):
    """Gate pre-activations as one (B, 4H) Gemm: [x_rz + h_rz + b, x_n + b_in, h_n + b_hn]."""

    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.n_layers, H = model.config.n_layers, model.config.d_hidden
        self.H = H
        with torch.no_grad():
            for i in range(self.n_layers):
                w_ih, w_hh, b_ih, b_hh = model.layer_weights(i)
                wx = torch.cat([w_ih.t(), torch.zeros(w_ih.shape[1], H)], 1)  # (In, 4H)
                wh = torch.cat([w_hh.t()[:, :2 * H], torch.zeros(H, H), w_hh.t()[:, 2 * H:]], 1)  # (H, 4H)
                b = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])  # (4H,)
                if i == 0:
                    self.buf("table", model.embed.weight @ wx + b)  # (256, 4H)
                    self.buf("w_h0", wh)
                else:
                    self.buf(f"w_cat{i}", torch.cat([wx, wh], 0))  # (H + H, 4H)
                    self.buf(f"b{i}", b)
            self.buf("w_head", model.head.weight.t())
            self.buf("b_head", model.head.bias)

    def cell(self, pre, h):
        s_rz, xn, hn = pre.split([2 * self.H, self.H, self.H], dim=-1)
        r, z = torch.sigmoid(s_rz).split([self.H] * 2, dim=-1)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n)

    def core(self, byte_ids, state):
        h = self.cell(torch.addmm(self.table[byte_ids], state[0], self.w_h0), state[0])
        new = [h]
        for i in range(1, self.n_layers):
            xh = torch.cat([h, state[i]], dim=-1)
            h = self.cell(torch.addmm(getattr(self, f"b{i}"), xh, getattr(self, f"w_cat{i}")), state[i])
            new.append(h)
        return h, new

    def logits(self, h):
        return self.to_f(torch.addmm(self.b_head, h, self.w_head))


# -- residual architectures -----------------------------------------------------------------
class FusedResidual(FusedLM):
    """Embedding -> blocks on a float32 residual stream -> RMSNorm -> head (no bias)."""

    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.eps = model.norm_f.eps
        with torch.no_grad():
            self.buf("table", model.embed.weight)
            self.buf("nw_f", model.norm_f.weight, torch.float32)
            self.buf("w_head", model.head.weight.t())

    def norm_weights(self, i: int, blk) -> None:
        self.buf(f"nw{i}", blk.norm.weight, torch.float32)
        if hasattr(blk, "mlp_norm"):
            self.buf(f"nw_mlp{i}", blk.mlp_norm.weight, torch.float32)

    def norm(self, x, w):
        """RMSNorm in float32, then cast to the compute dtype. x: (B, D).

        Spelled Pow, ReduceMean, Add, Sqrt, Div, Mul: the chain ONNX Runtime fuses into one
        SimplifiedLayerNormalization node (and TensorRT into one normalization kernel); folding
        the weight into the next matmul saves 2 graph nodes but breaks that fusion (measured).
        """
        return self.to_c(x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w)

    def mlp_params(self, block):
        """Gated MLP: norm and k1 folded into gate_up, 1/k1 into down."""
        w = block.mlp.gate_up.weight.t().clone()  # (D, 2F)
        f = self.f_mlp = w.shape[1] // 2  # a Python int: the split exports as one Split node
        w[:, :f] *= GELU_K1
        return w, block.mlp.down.weight.t() / GELU_K1

    def mlp(self, x, nw, w_gu, w_down):
        g, u = (self.norm(x, nw) @ w_gu).split([self.f_mlp] * 2, dim=-1)
        return x + self.to_f((gelu_scaled(g) * u) @ w_down)

    def core(self, byte_ids, state):
        x = self.to_f(self.table[byte_ids])  # (B, D) float32 residual stream
        return self.blocks(x, state)

    def logits(self, x):
        return self.to_f(self.norm(x, self.nw_f) @ self.w_head)  # (B, 256)


class FusedMinGRU(FusedResidual):
    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.n_layers, self.dh = model.config.n_layers, model.config.d_hidden
        with torch.no_grad():
            for i, blk in enumerate(model.blocks):
                w, b = blk.in_proj.weight.t(), blk.in_proj.bias  # (D, 2Dh)
                dh = w.shape[1] // 2
                w = torch.cat([w, w[:, dh:]], 1)  # [k, cand, cand + 0.5]
                b = torch.cat([b, b[dh:] + 0.5])
                self.norm_weights(i, blk)
                self.buf(f"w_in{i}", w)
                self.buf(f"b_in{i}", b)
                self.buf(f"w_out{i}", blk.out_proj.weight.t())
                w_gu, w_down = self.mlp_params(blk)
                self.buf(f"w_gu{i}", w_gu)
                self.buf(f"w_down{i}", w_down)

    def blocks(self, x, state):
        new = []
        for i in range(self.n_layers):
            p = self.layer(i)
            k, cand, cand5 = torch.addmm(p("b_in"), self.norm(x, p("nw")), p("w_in")).split([self.dh] * 3, dim=-1)
            gc = torch.maximum(cand5, torch.sigmoid(cand))  # g(cand)
            h = state[i]
            h = h + torch.sigmoid(k) * (gc - h)
            x = x + self.to_f(h @ p("w_out"))
            x = self.mlp(x, p("nw_mlp"), p("w_gu"), p("w_down"))
            new.append(h)
        return x, new


class FusedMamba(FusedResidual):
    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.n_layers = model.config.n_layers
        self.di, self.n, self.r = model.config.d_inner, model.config.d_state, model.config.dt_rank
        with torch.no_grad():
            for i, blk in enumerate(model.blocks):
                self.norm_weights(i, blk)
                self.buf(f"w_in{i}", blk.in_proj.weight.t())
                self.buf(f"conv_w{i}", blk.conv_weight)
                self.buf(f"conv_b{i}", blk.conv_bias)
                self.buf(f"w_x{i}", blk.x_proj.weight.t())  # (Di, R + 2N)
                self.buf(f"w_dt{i}", blk.dt_proj.weight.t())  # (R, Di)
                self.buf(f"b_dt{i}", blk.dt_proj.bias)
                self.buf(f"A{i}", -torch.exp(blk.A_log))  # (Di, N)
                self.buf(f"D{i}", blk.D)
                self.buf(f"w_out{i}", blk.out_proj.weight.t())

    def ssm(self, i, u, ssm):
        p = self.layer(i)
        dt, bc = (u @ p("w_x")).split([self.r, 2 * self.n], dim=-1)  # (B, R), (B, 2N)
        dt = _Softplus.apply(torch.addmm(p("b_dt"), dt, p("w_dt"))).unsqueeze(-1)  # (B, Di, 1)
        b, c = bc.unsqueeze(1).split([self.n, self.n], dim=-1)  # (B, 1, N) each
        ssm = torch.exp(dt * p("A")) * ssm + (dt * u.unsqueeze(-1)) * b  # (B, Di, N)
        return (ssm * c).sum(-1) + p("D") * u, ssm  # (B, Di)

    def blocks(self, x, state):
        new = []
        for i in range(self.n_layers):
            p = self.layer(i)
            xin, z = (self.norm(x, p("nw")) @ p("w_in")).split([self.di] * 2, dim=-1)  # (B, Di) each
            u, conv = causal_conv_step(xin, state[2 * i], p("conv_w"), p("conv_b"))
            u = u * torch.sigmoid(u)
            y, ssm = self.ssm(i, u, state[2 * i + 1])
            x = x + self.to_f((y * (z * torch.sigmoid(z))) @ p("w_out"))
            new += [conv, ssm]
        return x, new


class FusedRGLRU(FusedResidual):
    def __init__(self, model, dtype):
        super().__init__(model, dtype)
        self.n_layers, self.dr = model.config.n_layers, model.config.d_rnn
        with torch.no_grad():
            for i, blk in enumerate(model.blocks):
                w = blk.in_proj.weight.t().clone()  # (D, 2Dr): [gate, u]
                w[:, :w.shape[1] // 2] *= GELU_K1
                self.norm_weights(i, blk)
                self.buf(f"w_in{i}", w)
                self.buf(f"conv_w{i}", blk.conv_weight)
                self.buf(f"conv_b{i}", blk.conv_bias)
                self.buf(f"w_g{i}", blk.gates.weight.t())
                self.buf(f"b_g{i}", blk.gates.bias)
                self.buf(f"k_a{i}", -C_SCALE * F.softplus(-blk.a_param))  # log a = k_a * r
                self.buf(f"w_out{i}", blk.out_proj.weight.t() / GELU_K1)
                w_gu, w_down = self.mlp_params(blk)
                self.buf(f"w_gu{i}", w_gu)
                self.buf(f"w_down{i}", w_down)

    def rglru(self, i, u, h):
        p = self.layer(i)
        r, ig = torch.sigmoid(torch.addmm(p("b_g"), u, p("w_g"))).split([self.dr] * 2, dim=-1)
        a = torch.exp(r * p("k_a"))  # (B, Dr)
        mult = torch.sqrt((1.0 - a * a).clamp_min(1e-12))
        return a * h + mult * (ig * u)

    def blocks(self, x, state):
        new = []
        for i in range(self.n_layers):
            p = self.layer(i)
            gate, u = (self.norm(x, p("nw")) @ p("w_in")).split([self.dr] * 2, dim=-1)  # (B, Dr) each
            u, conv = causal_conv_step(u, state[2 * i], p("conv_w"), p("conv_b"))
            h = self.rglru(i, u, state[2 * i + 1])
            x = x + self.to_f((h * gelu_scaled(gate)) @ p("w_out"))
            x = self.mlp(x, p("nw_mlp"), p("w_gu"), p("w_down"))
            new += [conv, h]
        return x, new


FUSED = {"lstm": FusedLSTM, "gru": FusedGRU, "mingru": FusedMinGRU, "mamba": FusedMamba, "rglru": FusedRGLRU}


def fuse(model: ByteLM, dtype: torch.dtype = torch.float32) -> FusedLM:
    """The fused single-step module for a trained model (weights copied, model untouched)."""
    return FUSED[model.arch](model.eval(), dtype).eval()
