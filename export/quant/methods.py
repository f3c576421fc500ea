"""The per-site quantization methods. Each builds a site record (export/quant/sites.py) from the
site's float weight and calibration statistics; `output_error` measures what it costs.

    int8 weights      per output channel, symmetric: s_o = max|W[:, o]| / 127
    int4 weights      groups of G input rows, s = amax / 7, values in [-8, 7]; GPTQ spreads each
                      column's rounding error over the columns not yet quantized (H = X^T X)
    minmax            per-tensor activation scale max|x| / 127 (the naive recipe)
    percentile        the scale clips |x| at a percentile of the calibration sample
    smooth(alpha)     SmoothQuant: s_j = max|x_j|^a / max|W_j|^(1-a); x / s (folded into the
                      preceding norm weight), W_j * s (before quantizing)
    split             the outlier channels' rows stay float (a small separate matmul)
    hadamard          x rotated by a block-diagonal Hadamard H (orthonormal): x H @ H^T W = x W,
                      so the weight is quantized as H^T W (block-diagonal) and the outlier's
                      energy spreads over the block
"""

from __future__ import annotations

import torch

from .qdq import INT4_MAX, INT4_MIN, hadamard, int4_groups_rtn, int8_per_channel, rotation_block
from .sites import QuantMatMul

PERCENTILES = (99.9, 99.99, 99.999)
ALPHAS = (0.5, 0.75, 0.9)


def record(w_q, w_scale, act_scale=None, *, method: str, bits: int = 8, group: int = 0,
           smooth=None, outliers=None, w_outlier=None, rotate: int = 0, error: float = 0.0) -> dict:
    return {"kind": "matmul", "method": method, "bits": bits, "group": group, "w_q": w_q,
            "w_scale": w_scale, "act_scale": None if act_scale is None else float(act_scale),
            "smooth": smooth, "outliers": outliers, "w_outlier": w_outlier, "rotate": rotate,
            "error": float(error)}


def weight_only(w: torch.Tensor) -> dict:
    q, s, err = int8_per_channel(w)
    return record(q, s, method="w8", error=err)


def table(w: torch.Tensor) -> dict:
    q, s, err = int8_per_channel(w)  # (256, width): one scale per column
    return {"kind": "table", "w_q": q, "w_scale": s, "error": err}


def act_scale(x_abs: torch.Tensor) -> float:
    return max(float(x_abs), 1e-12) / 127


def minmax(w, stats) -> dict:
    q, s, _ = int8_per_channel(w)
    return record(q, s, act_scale(stats.absmax.max()), method="minmax")


def percentile(w, stats, p: float) -> dict:
    q, s, _ = int8_per_channel(w)
    clip = torch.quantile(stats.sample_rows().abs().flatten()[:1 << 24].float(), p / 100)
    return record(q, s, act_scale(clip), method=f"percentile {p:g}")


def smooth(w, stats, alpha: float) -> dict:
    s = (stats.absmax.clamp_min(1e-5) ** alpha / w.abs().amax(1).clamp_min(1e-5) ** (1 - alpha))
    s = (s / s.median()).clamp(1e-3, 1e3)  # only ratios matter; keep the norm weight's scale
    q, ws, _ = int8_per_channel(w * s[:, None])
    return record(q, ws, act_scale((stats.absmax / s).max()), method=f"smooth {alpha:g}", smooth=s)


def split(w, stats, channels: torch.Tensor) -> dict:
    keep = torch.ones(w.shape[0], dtype=torch.bool)
    keep[channels] = False
    q, s, _ = int8_per_channel(w * keep[:, None])
    return record(q, s, act_scale(stats.absmax[keep].max()), method=f"split {len(channels)} fp32",
                  outliers=channels.clone(), w_outlier=w[channels].clone())


def rotate(w, stats) -> dict:
    n = w.shape[0]
    b = rotation_block(n)
    h = hadamard(b)
    wr = (h.t() @ w.reshape(n // b, b, -1)).reshape(n, -1)  # block-diagonal H^T W
    xr = (stats.sample_rows().reshape(-1, n // b, b) @ h).reshape(-1, n)
    q, s, _ = int8_per_channel(wr)
    return record(q, s, act_scale(xr.abs().max()), method=f"hadamard {b}", rotate=b)


@torch.no_grad()
def output_error(rec: dict, w: torch.Tensor, x: torch.Tensor) -> float:
    """||x W - site(x)|| / ||x W|| on calibration rows x (n, in): what the record costs."""
    y = x @ w
    if rec.get("smooth") is not None:
        x = x / rec["smooth"]
    y_hat = QuantMatMul(rec)(x)
    return float((y - y_hat).norm() / y.norm().clamp_min(1e-30))


@torch.no_grad()
def gptq_int4(w: torch.Tensor, hessian: torch.Tensor, group: int, damp: float = 0.01) -> tuple:
    """GPTQ (Frantar et al., 2023) on w (in, out): int4 values (in, out), scales (in/G, out)."""
    W = w.t().double().clone()  # (out, in): columns are input channels
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    scales = []
    for i in range(W.shape[1]):
        if i % group == 0:
            scales.append((W[:, i:i + group].abs().amax(1) / INT4_MAX).clamp_min(1e-12))
        s = scales[-1]
        Q[:, i] = torch.clamp(torch.round(W[:, i] / s), INT4_MIN, INT4_MAX)
        err = (W[:, i] - Q[:, i] * s) / Hinv[i, i]
        W[:, i + 1:] -= err[:, None] * Hinv[i, i + 1:][None, :]
    return Q.t().to(torch.int8), torch.stack(scales).float()  # (in, out), (in/G, out)


def int4(w: torch.Tensor, stats, group: int) -> dict:
    """GPTQ int4 where it beats round-to-nearest on the calibration rows, else RTN."""
    x = stats.sample_rows()
    rtn = record(*int4_groups_rtn(w, group)[:2], method="int4 rtn", bits=4, group=group)
    try:
        gq = record(*gptq_int4(w, stats.hessian, group), method="int4 gptq", bits=4, group=group)
    except torch.linalg.LinAlgError:
        gq = None
    best = min((r for r in (rtn, gq) if r is not None), key=lambda r: output_error(r, w, x))
    best["error"] = output_error(best, w, x)
    return best
