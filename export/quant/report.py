"""The quantization report: REPORT.json, the per-site table and the per-channel plot.

REPORT.json keys: recipe, precision, group, bpb_fp32, bpb_quant, delta_bpb, size_bytes_fp32,
size_bytes_quant (the weights the graph holds: float buffers at 4 bytes, int8 at 1, int4 at 1/2,
plus scales and float outlier rows), heldout (where the BPB text came from, its bytes),
calibration, outlier_rule, layers (per site: shape, method, error, every candidate's error,
the outlier analysis), states (per state tensor: the largest per-channel abs-max).
"""

from __future__ import annotations

import math

import torch

from ...evaluate import BPBMeter, StepMeter
from .outliers import OUTLIER_K
from .sites import QuantMatMul, QuantTable


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of the graph weights of a fused form: each distinct tensor once (as the bundle's
    weights.bin stores it), int4 values at half a byte."""
    total, seen = 0, set()
    for name, buf in module.named_buffers():
        key = (buf.dtype, tuple(buf.shape), buf.detach().cpu().numpy().tobytes())
        if key in seen:
            continue
        seen.add(key)
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if not isinstance(owner, (QuantMatMul, QuantTable)) and _replaced(module, name):
            continue
        bits = 4 if isinstance(owner, QuantMatMul) and owner.group and name.endswith("w_q") else buf.element_size() * 8
        total += (buf.numel() * bits + 7) // 8
    return total


def _replaced(module, name: str) -> bool:
    """Whether a float buffer is superseded by a quantized site (so it is not in the graph)."""
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    return leaf in getattr(owner, "qsites", {})


def _bpb(meter: BPBMeter, data: bytes) -> float:
    meter.feed(data)
    return meter.bits_per_byte()


def build_report(model, entry: dict, rows: list[dict], cal, texts) -> dict:
    from ..fused import fuse
    from .stored import quantized_form

    qform = quantized_form(model, entry, "quantized model")
    bpb_fp32 = _bpb(BPBMeter(model), texts.heldout)
    bpb_quant = _bpb(StepMeter(qform, model), texts.heldout)
    return {"recipe": entry["recipe"], "precision": entry["precision"], "group": entry["group"],
            "bpb_fp32": bpb_fp32, "bpb_quant": bpb_quant, "delta_bpb": bpb_quant - bpb_fp32,
            "size_bytes_fp32": _bytes(fuse(model)), "size_bytes_quant": _bytes(qform),
            "heldout": {"source": texts.heldout_source, "bytes": len(texts.heldout)},
            "calibration": entry["calibration"], "warnings": texts.warnings,
            "outlier_rule": f"a channel is an outlier when its calibration abs-max > {OUTLIER_K:g} x the median channel's",
            "layers": rows,
            "states": {n: float(v.max()) for n, v in cal.states.items()},
            "observed": {k: _point(v) for k, v in cal.sites.items() if k.endswith("ssm_out")}}


def _point(stats) -> dict:
    a = stats.absmax
    return {"max_absmax": float(a.max()), "median_absmax": float(a.median()),
            "max_ratio": float(a.max() / a.median().clamp_min(1e-12))}


def _outliers(row: dict) -> str:
    o = row.get("outliers")
    if not o or not o["channels"]:
        return "-"
    ch = o["channels"]
    shown = ",".join(map(str, ch[:6])) + ("..." if len(ch) > 6 else "")
    return f"{len(ch)} [{shown}] x{o['max_ratio']:.0f}, {o['bits_lost']:.1f} bits"


def format_report(report: dict) -> str:
    """The per-site table and the summary, for the terminal."""
    lines = [f"{'site':<22} {'shape':>10}  {'outliers':<30} {'method':<18} {'error':>7}"]
    for r in report["layers"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['site']:<22} {shape:>10}  {_outliers(r):<30} {r['method']:<18} {100 * r['error']:6.2f}%")
    lines.append(f"outliers: {report['outlier_rule']}; error: relative output error on calibration rows")
    return "\n".join(lines + [summary_line(report)])


def summary_line(report: dict) -> str:
    ratio = report["size_bytes_quant"] / max(report["size_bytes_fp32"], 1)
    return (f"{report['recipe']}: {report['bpb_fp32']:.4f} -> {report['bpb_quant']:.4f} bits/byte "
            f"(delta {report['delta_bpb']:+.4f}) on {report['heldout']['bytes']:,} held-out bytes "
            f"({report['heldout']['source']}); weights {report['size_bytes_fp32']:,} -> "
            f"{report['size_bytes_quant']:,} bytes ({ratio:.2f}x)")


def _panel(ax, a, row: dict) -> None:
    """One site: its per-channel abs-max (log scale), the rule's threshold, the outliers in red."""
    import numpy as np

    ax.plot(a, lw=0.8)
    ax.set_yscale("log")
    ax.axhline(OUTLIER_K * float(np.median(a)), ls="--", lw=0.6, color="gray")
    ch = row["outliers"]["channels"]
    ax.scatter(ch, a[ch], color="red", s=12, zorder=3)
    ax.set_title(f"{row['site']}: {row['method']}", fontsize=8)
    ax.tick_params(labelsize=6)


def plot_channels(cal, rows: list[dict], path) -> None:
    """Per-channel abs-max of every matmul input, outlier channels marked (matplotlib, optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...fileio import atomic_path

    sites = [r for r in rows if r["kind"] == "matmul"]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(sites) / cols), cols, figsize=(4 * cols, 2.4 * math.ceil(len(sites) / cols)),
                             squeeze=False)
    for ax, r in zip(axes.flat, sites):
        _panel(ax, cal.sites[r["site"]].absmax.numpy(), r)
    for ax in list(axes.flat)[len(sites):]:
        ax.axis("off")
    fig.suptitle(f"per-channel |x| max at each matmul input (red: outliers; dashed: {OUTLIER_K:g} x median)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
