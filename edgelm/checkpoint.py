"""Checkpoint IO: `model.pt` = {"format": "edgelm", "version": 1, "arch", "config", "state_dict", ...}.

A quantized checkpoint (`edgelm quantize`) is version 2: the same fp32 model plus a "quant"
entry (export/quant/stored.py), so an edgelm that cannot apply it refuses it instead of
silently running the float model.

Files are always read with torch.load(weights_only=True): a file that needs pickled code is
refused before any of it runs. Every problem with a file becomes a one-line EdgelmError that
names the fix. `save_model` writes OUT.safetensors as safetensors (importers/safetensors_file.py),
anything else with torch.save. `load_checkpoint` reads every format edgelm knows (directories,
safetensors, char-RNN state dicts): edgelm/importers/.
"""

from __future__ import annotations

from .python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import EdgelmError
from .fileio import atomic_path, atomic_write_bytes, check_output_file
from .importers.safetensors_file import payload_bytes, payload_from_tensors, read_tensors
from .importers.charrnn import from_charrnn
from .importers.mamba_dirs import load_dir
from .importers.torchfile import first_line, read_payload
from .models import ARCHS, ByteLM, build_model
from .runtime.manifest import MANIFEST
from .statedict import check_state_dict

FORMAT, VERSION = "edgelm", 2
QUANTIZED_VERSION = 2  # the version a checkpoint with a "quant" entry is written as; plain ones stay 1
OUTPUT_SUFFIXES = (".safetensors", ".pt")  # what `edgelm convert` writes
PAYLOAD_EXTRAS = ("train", "quant", "imported")  # what convert carries over besides the weights


def save_model(model: ByteLM, path: str | Path, extra: dict | None = None,
               dtype: torch.dtype = torch.float32) -> None:
    """Write `model` atomically: PATH.safetensors as safetensors, any other name with torch.save.
    dtype=torch.float16 stores weights in half (loads back as fp32)."""
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    version = QUANTIZED_VERSION if "quant" in (extra or {}) else 1
    payload = {"format": FORMAT, "version": version, "arch": model.arch,
               "config": model.config_dict(), "state_dict": state,
               "dtype": str(dtype).replace("torch.", ""), **(extra or {})}
    if Path(path).suffix == ".safetensors":
        atomic_write_bytes(path, payload_bytes(payload))
        return
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


def _from_payload(payload: dict, where: str, source: str = "edgelm") -> tuple[ByteLM, dict]:
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model_from_payload(payload, where), {**meta, "source": source}


def _charrnn(payload, where: str) -> tuple[ByteLM, dict]:
    model = from_charrnn(payload, where)
    return model, {"arch": model.arch, "config": model.config_dict(), "source": "char-rnn state_dict",
                   "imported": {"layout": "char-RNN state dict"}}


def _load_dir(path: Path) -> tuple[ByteLM, dict]:
    if (path / MANIFEST).exists():
        raise EdgelmError(f"{path} is an edgelm bundle, not a model: `edgelm run` and `edgelm eval` take "
                          "bundles; `info`, `export` and `quantize` take the model it was exported from")
    payload, imported = load_dir(path)
    return _from_payload({**payload, "imported": imported}, str(path), f"{imported['layout']} directory")


def _load_safetensors(path: Path) -> tuple[ByteLM, dict]:
    tensors, metadata = read_tensors(path)
    payload = payload_from_tensors(tensors, metadata, str(path))
    if payload is not None:
        return _from_payload(payload, str(path))
    if any(k.endswith("mixer.A_log") for k in tensors):
        raise EdgelmError(f"{path} holds Mamba weights without their config; pass the model directory "
                          "(config.json beside the weights) instead of the file")
    return _charrnn(tensors, str(path))


def load_checkpoint(path: str | Path) -> tuple[ByteLM, dict]:
    """(fp32 eval model, metadata: every payload key except the weights, plus 'source') of any model
    edgelm reads: an edgelm checkpoint (.pt or .safetensors), a char-RNN state dict (either format)
    or a transformers / mamba_ssm Mamba directory (edgelm/importers/)."""
    path = Path(path)
    if path.is_dir():
        return _load_dir(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _from_payload(payload, str(path))
    return _charrnn(payload, str(path))


def load_model(path: str | Path) -> ByteLM:
    """Any model edgelm reads (see load_checkpoint) as an fp32 model in eval mode."""
    return load_checkpoint(path)[0]


def convert(src: str | Path, out: str | Path) -> dict:
    """Write any model edgelm reads as an edgelm checkpoint: OUT.safetensors or OUT.pt (by suffix)."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise EdgelmError(f"output {out} must end in .safetensors (safe to share: no code) or .pt")
    check_output_file(out)
    model, meta = load_checkpoint(src)
    save_model(model, out, extra={k: meta[k] for k in PAYLOAD_EXTRAS if k in meta})
    return {"arch": model.arch, "params": model.num_params(), "output": str(out),
            "format": "safetensors" if out.suffix == ".safetensors" else "torch"}


def model_from_bytes(data: bytes, where: str) -> ByteLM:
    """An edgelm checkpoint held in memory (e.g. a bundle's verified model.pt), weights only."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise EdgelmError(f"{where} is not a readable edgelm checkpoint ({first_line(str(exc))}); "
                          "re-export the bundle") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgelmError(f"{where} is not an edgelm checkpoint; re-export the bundle")
    return model_from_payload(payload, where)
