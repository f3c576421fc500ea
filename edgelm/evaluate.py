"""Evaluation (bits per byte, streamed) for `edgelm eval`; model facts live in info.py.

Bits per byte (BPB) is the mean next-byte cross-entropy in bits over every byte of the text.
The first byte is predicted from the model's zero initial state after feeding one priming byte,
PRIME_BYTE = b"\\n" (texts usually start after a line break); byte t > 0 is predicted after
bytes 0..t-1. So a text of N bytes scores N predictions. A uniform model scores exactly 8.0.
"""

from __future__ import annotations

from .python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

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


class StepMeter(BPBMeter):
    """The same measure through a single-step form, one byte at a time: `form(byte_ids (1,),
    *state) -> (logits (1, 256), *state)`. A quantized checkpoint's fused form runs this way, so
    its BPB is what the exported step graph computes (export/quant/)."""

    def __init__(self, form, model: ByteLM):
        super().__init__(model)
        self.form = form.eval()

    @torch.no_grad()
    def feed(self, data: bytes) -> None:
        from .export.validate import one_thread  # batch 1, tiny matmuls: extra threads only spin

        state = self.state
        with one_thread():
            for b in data:
                logits, *state = self.form(torch.tensor([self.prev]), *state)
                self.nats += F.cross_entropy(logits.double(), torch.tensor([b]), reduction="sum").item()
                self.prev = b
        self.state = tuple(state)
        self.count += len(data)


def bits_per_byte(model: ByteLM, data: bytes) -> float:
    """Mean bits per byte of `model` on in-memory `data` (see the module docstring)."""
    meter = BPBMeter(model)
    meter.feed(data)
    return meter.bits_per_byte()


def evaluate_file(model_path: str | Path, data_path: str | Path) -> dict:
    """BPB of a checkpoint on a file, read in 64 KiB chunks: memory does not grow with the file."""
    data_path = Path(data_path)
    if not data_path.is_file():
        raise EdgelmError(f"data file {data_path} does not exist (or is not a file)")
    meter = meter_for(model_path)
    with open(data_path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            meter.feed(chunk)
    if meter.count == 0:
        raise EdgelmError(f"data file {data_path} is empty; pass a file with some text")
    return {"bits_per_byte": meter.bits_per_byte(), "bytes": meter.count}


def meter_for(model_path: str | Path) -> BPBMeter:
    """A float checkpoint's meter, or a quantized one's (its fake-quantized fused form, stepped)."""
    from .export.quant.stored import load_quantized, quantized_form

    model, quant, _ = load_quantized(model_path)
    if quant is None:
        return BPBMeter(model)
    return StepMeter(quantized_form(model, quant, str(model_path)), model)
