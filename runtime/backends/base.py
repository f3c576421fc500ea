"""The backend interface: every backend is one small file with the same four methods.

A backend owns preallocated, batch-first buffers sized for `max_streams` streams and runs the
bundle's step graph (byte ids (B,)) or prefill graph (byte ids (B, C)) over them:
  run_resident(byte_ids)         the state already sits in `input_views(B)`; (B,) ids run the step
                                 graph, (B, C) the prefill graph; returns the logits view (B, 256);
                                 the new state is `input_views(B)` afterwards
  step_one(byte)                 the same for one stream and one byte (the generation hot path)
  step(byte_ids, states)         copies `states` in first (float32 (B, *shape) each, manifest order)
Returned arrays are views of the backend's buffers, valid until the next call (ping-pong: an
output is never the buffer that is read as the next input). A subclass implements `_run`.
"""

from __future__ import annotations

import numpy as np

from ...vocab import VOCAB
from ..bundle import Bundle


class Backend:
    name = "base"

    def __init__(self, bundle: Bundle, device: str | None, max_streams: int):
        self.bundle, self.device, self.max_streams = bundle, device, max_streams
        self.chunk = bundle.prefill_chunk
        shapes = [(max_streams, *s.shape) for s in bundle.state]
        self.state_in = [np.zeros(s, np.float32) for s in shapes]
        self.state_out = [np.zeros(s, np.float32) for s in shapes]
        graphs = bundle.manifest.graphs  # byte ids as the graphs take them: int64, int32 for TensorRT 8
        self.ids_step = np.zeros((max_streams,), graphs["step"].ids_dtype)
        self.ids_prefill = np.zeros((max_streams, self.chunk), graphs["prefill"].ids_dtype)
        self.logits = np.zeros((max_streams, VOCAB), np.float32)
        self._logits_row = self.logits[0]
        self.parity = 0  # flips every call: which physical buffer is state_in

    @property
    def buffer_bytes(self) -> int:
        arrays = [*self.state_in, *self.state_out, self.ids_step, self.ids_prefill, self.logits]
        return sum(a.nbytes for a in arrays)

    # -- buffers the caller may fill in place ------------------------------------------
    def input_views(self, batch: int) -> list[np.ndarray]:
        return [buf[:batch] for buf in self.state_in]

    def ids_view(self, batch: int, chunk: int = 0) -> np.ndarray:
        return self.ids_prefill[:batch] if chunk else self.ids_step[:batch]

    def _stage(self, byte_ids: np.ndarray, states: list[np.ndarray]) -> int:
        """Copy caller arrays into the input buffers unless they already are them; return B."""
        batch = byte_ids.shape[0]
        if not 0 < batch <= self.max_streams:
            raise ValueError(f"batch {batch} outside 1..{self.max_streams}")
        ids = self.ids_view(batch, byte_ids.shape[1] if byte_ids.ndim == 2 else 0)
        if not _same(ids, byte_ids):
            np.copyto(ids, byte_ids, casting="same_kind")
        for buf, st in zip(self.state_in, states):
            if not _same(buf[:batch], st):
                np.copyto(buf[:batch], st)
        return batch

    # -- the interface -----------------------------------------------------------------
    def step(self, byte_ids: np.ndarray, states: list[np.ndarray]):
        batch = self._stage(byte_ids, states)
        self._run("step", batch)
        return self._flip(batch)

    def run_resident(self, byte_ids: np.ndarray) -> np.ndarray:
        """The hot path: the state is already in `input_views(B)`; only the ids are staged.
        (B,) ids run the step graph, (B, C) the prefill graph. Returns the logits view; the new
        state is `input_views(B)` afterwards."""
        batch = byte_ids.shape[0]
        chunk = byte_ids.shape[1] if byte_ids.ndim == 2 else 0
        np.copyto(self.ids_prefill[:batch] if chunk else self.ids_step[:batch], byte_ids, casting="same_kind")
        self._run("prefill" if chunk else "step", batch)
        self._swap()
        return self.logits[:batch]

    def step_one(self, byte: int) -> np.ndarray:
        """`run_resident([byte])` for a batch of one, without the array plumbing:
        returns the (256,) logits row view."""
        self.ids_step[0] = byte
        self._run("step", 1)
        self._swap()
        return self._logits_row

    def _flip(self, batch: int):
        self._swap()
        return self.logits[:batch], [buf[:batch] for buf in self.state_in]

    def _swap(self) -> None:
        """Ping-pong: the outputs just written become the next call's inputs."""
        self.state_in, self.state_out = self.state_out, self.state_in
        self.parity ^= 1

    def _run(self, graph: str, batch: int) -> None:
        """Read ids and state_in[:batch]; write logits and state_out[:batch] (never aliased)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
