"""The quantized checkpoint: an edgelm checkpoint (version 2) whose "quant" entry records every
site's decision, and the fused form it describes.

    payload["quant"] = {"recipe": "w8a8", "precision": "int8", "group": 64,
                        "records": {site: record (export/quant/sites.py)},
                        "calibration": {"bytes", "sha256", "files"}, "summary": {...}}

Everything is tensors, numbers, strings and None, so it loads with torch.load(weights_only=True).
A record is checked against the site it claims before it is used: a hand-edited or truncated
file is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import EdgelmError
from .recipes import RECIPES
from .sites import attach, site_modules

MATMUL_KEYS = {"kind", "method", "bits", "group", "w_q", "w_scale", "act_scale", "smooth", "outliers",
               "w_outlier", "rotate", "error"}
TABLE_KEYS = {"kind", "w_q", "w_scale", "error"}


def quant_of(meta: dict, where: str) -> dict | None:
    """The checkpoint's "quant" entry (None for a float checkpoint), its top level checked."""
    quant = meta.get("quant")
    if quant is None:
        return None
    if not isinstance(quant, dict) or quant.get("recipe") not in RECIPES or not isinstance(quant.get("records"), dict):
        raise EdgelmError(f"{where}: its quantization entry is damaged; re-run `edgelm quantize`")
    return quant


def _tensor(rec: dict, key: str, dtype, shape, where: str) -> None:
    t = rec.get(key)
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise EdgelmError(f"{where}: quantized {key} is {got}, expected {dtype} {tuple(shape)}; "
                          "re-run `edgelm quantize`")


def check_record(rec, weight: torch.Tensor, kind: str, where: str) -> None:
    """One-line refusal of a record that does not fit its site's weight (in, out)."""
    keys = MATMUL_KEYS if kind == "matmul" else TABLE_KEYS
    if not isinstance(rec, dict) or set(rec) != keys or rec["kind"] != kind:
        raise EdgelmError(f"{where}: not a {kind} quantization record; re-run `edgelm quantize`")
    n_in, n_out = weight.shape
    _tensor(rec, "w_q", torch.int8, (n_in, n_out), where)
    group = rec.get("group", 0)
    if kind == "matmul" and group:
        _tensor(rec, "w_scale", torch.float32, (-(-n_in // group), n_out), where)
    else:
        _tensor(rec, "w_scale", torch.float32, (n_out,), where)
    lo, hi = (-8, 7) if kind == "matmul" and rec["bits"] == 4 else (-127, 127)
    if int(rec["w_q"].min()) < lo or int(rec["w_q"].max()) > hi or not bool((rec["w_scale"] > 0).all()):
        raise EdgelmError(f"{where}: quantized weights out of range; re-run `edgelm quantize`")
    if kind == "matmul":
        _check_extras(rec, n_in, n_out, where)


def _check_extras(rec: dict, n_in: int, n_out: int, where: str) -> None:
    if rec["act_scale"] is not None and not (isinstance(rec["act_scale"], float) and rec["act_scale"] > 0):
        raise EdgelmError(f"{where}: activation scale must be a positive float; re-run `edgelm quantize`")
    if rec["smooth"] is not None:
        _tensor(rec, "smooth", torch.float32, (n_in,), where)
    if rec["outliers"] is not None:
        k = rec["outliers"].numel() if isinstance(rec["outliers"], torch.Tensor) else -1
        _tensor(rec, "outliers", torch.int64, (k,), where)
        _tensor(rec, "w_outlier", torch.float32, (k, n_out), where)
        if k and (int(rec["outliers"].min()) < 0 or int(rec["outliers"].max()) >= n_in):
            raise EdgelmError(f"{where}: outlier channel out of range; re-run `edgelm quantize`")
    if rec["rotate"] and (rec["rotate"] & (rec["rotate"] - 1) or n_in % rec["rotate"]):
        raise EdgelmError(f"{where}: rotation block {rec['rotate']} does not divide {n_in}; re-run `edgelm quantize`")


def quantized_form(model, quant: dict, where: str, dq_first: bool = False):
    """The fp32 fused form of `model` with the checkpoint's records attached (checked first)."""
    from ..fused import fuse

    fused = fuse(model)
    sites = {site: (getattr(m, name), kind) for site, m, name, kind in site_modules(fused)}
    for site, rec in quant["records"].items():
        if site not in sites:
            raise EdgelmError(f"{where}: quantization record for unknown site {site!r}; re-run `edgelm quantize`")
        check_record(rec, sites[site][0], sites[site][1], f"{where} [{site}]")
    return attach(fused, quant["records"], dq_first)


def load_quantized(path: str | Path):
    """(fp32 model, quant entry or None, metadata) of a checkpoint."""
    from ...checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    return model, quant_of(meta, str(path)), meta
