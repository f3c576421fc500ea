"""What every fused form shares: frozen weights, the graph edges, the prefill chunk path, and the
residual architectures' norm, gated MLP and GELU.

At batch 1 every ONNX node costs a kernel launch (or a CPU dispatch) and the matmuls are tiny,
so node count, not FLOPs, sets the step latency. Each fused form computes exactly what the
model's `step` computes, rearranged so the legacy exporter emits as few nodes as possible:

- weights are stored pre-transposed (in, out) and whatever depends only on weights is
  precomputed, so it becomes an initializer instead of a chain of nodes
- RMSNorm is kept in the exact form ONNX Runtime fuses into one SimplifiedLayerNormalization
- tanh-GELU is x * sigmoid(k1 x + k2 x^3), with k1 folded into the gate columns and 1/k1 into
  the next weights
- Python ints for split sizes, so every split exports as one Split node
(The per-architecture tricks are in each architecture's file.)

fp16: weights and compute in half, graph IO in float32 (Cast at the edges). The residual
stream of the norm-based archs stays float32, so the RMSNorm mean of squares cannot overflow;
each sub-block casts to half after its norm and back after its output matmul.

The sub-layer modules are called through a `step` method, not `__call__`, as the model blocks
are: the traced graph then carries no module scopes, only the ops.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models import ByteLM

GELU_K1 = 2.0 * math.sqrt(2.0 / math.pi)  # tanh-gelu(x) = x * sigmoid(k1 x + k1 * 0.044715 x^3)
GELU_C = 0.044715 / GELU_K1 ** 2  # with g = k1 x: argument = g + GELU_C * g^3


class _Softplus(torch.autograd.Function):
    """softplus exported as 5 vectorised nodes (F.softplus gives a Softplus node and more)."""

    @staticmethod
    def forward(ctx, x):
        return F.softplus(x)

    @staticmethod
    def symbolic(g, x):  # relu(x) - log(sigmoid(|x|)): exact, no overflow, and vectorised where
        # ONNX Runtime's Softplus kernel is scalar (13 ns per value against ~3, measured)
        return g.op("Sub", g.op("Relu", x), g.op("Log", g.op("Sigmoid", g.op("Abs", x))))


def gelu_scaled(g: torch.Tensor) -> torch.Tensor:
    """k1 * gelu_tanh(x) for g = k1 * x (6 nodes)."""
    return g * torch.sigmoid(g * (g * g * GELU_C + 1.0))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (B, D) in its dtype (float32 here).

    Spelled Pow, ReduceMean, Add, Sqrt, Div, Mul: the chain ONNX Runtime fuses into one
    SimplifiedLayerNormalization node (and TensorRT into one normalization kernel); folding
    the weight into the next matmul saves 2 graph nodes but breaks that fusion (measured).
    """
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Frozen(nn.Module):
    """Copies of trained weights, frozen as buffers (the graph's initializers), in one compute dtype.

    Matmul weights (keep_mm) and gather tables (keep_table) are used through `mm` and `lookup`,
    the quantization sites: a quantized checkpoint attaches a QuantMatMul / QuantTable per site
    (export/quant/), and calibration observes every matmul input through `observer`.
    """

    NORM_OF: ClassVar[dict[str, str]] = {}  # matmul weight -> the norm weight whose output feeds it
    ROLES: ClassVar[dict[str, str]] = {}  # matmul weight -> "ssm_in" | "ssm_out" | "float" (kept float)

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.half = dtype != torch.float32
        self.matmuls: list[str] = []
        self.tables: list[str] = []
        self.qsites = nn.ModuleDict()  # weight name -> its quantized form, where quantized
        self.observer = None  # calibration: observer(module, name, x) at every matmul input

    def keep(self, dtype: torch.dtype | None = None, **tensors: torch.Tensor | None) -> None:
        """Register each tensor as a buffer under its keyword: keep(w_in=w) -> self.w_in (None
        stays None: an absent bias)."""
        for name, t in tensors.items():  # a copy: the form never shares storage with the model
            kept = None if t is None else t.detach().to(dtype or self.dtype, copy=True).contiguous()
            self.register_buffer(name, kept)

    def keep_mm(self, **weights: torch.Tensor) -> None:
        """Matmul weights, stored (in, out): a quantization site each."""
        self.keep(**weights)
        self.matmuls += list(weights)

    def keep_table(self, **tables: torch.Tensor) -> None:
        """Gather tables (256, width): quantized per column where the recipe says."""
        self.keep(**tables)
        self.tables += list(tables)

    def mm(self, name: str, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in) @ weight `name` (in, out) [+ bias]: float, or its quantized form.
        A chunk x (B, C, in) runs as one (B*C, in) matmul and comes back (B, C, out)."""
        if x.dim() == 3:  # python ints: the graph reshapes by constants, not Shape nodes
            c, n = int(x.shape[1]), int(x.shape[2])
            y = self.mm(name, x.reshape(-1, n), bias)
            return y.reshape(-1, c, int(y.shape[-1]))
        self.observe(name, x)
        if name in self.qsites:
            return self.qsites[name](x, bias)
        w = getattr(self, name)
        return x @ w if bias is None else torch.addmm(bias, x, w)

    def lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (B,) of table `name`: (B, width). A chunk's ids (B, C) gather as (B*C,)
        and come back (B, C, width): a quantized table's per-column scale stays on its last axis."""
        if ids.dim() == 2:
            rows = self.lookup(name, ids.reshape(-1))
            return rows.reshape(-1, int(ids.shape[1]), int(rows.shape[-1]))
        if name in self.qsites:
            return self.qsites[name].lookup(ids)
        return getattr(self, name)[ids]

    def observe(self, point: str, x: torch.Tensor) -> None:
        if self.observer is not None:
            self.observer(self, point, x)

    def to_c(self, x):  # float32 -> compute dtype (no node in fp32)
        return x.to(self.dtype) if self.half else x

    def to_f(self, x):  # compute dtype -> float32 graph IO
        return x.float() if self.half else x


class FusedLM(Frozen):
    """A fused single-step module: Cast in/out for fp16 around `core`, then the head (`logits`)."""

    # Bytes per prefill call by default. 32: within 10% of the best of 16 / 32 / 64 for LSTM, GRU
    # and Mamba on the x86 CPU, 4 KB and 200-byte prompts alike; minGRU and RG-LRU take 64 (10-20%
    # faster there). bench/results/prefill_chunk.json; no GPU or Jetson was measured (they get the
    # same), and `edgelm export --chunk` overrides it.
    PREFILL_CHUNK: ClassVar[int] = 32
    # How the native C target runs a prefill chunk (export/native). Measured on the x86 CPU, batch
    # 1, a 512-byte prompt through the C API, best of 20-200 runs, median of 3 rounds:
    #   "step"          a loop of its C step (the default, and what an unrolled prefill graph is)
    #   "graph"         the bundle's prefill graph compiled: matmuls read each weight once per
    #                   chunk (tiny minGRU 184k vs 74k bytes/s step, RG-LRU 167k vs 76k)
    #   "per_position"  a prefill graph exported with the layers' PER_POSITION on, compiled and
    #                   checked against the bundle's: chunk-wide matmuls, the recurrence one
    #                   position at a time (Mamba, whose chunk graph holds (C, N, Di) scan tensors:
    #                   0.42M 74k vs 54k graph vs 36k step; small 7.1k vs 5.8k vs 2.6k). ONNX
    #                   Runtime runs that form ~20% slower (a node costs it more than the work).
    NATIVE_PREFILL: ClassVar[str] = "step"

    def forward(self, byte_ids: torch.Tensor, *state: torch.Tensor):
        """One byte: byte_ids (B,) int64, states fp32 -> logits (B, 256) fp32, states fp32."""
        x, state = self.core(byte_ids, [self.to_c(s) for s in state])
        return (self.logits(x), *[self.to_f(s) for s in state])

    def core(self, byte_ids, state):
        """byte_ids (B,), states in the compute dtype -> the last hidden x, the new states."""
        raise NotImplementedError

    def prefill_core(self, byte_ids, state):
        """byte_ids (B, C) -> the last byte's hidden x, the states after the chunk. This default
        unrolls `core` byte by byte; forms with a parallel chunk path override it."""
        for t in range(int(byte_ids.shape[1])):
            x, state = self.core(byte_ids[:, t], state)  # one Gather per position
        return x, state

    def logits(self, x):
        """The last hidden x -> logits (B, 256) float32."""
        raise NotImplementedError


class FusedPrefill(nn.Module):
    """C bytes per stream through the form's chunk path: byte_ids (B, C) -> last logits."""

    def __init__(self, step: FusedLM, chunk: int):
        super().__init__()
        self.step, self.chunk = step, chunk

    def forward(self, byte_ids: torch.Tensor, *state: torch.Tensor):
        s = self.step
        sites = [m for m in s.modules() if hasattr(m, "hold")]  # quantized matmuls: dequantize once
        for m in sites:
            m.hold(True)
        try:
            x, state = s.prefill_core(byte_ids, [s.to_c(t) for t in state])
            return (s.logits(x), *[s.to_f(t) for t in state])
        finally:
            for m in sites:
                m.hold(False)


# -- chunk-parallel pieces ---------------------------------------------------------------------
def chunk_scan(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor, block: int, log_a: torch.Tensor | None = None):
    """h_t = a_t * h_{t-1} + b_t over a chunk, in blocks of `block` positions.

    a, b (B, C, *S), h (B, *S) -> every h (B, C, *S), the last h (B, *S). Blocks > 1 need
    log_a = log(a) (<= 0), computed without underflow by the caller.
    block 1 is the sequential scan: one Mul and one Add per position on (B, *S), the same
    arithmetic as the step. block L > 1 solves each block in parallel: inside it the decay
    from s to t <= s is exp(cumsum_t - cumsum_s) (a difference of log-decays: no overflow), and
    only the carry between blocks is sequential; L^2 work per block for 2L fewer nodes.
    """
    h, outs = h.unsqueeze(1), []  # (B, 1, *S)
    if block == 1:
        for a_t, b_t in zip(a.split(1, dim=1), b.split(1, dim=1)):  # one Split each
            h = a_t * h + b_t
            outs.append(h)
        return torch.cat(outs, dim=1), h[:, 0]  # h[:, 0], not squeeze (an If node)
    for la, bb in zip(log_a.split(block, dim=1), b.split(block, dim=1)):  # (B, L, *S) each
        n, tail = int(la.shape[1]), (1,) * (la.dim() - 2)
        cs = la.cumsum(dim=1)  # (B, L, *S)
        mask = torch.full((n, n), -torch.inf, dtype=la.dtype).triu(1).reshape(n, n, *tail)  # s > t: -inf
        decay = torch.exp(cs.unsqueeze(2) - cs.unsqueeze(1) + mask)  # (B, L_t, L_s, *S)
        h = (decay * bb.unsqueeze(1)).sum(2) + torch.exp(cs) * h  # (B, L, *S)
        outs.append(h)
        h = h[:, -1:]
    return torch.cat(outs, dim=1), h[:, 0]  # h[:, 0], not squeeze (an If node)


def causal_conv_chunk(x: torch.Tensor, conv: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None):
    """Causal depthwise conv over a chunk, as K shifted slices (no Conv node: any dtype, any target);
    edgelm.models.common.causal_conv_step repeated. x (B, C, Ch), conv (B, K-1, Ch), w (Ch, K)
    -> y (B, C, Ch), the new conv state (B, K-1, Ch)."""
    c, k = int(x.shape[1]), int(w.shape[1])
    xt = torch.cat([conv, x], dim=1)  # (B, K-1+C, Ch)
    y = sum(xt[:, j:j + c] * w[:, j] for j in range(k))  # (B, C, Ch)
    return (y if bias is None else y + bias), xt[:, c:]


# -- residual architectures (minGRU, Mamba, RG-LRU) --------------------------------------------
class ResidualLayer(Frozen):
    """A residual block's float32 norm weights and, where the block has one, its gated MLP.

    Subclasses take (block, model config, eps, dtype), add the temporal mixing (their widths read
    from the config) and `step(x, *state) -> (x, *state)`.
    """

    NORM_OF = {"w_in": "nw", "w_gu": "nw_mlp"}
    # chunk_scan's block in the prefill graph. 1 (the sequential scan) was the fastest on this
    # x86 CPU in ONNX Runtime at every block tried (bench/results/prefill_chunk.json): at these
    # widths a node costs more than the L^2 work it would save. Larger blocks trade nodes for
    # work, which suits GPUs (not measured here: no GPU was lent); tests cover every block.
    SCAN_BLOCK = 1
    # The chunk path as the step's recurrence at each position (where a layer has that form):
    # many small nodes instead of chunk-wide tensors. Off for ONNX Runtime (a node costs more
    # than its work); the native C target's prefill (see FusedLM.NATIVE_PREFILL).
    PER_POSITION = False

    def __init__(self, block: nn.Module, eps: float, dtype: torch.dtype):
        super().__init__(dtype)
        self.eps = eps
        self.keep(torch.float32, nw=block.norm.weight)  # (D,)
        if hasattr(block, "mlp"):  # gated MLP: k1 folded into the gate columns, 1/k1 into down
            w_gu = block.mlp.gate_up.weight.t().clone()  # (D, 2F)
            self.f_mlp = w_gu.shape[1] // 2
            w_gu[:, :self.f_mlp] *= GELU_K1
            self.keep(torch.float32, nw_mlp=block.mlp_norm.weight)  # (D,)
            self.keep_mm(w_gu=w_gu, w_down=block.mlp.down.weight.t() / GELU_K1)  # (D, 2F), (F, D)

    def norm(self, x, w):
        """float32 residual x (B, D) -> normed, in the compute dtype."""
        return self.to_c(rms_norm(x, w, self.eps))

    def seq(self, x, *state):
        """The chunk path: x (B, C, D) float32 -> x (B, C, D), the states after the chunk."""
        raise NotImplementedError

    def mlp(self, x):
        g, u = self.mm("w_gu", self.norm(x, self.nw_mlp)).split([self.f_mlp] * 2, dim=-1)  # (B, F) each
        return x + self.to_f(self.mm("w_down", gelu_scaled(g) * u))


class FusedResidual(FusedLM):
    """Embedding -> `Layer` blocks on a float32 residual stream -> RMSNorm -> head (no bias)."""

    Layer: type[ResidualLayer]
    NORM_OF = {"w_head": "nw_f"}

    def __init__(self, model: ByteLM, dtype: torch.dtype):
        super().__init__(dtype)
        self.eps = model.norm_f.eps
        self.keep_table(table=model.embed.weight)  # (256, D)
        self.layers = nn.ModuleList(self.Layer(blk, model.config, self.eps, dtype) for blk in model.blocks)
        self.keep(torch.float32, nw_f=model.norm_f.weight)  # (D,)
        self.keep_mm(w_head=model.head.weight.t())  # (D, 256)

    def core(self, byte_ids, state):
        x = self.to_f(self.lookup("table", byte_ids))  # (B, D) float32 residual stream
        k = len(state) // len(self.layers)  # state tensors per layer
        new = []
        for i, layer in enumerate(self.layers):
            x, *s = layer.step(x, *state[k * i:k * (i + 1)])
            new += s
        return x, new

    def prefill_core(self, byte_ids, state):
        """byte_ids (B, C): every matmul, norm and MLP over the whole chunk; only the recurrence
        scans (chunk_scan); the head sees the last byte only."""
        x = self.to_f(self.lookup("table", byte_ids))  # (B, C, D) float32 residual stream
        k = len(state) // len(self.layers)
        new = []
        for i, layer in enumerate(self.layers):
            x, *s = layer.seq(x, *state[k * i:k * (i + 1)])
            new += s
        return x[:, -1], new

    def logits(self, x):
        return self.to_f(self.mm("w_head", self.to_c(rms_norm(x, self.nw_f, self.eps))))  # (B, 256)
