"""Check a state_dict against the model it is meant for (shared by checkpoint.py and charrnn.py)."""

from __future__ import annotations

from .python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import torch

from .errors import EdgelmError
from .models import ByteLM

MAX_LISTED = 6  # names listed in a mismatch message


def _listed(names) -> str:
    names = sorted(names)
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _check_keys(model: ByteLM, expected: dict, state: dict, where: str) -> None:
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + \
                ([f"unexpected {_listed(unexpected)}"] if unexpected else [])
        raise EdgelmError(f"{where}: weights do not match the {model.arch} config "
                          f"({'; '.join(parts)}); re-save with edgelm.checkpoint.save_model")


def _check_dtypes(expected: dict, state: dict, where: str) -> None:
    """Float weights stored as integers (or bool, complex) would be truncated: refuse them."""
    bad = [f"{k} ({str(state[k].dtype).replace('torch.', '')})" for k, v in expected.items()
           if v.is_floating_point() and not state[k].is_floating_point()]
    if bad:
        raise EdgelmError(f"{where}: weights {_listed(bad)} are not floating point; re-save the model "
                          "with float weights (fp32 or fp16)")


def _check_shapes(model: ByteLM, expected: dict, state: dict, where: str) -> None:
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
           for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise EdgelmError(f"{where}: config {model.config_dict()} does not match the tensors "
                          f"(file vs expected: {_listed(bad)}); fix 'config' or re-save the model")


def _check_finite(state: dict, where: str) -> None:
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise EdgelmError(f"{where}: NaN/Inf weights in {_listed(nonfinite)}; the model diverged "
                          "in training: retrain (e.g. with a lower --lr)")


def check_state_dict(model: ByteLM, state: object, where: str) -> dict:
    """Keys, shapes, dtypes and finiteness of `state` (any object) against `model`; returns it as fp32
    tensors. `model` may live on the meta device: only its tensors' shapes and dtypes are read."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgelmError(f"{where}: 'state_dict' is not a dict of tensors; re-save the model")
    expected = model.state_dict()
    _check_keys(model, expected, state, where)
    _check_shapes(model, expected, state, where)
    _check_dtypes(expected, state, where)
    _check_finite(state, where)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
