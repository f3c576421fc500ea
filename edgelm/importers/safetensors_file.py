"""safetensors files: the format that cannot carry code, read and written without pickle.

An edgelm checkpoint as safetensors keeps the torch payload's content (checkpoint.py):
  tensors   the state_dict under its own names (any safetensors reader sees a plain state dict),
            plus every tensor elsewhere in the payload (a quantized checkpoint's records) under
            "__edgelm__.<n>";
  metadata  {"format": "edgelm", "payload": JSON of every other payload entry, tensors replaced
            by {"__tensor__": "__edgelm__.<n>"}}.
A safetensors file without that metadata is read as a plain state dict: a char-RNN's
(importers/charrnn.py). Mamba weights without their config.json are refused with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import EdgelmError

FORMAT = "edgelm"
META_PREFIX = "__edgelm__."
TENSOR_REF = "__tensor__"


def _flatten(obj, tensors: dict):
    """obj with every tensor moved into `tensors` (named META_PREFIX + n) and replaced by a ref."""
    if isinstance(obj, torch.Tensor):
        name = f"{META_PREFIX}{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {TENSOR_REF: name}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only string keys can be stored")
        return {k: _flatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a {type(obj).__name__} cannot be stored in safetensors metadata")


def _unflatten(obj, tensors: dict, where: str):
    if isinstance(obj, dict):
        if set(obj) == {TENSOR_REF}:
            if obj[TENSOR_REF] not in tensors:
                raise EdgelmError(f"{where}: its metadata names a missing tensor {obj[TENSOR_REF]!r}; "
                                  "re-save the model")
            return tensors[obj[TENSOR_REF]]
        return {k: _unflatten(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, where) for v in obj]
    return obj


def payload_bytes(payload: dict) -> bytes:
    """An edgelm payload (checkpoint.save_model's dict) as safetensors bytes."""
    from safetensors.torch import save

    rest = {k: v for k, v in payload.items() if k != "state_dict"}
    tensors = {k: v.detach().cpu().contiguous() for k, v in payload["state_dict"].items()}
    meta = _flatten(rest, extra := {})
    return save({**tensors, **extra}, metadata={"format": FORMAT, "payload": json.dumps(meta)})


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; any damage is a one-line EdgelmError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgelmError(f"model file {path} does not exist (or is not a file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "unreadable"
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        if path.stat().st_size == 0:
            raise EdgelmError(f"{path} is empty; re-run the command that writes it") from None
        raise EdgelmError(f"{path} is not a readable safetensors file ({reason}); copy it again or "
                          "re-save it with safetensors.torch.save_file") from None


def payload_from_tensors(tensors: dict, metadata: dict, where: str) -> dict | None:
    """The edgelm payload stored in a safetensors file, or None when it holds a plain state dict."""
    if metadata.get("format") != FORMAT:
        return None
    try:
        rest = json.loads(metadata.get("payload", ""))
    except json.JSONDecodeError:
        rest = None
    if not isinstance(rest, dict):
        raise EdgelmError(f"{where}: its edgelm metadata is damaged; re-save the model")
    payload = _unflatten(rest, tensors, where)
    payload["state_dict"] = {k: v for k, v in tensors.items() if not k.startswith(META_PREFIX)}
    return payload
