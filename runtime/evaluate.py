"""`edgelm eval BUNDLE`: bits per byte of the deployed step graph (numpy + the runtime, no torch).

The definition is edgelm/evaluate.py's: the first byte is predicted from the state after stepping
PRIME_BYTE from the zero state (a fresh stream's logits), byte t > 0 after bytes 0..t-1, so N
bytes score N predictions; log-softmax in float64. Here the bytes go through the bundle's step
graph one at a time in one stream of a Session, opened (and verified) as `edgelm run` opens it, so
the number belongs to the artifact that ships. The file is read in 64 KiB chunks and the logits
are scored in blocks of BLOCK rows: memory does not grow with the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import EdgelmError
from ..vocab import VOCAB

READ_CHUNK = 64 * 1024  # bytes read from the file at a time
BLOCK = 4096  # logits rows scored per vectorised log-softmax: (4096, 256) float32, 4 MiB


class _Scorer:
    """Sums -log softmax(logits)[target] in float64 over blocks of logits rows."""

    def __init__(self):
        self.rows = np.empty((BLOCK, VOCAB), np.float32)
        self.targets = np.empty(BLOCK, np.int64)
        self.n = 0  # rows filled in the current block
        self.nats = 0.0
        self.count = 0

    def add(self, logits: np.ndarray, target: int) -> None:
        self.rows[self.n] = logits  # a copy: the backend's logits view is reused by the next step
        self.targets[self.n] = target
        self.n += 1
        if self.n == BLOCK:
            self.score()

    def score(self) -> None:
        x = self.rows[:self.n].astype(np.float64)
        top = x.max(axis=1)
        lse = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
        self.nats += float((lse - x[np.arange(self.n), self.targets[:self.n]]).sum())
        self.count += self.n
        self.n = 0


def _open_data(data_path: Path):
    if not data_path.is_file():
        raise EdgelmError(f"data file {data_path} does not exist (or is not a file); pass an existing text file")
    try:
        return open(data_path, "rb")
    except OSError as exc:
        raise EdgelmError(f"cannot read data file {data_path} ({exc.strerror}); check its permissions") from None


def bundle_bits_per_byte(bundle_dir: str | Path, data_path: str | Path, backend: str = "auto",
                         trusted_keys=()) -> dict:
    """{"bits_per_byte", "bytes"} of a bundle's step graph on a file (see the module docstring).
    The bundle is verified like `edgelm run`'s (every sha256; with trusted_keys, its signature)."""
    from .session import Session

    data_path = Path(data_path)
    scorer, keys = _Scorer(), list(trusted_keys) or None
    with _open_data(data_path) as f, Session.open(bundle_dir, backend, max_streams=1, trusted_keys=keys) as sess:
        slot = sess.stream().slot
        slots, logits = (slot,), sess.logits_pool[slot]  # a fresh stream's: PRIME_BYTE stepped, predicts byte 0
        prev = None
        while chunk := f.read(READ_CHUNK):
            for byte in chunk:
                if prev is not None:  # byte t is predicted after stepping byte t-1
                    logits = sess.step_one(slots, prev)
                scorer.add(logits, byte)
                prev = byte
    scorer.score()
    if scorer.count == 0:
        raise EdgelmError(f"data file {data_path} is empty; pass a file with some text")
    return {"bits_per_byte": scorer.nats / scorer.count / math.log(2), "bytes": scorer.count}
