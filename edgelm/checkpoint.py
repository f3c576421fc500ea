"""Checkpoint IO: `model.pt` = {"format": "edgelm", "version": 1, "arch", "config", "state_dict"}.

Always read with torch.load(weights_only=True): a file that needs pickled code is refused.
(Preliminary version: the foundation issue hardens it and adds char-RNN import.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import EdgelmError
from .fileio import atomic_path
from .models import ByteLM, build_model

FORMAT, VERSION = "edgelm", 1


def save_model(model: ByteLM, path: str | Path, extra: dict | None = None) -> None:
    payload = {"format": FORMAT, "version": VERSION, "arch": model.arch,
               "config": model.config_dict(), "state_dict": model.state_dict(), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path) -> ByteLM:
    """Load an edgelm checkpoint as an fp32 model in eval mode."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise EdgelmError(f"cannot load {path}: {exc}") from exc
    model = build_model(payload["arch"], payload["config"])
    model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    return model.eval()
