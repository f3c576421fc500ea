"""Quantized sites: what a recipe decided for one matmul weight or gather table, as a module.

A record is a plain dict of tensors, numbers and strings (it is saved in the quantized
checkpoint and loads with weights_only=True):

    matmul  {"kind": "matmul", "method", "bits" 8|4, "group" (0: per output channel),
             "w_q" int8 (in, out), "w_scale" (out,) or (ceil(in/G), out),
             "act_scale" float | None (None: float activations),
             "smooth" (in,) | None   x / smooth, folded into the preceding norm's weight,
             "outliers" int64 (k,) | None with "w_outlier" (k, out): those input channels in float,
             "rotate" int (block of the Hadamard rotation of x; 0: none), "error" float}
    table   {"kind": "table", "w_q" int8 (256, width), "w_scale" (width,), "error" float}

`attach(fused, records)` puts them on a fused form (export/fused/): its `mm` and `lookup` then
compute the quantized forms, in torch and in the exported graph alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .qdq import act_qdq, dequant, dequant_blocked, hadamard


class QuantMatMul(nn.Module):
    """y = Q(x') @ DQ(w_q) [+ bias] [+ x[:, outliers] @ w_outlier], x' = x rotated where asked."""

    def __init__(self, rec: dict):
        super().__init__()
        self.group, self.act_scale, self.rotate = rec["group"], rec["act_scale"], rec["rotate"]
        self.register_buffer("w_q", rec["w_q"].to(torch.int8))
        self.register_buffer("w_scale", rec["w_scale"].float())
        self.split = rec.get("outliers") is not None
        if self.split:
            self.register_buffer("outliers", rec["outliers"].long())
            self.register_buffer("w_outlier", rec["w_outlier"].float())
        if self.rotate:
            self.register_buffer("H", hadamard(self.rotate))

    held: torch.Tensor | None = None  # the dequantized weight while a prefill trace holds it

    def weight(self) -> torch.Tensor:
        if self.held is not None:
            return self.held
        if self.group:
            return dequant_blocked(self.w_q, self.w_scale, self.group)
        return dequant(self.w_q, self.w_scale)

    def hold(self, on: bool) -> None:
        """While on, weight() dequantizes once and reuses it: an unrolled prefill graph then holds
        one DequantizeLinear per weight, not one per byte (ONNX Runtime does not merge them)."""
        self.held = self.weight() if on else None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        xr = x
        if self.rotate:  # block-diagonal Hadamard: (B, in) -> (B, in/b, b) @ H -> (B, in)
            n = x.shape[-1]
            xr = (x.reshape(-1, n // self.rotate, self.rotate) @ self.H).reshape(-1, n)
        if self.act_scale is not None:
            xr = act_qdq(xr, self.act_scale)
        w = self.weight()
        y = xr @ w if bias is None else torch.addmm(bias, xr, w)  # Gemm: unfuse_dq_gemm splits it
        if self.split:
            y = y + x.index_select(1, self.outliers) @ self.w_outlier
        return y


class QuantTable(nn.Module):
    """An int8 gather table with one scale per column. Gather -> DQ for ONNX Runtime; DQ -> Gather
    where the graph is for TensorRT (its Gather takes no INT8). Both give the same numbers."""

    def __init__(self, rec: dict, dq_first: bool = False):
        super().__init__()
        self.dq_first = dq_first
        self.register_buffer("w_q", rec["w_q"].to(torch.int8))
        self.register_buffer("w_scale", rec["w_scale"].float())

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.dq_first:
            return dequant(self.w_q, self.w_scale)[ids]
        return dequant(self.w_q[ids], self.w_scale)


def site_modules(fused: nn.Module):
    """(site name, owning module, weight name, kind) of every quantization site of a fused form,
    in graph order: the top level's tables, the layers, then the top level's matmuls (the head)."""
    top = []
    for path, module in fused.named_modules():
        prefix = f"{path}." if path else ""
        sites = [(prefix + n, module, n, "table") for n in getattr(module, "tables", ())]
        sites += [(prefix + n, module, n, "matmul") for n in getattr(module, "matmuls", ())]
        if path:
            yield from sites
        else:
            yield from (s for s in sites if s[3] == "table")
            top = [s for s in sites if s[3] == "matmul"]
    yield from top


def attach(fused: nn.Module, records: dict[str, dict], dq_first: bool = False) -> nn.Module:
    """Put quantized records on a float32 fused form (in place; returns it). A record's smoothing
    divides the norm weight that feeds its matmul; its weights already carry the factor."""
    sites = {site: (module, name) for site, module, name, _ in site_modules(fused)}
    unknown = sorted(set(records) - set(sites))
    if unknown:
        raise ValueError(f"quantization records for unknown sites {unknown}")
    for site, rec in records.items():
        module, name = sites[site]
        if rec["kind"] == "table":
            module.qsites[name] = QuantTable(rec, dq_first)
            continue
        if rec.get("smooth") is not None:  # a new buffer, never in place: forms may share weights
            norm_name = module.NORM_OF[name]
            norm = getattr(module, norm_name)
            module.register_buffer(norm_name, norm / rec["smooth"].to(norm.dtype))
        module.qsites[name] = QuantMatMul(rec)
    return fused
