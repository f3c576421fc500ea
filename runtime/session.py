"""`Session`: one verified bundle, one backend, and a fixed pool of per-stream state slots.

All memory is allocated when the session opens:
  - the state pool: `max_streams` x `state_bytes_per_stream` (each stream owns one slot) plus
    `max_streams` x 256 float32 next-byte logits;
  - the backend's buffers: two (ping-pong) batch-first copies of the state, the byte ids
    (step and prefill) and the logits, all for `max_streams` streams.
`buffer_bytes` is the total. Running a batch gathers its streams' slots into the backend's input
buffers; while the same set of streams keeps running (the hot path: one stream generating, or a
stable batch) their state stays resident in the backend and nothing is copied back until
something needs the pool (`flush`).

Threads: a Session may be shared. One lock (`Session.lock`) serialises everything that touches
the state pool or the backend; each stream's sampling and bookkeeping run outside it, so threads
that each own a stream overlap their sampling with one another's steps. A Stream, and a
Scheduler, belong to one thread at a time.
Lifecycle: closing a stream gives its slot back and takes it out of every scheduler of the
session; closing the session frees the backend, after which every call raises EdgelmError.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

from ..errors import EdgelmError
from ..vocab import PRIME_BYTE, VOCAB
from .arguments import as_bytes, as_instance, as_int
from .backends import open_backend
from .bundle import Bundle, load_bundle
from .manifest import MAX_STREAMS
from .sampling import Sampling

_BOUND_BACKENDS = ("tensorrt",)  # engines are built for the bundle's max batch


class Session:
    def __init__(self, bundle: Bundle, backend, max_streams: int):
        self.bundle, self.backend, self.max_streams = bundle, backend, max_streams
        self.lock = threading.RLock()
        self.pool = [np.zeros((max_streams, *s.shape), np.float32) for s in bundle.state]
        self.logits_pool = np.zeros((max_streams, VOCAB), np.float32)
        self._free = list(range(max_streams - 1, -1, -1))
        self._fed = np.zeros(max_streams, np.int64)  # bytes each slot consumed since its initial state
        self._closed = False
        self._schedulers: weakref.WeakSet = weakref.WeakSet()
        self._resident: tuple[int, ...] | None = None
        self._resident_idx = np.zeros(0, np.int64)
        self._initial = self._primed_state()

    @classmethod
    def open(cls, bundle_dir: str | Path, backend: str = "auto", device: str | None = None,
             max_streams: int | None = None, trusted_keys=None) -> "Session":
        """Verify the bundle (every file's sha256 and the manifest's bundle_id; with trusted_keys,
        a list of Ed25519 public keys (PEM paths or bytes), also its signature) and start
        `backend` on `device`. ONNX Runtime may open more streams than the bundle's max_streams;
        an engine backend may not (its engines are built for that batch)."""
        as_instance(backend, str, "backend", optional=False)
        as_instance(device, str, "device")
        if max_streams is not None:
            as_int(max_streams, "max_streams", 1, MAX_STREAMS)
        bundle = load_bundle(bundle_dir, trusted_keys)
        n = bundle.max_streams if max_streams is None else int(max_streams)
        be = open_backend(backend, bundle, device, n)
        if n > bundle.max_streams and be.name in _BOUND_BACKENDS:
            be.close()
            raise EdgelmError(f"max_streams {n} exceeds the bundle's {bundle.max_streams} "
                              f"(the {be.name} engine's batch limit); re-export with a larger profile")
        return cls(bundle, be, n)

    # -- sizes -------------------------------------------------------------------------
    @property
    def state_bytes_per_stream(self) -> int:
        """Recurrent state bytes of one stream (float32), whatever its length."""
        return self.bundle.state_bytes_per_stream()

    @property
    def buffer_bytes(self) -> int:
        """Every buffer this session holds: state pool + logits pool + backend buffers."""
        pool = sum(a.nbytes for a in self.pool) + self.logits_pool.nbytes
        return pool + self.backend.buffer_bytes

    # -- streams -----------------------------------------------------------------------
    def stream(self, sampling: Sampling | None = None, prompt: bytes | str = b""):
        """A new stream in the initial state (optionally fed `prompt`). On any error the slot is
        given back."""
        from .stream import Stream

        sampling = as_instance(sampling, Sampling, "sampling") or Sampling()
        data = as_bytes(prompt, "prompt")
        stream = Stream(self, self._acquire(), sampling)  # arguments checked: nothing here can fail
        try:
            stream.feed(data)
        except BaseException:
            stream.close()
            raise
        return stream

    def restore(self, blob: bytes):
        """A new stream continuing exactly where the snapshotted one stopped."""
        stream = self.stream()
        try:
            return stream.restore(blob)
        except BaseException:
            stream.close()
            raise

    def scheduler(self):
        from .scheduler import Scheduler

        self.check_open()
        sched = Scheduler(self)
        self._schedulers.add(sched)
        return sched

    def describe(self) -> str:
        """The backend actually running, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"."""
        return self.backend.describe()

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise EdgelmError("this session is closed; open a new one with Session.open")

    def close(self) -> None:
        """Free the backend; every later call on the session or its streams raises EdgelmError."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _primed_state(self) -> tuple[list[np.ndarray], np.ndarray]:
        """A fresh stream's state and next-byte logits: PRIME_BYTE stepped from the zero state."""
        zeros = [np.zeros((1, *s.shape), np.float32) for s in self.bundle.state]
        logits, states = self.backend.step(np.array([PRIME_BYTE], np.int64), zeros)
        return [s.copy() for s in states], logits[0].copy()

    # -- slots -------------------------------------------------------------------------
    def _acquire(self) -> int:
        with self.lock:
            self.check_open()
            if not self._free:
                raise EdgelmError(f"all {self.max_streams} stream slots are in use; close a stream "
                                  "or open the session with a larger max_streams")
            slot = self._free.pop()
            self.write_slot(slot, None, None)
            return slot

    def release(self, slot: int) -> None:
        """Give a closed stream's slot back, taking it out of every scheduler of this session.
        (A slot still resident in the backend needs no flush: whoever takes it next writes it
        with write_slot, which flushes first.)"""
        with self.lock:
            for sched in list(self._schedulers):
                sched.discard(slot)
            self._free.append(slot)

    def fed(self, slot: int) -> int:
        """Bytes slot `slot` consumed since its initial state (prompt, generated, restored)."""
        return int(self._fed[slot])

    def read_slot(self, slot: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Copies of a slot's state tensors (1, *shape) and logits (256,)."""
        with self.lock:
            self.check_open()
            self.flush()
            return [p[slot:slot + 1].copy() for p in self.pool], self.logits_pool[slot].copy()

    def write_slot(self, slot: int, states, logits, fed: int = 0) -> None:
        """Set a slot's state, logits and byte count (None: a fresh stream's, see PRIME_BYTE)."""
        with self.lock:
            self.check_open()
            self.flush()
            init_states, init_logits = self._initial
            for i, p in enumerate(self.pool):
                p[slot] = (init_states if states is None else states)[i].reshape(p.shape[1:])
            self.logits_pool[slot] = init_logits if logits is None else logits
            self._fed[slot] = fed

    # -- running -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write the resident batch's state back into the pool."""
        if self._resident is None:
            return
        idx = self._resident_idx
        for p, cur in zip(self.pool, self.backend.input_views(len(idx))):
            p[idx] = cur
        self._resident = None

    def _gather(self, slots: tuple[int, ...]) -> None:
        self.flush()
        idx = np.array(slots, np.int64)
        for p, view in zip(self.pool, self.backend.input_views(len(idx))):
            np.take(p, idx, axis=0, out=view)
        self._resident, self._resident_idx = slots, idx

    def run(self, slots: tuple[int, ...], byte_ids: np.ndarray) -> np.ndarray:
        """Advance streams `slots` by one step (ids (B,)) or one prefill chunk (ids (B, chunk)).
        Returns the (B, 256) logits, a view valid until the next call (also copied to the pool)."""
        n, chunk = len(slots), self.bundle.prefill_chunk
        if byte_ids.shape not in ((n,), (n, chunk)):
            raise ValueError(f"byte ids of shape {byte_ids.shape} for {n} streams: give ({n},) for a step "
                             f"or ({n}, {chunk}) for a prefill chunk")
        with self.lock:
            self.check_open()
            if slots != self._resident:
                self._gather(slots)
            logits = self.backend.run_resident(byte_ids)
            self.logits_pool[self._resident_idx] = logits
            self._fed[self._resident_idx] += byte_ids.shape[1] if byte_ids.ndim == 2 else 1
            return logits

    def step_one(self, slots: tuple[int], byte: int) -> np.ndarray:
        """`run(slots, [byte])` for one stream (`slots` == (slot,)), the batch-1
        generation hot path: returns the slot's (256,) logits row in the pool."""
        with self.lock:
            if self._closed:
                self.check_open()
            if slots != self._resident:
                self._gather(slots)
            slot = slots[0]
            row = self.logits_pool[slot]
            row[:] = self.backend.step_one(byte)
            self._fed[slot] += 1
            return row
