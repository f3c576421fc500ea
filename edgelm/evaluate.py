"""Evaluation (bits per byte, streamed) and model facts for `edgelm eval` / `edgelm info`.

Bits per byte (BPB) is the mean next-byte cross-entropy in bits over every byte of the text.
The first byte is predicted from the model's zero initial state after feeding one priming byte,
PRIME_BYTE = b"\\n" (texts usually start after a line break); byte t > 0 is predicted after
bytes 0..t-1. So a text of N bytes scores N predictions. A uniform model scores exactly 8.0.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import EdgelmError
from .models import ByteLM
from .vocab import PRIME_BYTE  # "\n": the first byte's context, as in the runtime

READ_CHUNK = 64 * 1024  # bytes read from the file at a time
WINDOW = 4096  # bytes per forward call: bounds the logits tensor at (1, 4096, 256)


class BPBMeter:
    """Feeds bytes through a model chunk by chunk, carrying the recurrent state."""

    def __init__(self, model: ByteLM):
        self.model = model.eval()
        self.state = model.init_state(1)
        self.prev = PRIME_BYTE
        self.nats = 0.0
        self.count = 0

    @torch.no_grad()
    def feed(self, data: bytes) -> None:
        for start in range(0, len(data), WINDOW):
            piece = data[start:start + WINDOW]
            target = torch.frombuffer(bytearray(piece), dtype=torch.uint8).long()  # (T,)
            inp = torch.cat([torch.tensor([self.prev]), target[:-1]])  # (T,)
            logits, self.state = self.model(inp[None, :], self.state)  # (1, T, 256)
            self.nats += F.cross_entropy(logits[0].float(), target, reduction="sum").item()
            self.count += len(piece)
            self.prev = piece[-1]

    def bits_per_byte(self) -> float:
        if self.count == 0:
            raise EdgelmError("no bytes to evaluate; the text is empty")
        return self.nats / self.count / math.log(2)


def bits_per_byte(model: ByteLM, data: bytes) -> float:
    """Mean bits per byte of `model` on in-memory `data` (see the module docstring)."""
    meter = BPBMeter(model)
    meter.feed(data)
    return meter.bits_per_byte()


def evaluate_file(model_path: str | Path, data_path: str | Path) -> dict:
    """BPB of a checkpoint on a file, read in 64 KiB chunks: memory does not grow with the file."""
    from .checkpoint import load_model

    data_path = Path(data_path)
    if not data_path.is_file():
        raise EdgelmError(f"data file {data_path} does not exist (or is not a file)")
    meter = BPBMeter(load_model(model_path))
    with open(data_path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            meter.feed(chunk)
    if meter.count == 0:
        raise EdgelmError(f"data file {data_path} is empty; pass a file with some text")
    return {"bits_per_byte": meter.bits_per_byte(), "bytes": meter.count}


def weight_bytes(model: ByteLM) -> dict:
    """Bytes of weights per precision. int8 = 1 byte per value + one fp32 scale per row."""
    params = model.num_params()
    rows = sum(p.shape[0] if p.dim() >= 2 else 1 for p in model.parameters())
    return {"fp32": 4 * params, "fp16": 2 * params, "int8": params + 4 * rows}


def model_info(path: str | Path) -> dict:
    """Architecture, config, parameter count, weight bytes and per-stream state of a checkpoint."""
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    info = {"arch": model.arch, "config": model.config_dict(), "params": model.num_params(),
            "weight_bytes": weight_bytes(model),
            "state_bytes_per_stream": model.state_bytes_per_stream(4),
            "state": [{"name": n, "shape": list(s)} for n, s in model.state_spec()],
            "source": meta.get("source", "edgelm")}
    if "train" in meta:
        info["train"] = {k: meta["train"][k] for k in ("steps", "seed", "val_bpb") if k in meta["train"]}
    return info


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


def format_info(info: dict) -> str:
    """Human-readable `edgelm info`."""
    cfg = ", ".join(f"{k}={v}" for k, v in info["config"].items())
    wb = info["weight_bytes"]
    lines = [f"arch        {info['arch']}  ({cfg})",
             f"params      {info['params']:,}",
             f"weights     fp32 {_kb(wb['fp32'])}  fp16 {_kb(wb['fp16'])}  int8 ~{_kb(wb['int8'])}",
             f"state       {info['state_bytes_per_stream']:,} bytes/stream (fp32): "
             + ", ".join(f"{s['name']}{tuple(s['shape'])}" for s in info["state"])]
    if "train" in info and "val_bpb" in info["train"]:
        t = info["train"]
        lines.append(f"trained     {t.get('steps')} steps, seed {t.get('seed')}, "
                     f"held-out {t['val_bpb']:.3f} bits/byte")
    if info.get("source") != "edgelm":
        lines.append(f"source      {info['source']}")
    return "\n".join(lines)
