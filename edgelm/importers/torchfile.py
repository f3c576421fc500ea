"""torch.save files, read with torch.load(weights_only=True): a file that needs pickled code is
refused before any of it runs, and every other failure is a one-line EdgelmError naming the fix."""

from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import EdgelmError


def read_payload(path: str | Path):
    """torch.load(weights_only=True) with every failure turned into a one-line EdgelmError."""
    path = Path(path)
    if not path.is_file():
        raise EdgelmError(f"model file {path} does not exist (or is not a file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg and ("GLOBAL" in msg or _imports_code(path)):
            raise EdgelmError(
                f"{path} contains pickled code; edgelm loads weights only. "
                "Re-save it with torch.save(model.state_dict(), ...)") from None
        raise EdgelmError(f"{path} is not a readable torch checkpoint ({first_line(msg)}); "
                          "pass a file written by `edgelm train` or torch.save") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        if path.stat().st_size == 0:
            raise EdgelmError(f"{path} is empty; re-run the command that writes it") from None
        if _is_zip(path) or "central directory" in str(exc) or isinstance(exc, EOFError):
            raise EdgelmError(f"{path} is truncated or corrupted; copy or re-save it") from None
        raise EdgelmError(f"{path} is not a torch checkpoint (neither a torch.save zip archive "
                          "nor a pickle); pass a file written by `edgelm train` or torch.save") from None


def _is_zip(path: Path) -> bool:
    """torch.save writes a zip archive; its first bytes identify it even when it is cut short."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _imports_code(path: Path) -> bool:
    """Whether a plain pickle file imports any global (scanned with pickletools: nothing runs)."""
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ")
                       for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a readable pickle: not code either
        return False


def first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "no details"
    return line[:160]
