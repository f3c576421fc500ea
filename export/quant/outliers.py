"""Outlier analysis: which input channels of a site are outliers, and what they cost.

Rule (stated, as in the report): channel c of a site's input is an outlier when its calibration
abs-max exceeds OUTLIER_K times the median channel's abs-max. LLM.int8() calls a feature an
outlier at |x| >= 6 in absolute terms; a ratio to the median is used here because tiny byte
models have no common activation scale.

With one per-tensor int8 scale set by the largest channel, every other channel is quantized on
a grid sized for the outliers: `range_share` is the fraction of the int8 range the outliers
alone use (1 - max(rest) / max(all)), and `bits_lost` = log2(max(all) / max(rest)) is how many
of the 8 bits the other channels lose.
"""

from __future__ import annotations

import math

import torch

OUTLIER_K = 8.0
MAX_OUTLIER_FRACTION = 0.125  # more channels than this are not "a few": no float split


def outlier_channels(absmax: torch.Tensor, k: float = OUTLIER_K) -> torch.Tensor:
    """Indices (ascending) of the channels whose abs-max exceeds k x the median channel's."""
    median = absmax.median().clamp_min(1e-12)
    return torch.nonzero(absmax > k * median).flatten()


def analyse(absmax: torch.Tensor, k: float = OUTLIER_K) -> dict:
    """The outlier facts of one site's input, JSON-ready."""
    idx = outlier_channels(absmax, k)
    top = float(absmax.max())
    mask = torch.ones_like(absmax, dtype=torch.bool)
    mask[idx] = False
    rest = float(absmax[mask].max()) if bool(mask.any()) else top
    return {"rule": f"abs-max > {k:g} x median channel", "channels": idx.tolist(),
            "median_absmax": float(absmax.median()), "max_absmax": top,
            "max_ratio": top / max(float(absmax.median()), 1e-12),
            "range_share": 1.0 - rest / top if top > 0 else 0.0,
            "bits_lost": math.log2(top / rest) if rest > 0 and top > 0 else 0.0}
