"""Next-byte sampling: greedy, temperature, top-k, top-p; seeded, reproducible, per stream.

Every stream owns a `Sampler` with its own numpy Generator (PCG64), so a stream's bytes depend
only on its seed and its logits, never on which other streams share its batch. One uniform draw
per sampled byte (none for greedy), used as an inverse-CDF draw on the cumulative softmax; the
generator's state travels in snapshots. Work buffers are allocated once (`Sampler` keeps one
row's for the batch-1 fast path, `BatchSampler` a batch's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EdgelmError
from ..vocab import VOCAB


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off; seed None = fresh entropy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature < 1e6):
            raise EdgelmError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 <= self.top_k <= VOCAB:
            raise EdgelmError(f"top_k must be in 0..{VOCAB} (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EdgelmError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise EdgelmError(f"seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def key(self) -> tuple:
        """The parameters that shape the distribution (rows with equal keys sample together)."""
        return (0.0, 1, 1.0) if self.greedy else (self.temperature, self.top_k, self.top_p)

    def to_dict(self) -> dict:
        return asdict(self)


GREEDY = Sampling(temperature=0.0)


class Sampler:
    """A stream's sampling parameters and random generator (its state travels in snapshots)."""

    def __init__(self, sampling: Sampling = Sampling()):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self._inv_t = 0.0 if sampling.greedy else 1.0 / sampling.temperature
        self._plain = sampling.top_k in (0, VOCAB) and sampling.top_p >= 1.0
        self._w = np.empty(VOCAB, np.float64)  # work buffers of the one-row fast path
        self._c = np.empty(VOCAB, np.float64)
        self._batch: BatchSampler | None = None
        self._out = np.zeros(1, np.int64)

    def sample(self, logits: np.ndarray) -> int:
        """Sample one byte from a (256,) logits row (float32), bit-identical to a batch of one.

        Greedy and plain temperature sampling take a one-row fast path (no temporaries, no
        per-call lists); top-k / top-p go through a one-row `BatchSampler`.
        """
        if self._inv_t == 0.0:
            return int(logits.argmax())
        if not self._plain:
            if self._batch is None:
                self._batch = BatchSampler(1)
            self._batch.sample(logits.reshape(1, VOCAB), [self], self._out)
            return int(self._out[0])
        w, c = self._w, self._c
        np.multiply(logits, self._inv_t, out=w)
        # max(w) without a float64 reduction: scaling by a positive factor keeps the argmax
        np.subtract(w, w[logits.argmax()], out=w)
        np.exp(w, out=w)
        np.add.accumulate(w, out=c)
        # inverse CDF: the first byte whose cumulative mass exceeds u * total
        # (= BatchSampler's count of cumulative masses <= u * total, one draw either way)
        return min(int(c.searchsorted(self.rng.random() * c[-1], "right")), VOCAB - 1)

    # -- snapshots ---------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"sampling": self.sampling.to_dict(), "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state(cls, state: dict) -> "Sampler":
        sampler = cls(Sampling(**state["sampling"]))
        sampler.rng.bit_generator.state = state["rng"]
        return sampler


class BatchSampler:
    """Samples a batch of rows at once: each row with its own stream's parameters and generator.

    Rows sharing parameters are sampled by one vectorized pass over preallocated float64 work
    buffers; a row's result depends only on its logits and its own generator's draw (one per
    non-greedy byte), so a stream samples the same bytes alone or in any batch.
    """

    def __init__(self, max_rows: int):
        self.w = np.empty((max_rows, VOCAB), np.float64)
        self.c = np.empty((max_rows, VOCAB), np.float64)
        self.mask = np.empty((max_rows, VOCAB), bool)
        self.u = np.empty(max_rows, np.float64)

    def sample(self, logits: np.ndarray, samplers: list[Sampler], out: np.ndarray) -> None:
        """out[i] = a byte sampled from logits[i] with samplers[i]."""
        first = samplers[0].sampling
        if all(s.sampling.key == first.key for s in samplers):
            self._rows(logits, samplers, first, out)
            return
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samplers):
            groups.setdefault(s.sampling.key, []).append(i)
        for rows in groups.values():
            sub = np.empty(len(rows), np.int64)
            group = [samplers[i] for i in rows]
            self._rows(logits[rows], group, group[0].sampling, sub)
            out[rows] = sub

    def _rows(self, logits, samplers, s: Sampling, out) -> None:
        n = len(samplers)
        if s.greedy:
            np.argmax(logits, axis=1, out=out)
            return
        w, c, u = self.w[:n], self.c[:n], self.u[:n]
        np.multiply(logits, 1.0 / s.temperature, out=w)
        np.subtract(w, w.max(axis=1, keepdims=True), out=w)
        np.exp(w, out=w)
        if 0 < s.top_k < VOCAB:
            kth = np.partition(w, VOCAB - s.top_k, axis=1)[:, VOCAB - s.top_k, None]
            np.less(w, kth, out=self.mask[:n])
            np.copyto(w, 0.0, where=self.mask[:n])
        if s.top_p < 1.0:
            self._top_p(w, s.top_p)
        np.cumsum(w, axis=1, out=c)
        for i, sampler in enumerate(samplers):
            u[i] = sampler.rng.random()
        np.multiply(u, c[:, -1], out=u)
        np.less_equal(c, u[:, None], out=self.mask[:n])
        np.sum(self.mask[:n], axis=1, out=out)
        np.minimum(out, VOCAB - 1, out=out)

    def _top_p(self, w: np.ndarray, p: float) -> None:
        """Keep each row's smallest set of most likely bytes whose mass reaches p."""
        order = np.argsort(-w, axis=1, kind="stable")
        ranked = np.take_along_axis(w, order, axis=1)
        cum = np.cumsum(ranked, axis=1)
        keep = (cum < p * cum[:, -1:]).sum(axis=1, keepdims=True) + 1
        ranked[np.arange(VOCAB)[None, :] >= keep] = 0.0
        np.put_along_axis(w, order, ranked, axis=1)


class StopMatcher:
    """Holds back bytes that may begin a stop sequence; a full match ends generation unemitted."""

    def __init__(self, stop=()):
        if isinstance(stop, (bytes, str)):
            stop = [stop]
        self.stops = [s.encode() if isinstance(s, str) else bytes(s) for s in stop if s]
        self.held = b""
        self.stopped = False

    def push(self, byte: int) -> bytes:
        """Add one generated byte; return what can be emitted now (may be b"")."""
        if not self.stops:
            return bytes((byte,))
        held = self.held + bytes((byte,))
        if any(held.endswith(s) for s in self.stops):
            self.stopped, self.held = True, b""
            return held[:-max(len(s) for s in self.stops if held.endswith(s))]
        keep = max((n for s in self.stops for n in range(1, len(s)) if held.endswith(s[:n])), default=0)
        self.held = held[len(held) - keep:] if keep else b""
        return held[:len(held) - keep]

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return held
