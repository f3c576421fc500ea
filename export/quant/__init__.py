"""Post-training quantization with outlier-aware channel handling (the compiler side).

    calibrate.py   calibration text (minimum, held-out split) and per-site statistics
    outliers.py    the outlier rule and what outliers cost
    methods.py     per-site methods: int8/int4 (GPTQ) weights, min-max, percentile, SmoothQuant,
                   float split, Hadamard rotation; each measured by the output error it causes
    recipes.py     the registry: w8, w8a8-naive, w8a8, w4
    sites.py       a site's record as a module: the fake quantization the graph also computes
    qdq.py         torch ops that export as ONNX QuantizeLinear/DequantizeLinear
    stored.py      the quantized checkpoint's "quant" entry, checked on load
    report.py      the per-site table, REPORT.json and the plot

    quantize_checkpoint(model, recipe, calib, out, data=None, report=None, plot=None) -> report

The fused forms of export/fused/ are the quantized model: each `mm`/`lookup` site takes a record,
so `edgelm eval` of a quantized checkpoint runs the very module `edgelm export` writes.
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

from pathlib import Path

from .calibrate import MIN_CALIB_BYTES
from .recipes import RECIPES, get_recipe

DEFAULT_GROUP = 64  # int4 block: TensorRT takes 64 or 128, ONNX Runtime's MatMulNBits 16..256
GROUPS = (32, 64, 128)


def quantize_checkpoint(model_path, recipe: str, calib: list, out, data=None, report=None, plot=None,
                        group: int = DEFAULT_GROUP, progress: bool = False) -> dict:
    """Calibrate, quantize, measure and write OUT.pt (and REPORT.json / PLOT.png); returns the report."""
    from .run import quantize

    return quantize(Path(model_path), recipe, [Path(p) for p in calib], Path(out),
                    None if data is None else Path(data), report and Path(report), plot and Path(plot),
                    group, progress)


__all__ = ["DEFAULT_GROUP", "GROUPS", "MIN_CALIB_BYTES", "RECIPES", "get_recipe", "quantize_checkpoint"]
