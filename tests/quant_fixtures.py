"""Shared inputs of the quantization tests: calibration text from Python's own sources (present on
every machine, never the held-out text), and models with injected outlier channels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from edgelm.export.quant.calibrate import MIN_CALIB_BYTES

MODELS = Path(__file__).resolve().parents[1] / "models"
HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_1k.txt"
INJECTED = (3, 17, 50)  # channels of every block's norm output scaled by K
K = 40.0


def calibration_bytes(size: int = MIN_CALIB_BYTES + 4096) -> bytes:
    """Python stdlib source text (textwrap.py is the README's held-out text: it is left out)."""
    lib = Path(textwrap.__file__).parent
    text = b""
    for name in ("string.py", "csv.py", "shlex.py", "fnmatch.py", "glob.py", "heapq.py", "bisect.py",
                 "difflib.py", "argparse.py", "pathlib.py", "ast.py"):
        path = lib / name
        if path.is_file():
            text += path.read_bytes()
        if len(text) >= size:
            return text[:size]
    path = lib / "pathlib" / "_local.py"
    return (text + path.read_bytes() * 4)[:size]


def inject_outliers(model, channels=INJECTED, k: float = K):
    """In every block, scale channels of the norm output by k and divide in_proj's columns by k:
    the fp32 function is unchanged, in_proj's input gets k-times outlier channels."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.norm.weight[list(channels)] *= k
            blk.in_proj.weight[:, list(channels)] /= k
    return model
