"""Fused export forms: a trained model's weights folded into few-node step graphs.

One file per architecture, as in edgelm/models/: export/fused/<arch>.py defines the form and
names it FUSED. `fuse` finds it by the model's arch name, so a new architecture's form is one
new file here. common.py holds the shared pieces and explains why the forms look as they do.

    fuse(model, dtype) -> FusedLM: forward(byte_ids (B,), *state) -> (logits, *state)
    FusedPrefill(fused, chunk): a chunk of bytes through the form's `prefill_core`: the residual
        forms run every matmul over the whole chunk and scan only the recurrence (chunk_scan);
        LSTM / GRU unroll the step (their recurrences are not linear)
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import importlib

import torch

from ...errors import EdgelmError
from ...models import ByteLM
from .common import FusedLM, FusedPrefill


def fused_form(arch: str) -> type[FusedLM]:
    """The fused module class for an architecture: FUSED of export/fused/<arch>.py."""
    missing = EdgelmError(f"architecture '{arch}' has no fused export form; add export/fused/{arch}.py")
    if not arch.isidentifier() or arch.startswith("_") or arch == "common":  # not a form's file
        raise missing
    name = f"{__name__}.{arch}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the form exists but one of its own imports is missing
            raise
        raise missing from None
    form = getattr(module, "FUSED", None)
    if form is None:
        raise EdgelmError(f"export/fused/{arch}.py names no fused form; set FUSED = its FusedLM class")
    return form


def fuse(model: ByteLM, dtype: torch.dtype = torch.float32) -> FusedLM:
    """The fused single-step module for a trained model (weights copied, model untouched)."""
    form = fused_form(model.arch)
    with torch.no_grad():
        return form(model.eval(), dtype).eval()


__all__ = ["FusedLM", "FusedPrefill", "fuse", "fused_form"]
