"""Checkpoint IO: `model.pt` = {"format": "edgelm", "version": 1, "arch", "config", "state_dict", ...}.

A quantized checkpoint (`edgelm quantize`) is version 2: the same fp32 model plus a "quant"
entry (export/quant/stored.py), so an edgelm that cannot apply it refuses it instead of
silently running the float model.

Files are always read with torch.load(weights_only=True): a file that needs pickled code is
refused before any of it runs. Every problem with a file becomes a one-line EdgelmError that
names the fix. A file that is not an edgelm checkpoint but holds a classic char-RNN state_dict
(Embedding + LSTM/GRU + Linear) is converted by `edgelm.charrnn`.
"""

from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from .charrnn import from_charrnn  # charrnn.py imports nothing from here
from .errors import EdgelmError
from .fileio import atomic_path
from .models import ARCHS, ByteLM, build_model
from .statedict import check_state_dict

FORMAT, VERSION = "edgelm", 2
QUANTIZED_VERSION = 2  # the version a checkpoint with a "quant" entry is written as; plain ones stay 1


def save_model(model: ByteLM, path: str | Path, extra: dict | None = None,
               dtype: torch.dtype = torch.float32) -> None:
    """Write `model` atomically. dtype=torch.float16 stores weights in half (loads back as fp32)."""
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    version = QUANTIZED_VERSION if "quant" in (extra or {}) else 1
    payload = {"format": FORMAT, "version": version, "arch": model.arch,
               "config": model.config_dict(), "state_dict": state,
               "dtype": str(dtype).replace("torch.", ""), **(extra or {})}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _save(payload, f)


class _Recorder:
    """A file for torch.save that keeps the OSError of a failed write (disk full, file too large):
    torch reports it as a RuntimeError without the reason."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        return self._kept(self.f.write, data)

    def flush(self) -> None:
        self._kept(self.f.flush)

    def _kept(self, op, *args):
        try:
            return op(*args)
        except OSError as exc:
            self.error = exc
            raise


def _save(payload: dict, f) -> None:
    """torch.save into the open file `f`; a failed write raises its OSError (atomic_path reports it)."""
    out = _Recorder(f)
    try:
        torch.save(payload, out)
    except RuntimeError:
        if out.error is not None:
            raise out.error from None
        raise


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
        raise EdgelmError(f"{path} is not a readable torch checkpoint ({_first_line(msg)}); "
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


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "no details"
    return line[:160]


def model_from_payload(payload: dict, where: str) -> ByteLM:
    """Validate an edgelm payload dict and build the fp32 eval-mode model it describes."""
    version = payload.get("version")
    if not isinstance(version, int):
        raise EdgelmError(f"{where}: checkpoint has no valid 'version'; re-save it with edgelm")
    if version > VERSION:
        raise EdgelmError(f"{where} was written by a newer edgelm (checkpoint version {version}, "
                          f"this edgelm reads up to {VERSION}); upgrade: pip install -U edgelm")
    arch = payload.get("arch")
    if arch not in ARCHS:
        raise EdgelmError(f"{where}: unknown architecture {arch!r}; this edgelm knows "
                          f"{', '.join(ARCHS)} (upgrade edgelm if the file is newer)")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise EdgelmError(f"{where}: 'config' is missing or not a dict; re-save the model")
    with torch.device("meta"):  # shapes and dtypes only, nothing allocated: a config can be huge
        shell = _build(arch, config, where)
    state = check_state_dict(shell, payload.get("state_dict"), where)
    model = _build(arch, config, where)
    model.load_state_dict(state)
    return model.eval()


def _build(arch: str, config: dict, where: str) -> ByteLM:
    try:
        return build_model(arch, config)
    except EdgelmError as exc:
        raise EdgelmError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EdgelmError(f"{where}: invalid {arch} config {config} ({exc})") from None


def load_checkpoint(path: str | Path) -> tuple[ByteLM, dict]:
    """(fp32 eval model, metadata: every payload key except the weights, plus 'source')."""
    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        meta = {k: v for k, v in payload.items() if k != "state_dict"}
        return model_from_payload(payload, str(path)), {**meta, "source": "edgelm"}
    model = from_charrnn(payload, str(path))
    return model.eval(), {"arch": model.arch, "config": model.config_dict(), "source": "char-rnn state_dict"}


def load_model(path: str | Path) -> ByteLM:
    """Load an edgelm checkpoint (or a classic char-RNN state_dict) as an fp32 model in eval mode."""
    return load_checkpoint(path)[0]


def model_from_bytes(data: bytes, where: str) -> ByteLM:
    """An edgelm checkpoint held in memory (e.g. a bundle's verified model.pt), weights only."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise EdgelmError(f"{where} is not a readable edgelm checkpoint ({_first_line(str(exc))}); "
                          "re-export the bundle") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgelmError(f"{where} is not an edgelm checkpoint; re-export the bundle")
    return model_from_payload(payload, where)
