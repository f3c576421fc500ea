"""Next-byte sampling: greedy, temperature, top-k, top-p; seeded, reproducible, per stream.

Every stream owns a `Sampler` with its own numpy Generator (PCG64), so a stream's bytes depend
only on its seed and its logits, never on which other streams share its batch. One uniform draw
per sampled byte (none for greedy), used as an inverse-CDF draw on the cumulative softmax; the
generator's state travels in snapshots. The softmax is computed as exp((logit - max) / T) in
float64, which is exact for every temperature T > 0: a tiny T cannot overflow (the exponent is
<= 0, and 0 for the most likely byte), it only concentrates the mass on the maximum. Work buffers are allocated once (`Sampler` keeps one
row's for the batch-1 fast path, `BatchSampler` a batch's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ArgumentError
from ..vocab import VOCAB
from .arguments import as_bytes, as_int, as_real

MAX_TEMPERATURE = 1e6
# Below this, (logit - max) / T can exceed the float64 range: it is then -inf, exp() gives the
# exact 0, and the overflow is expected, not a warning.
TINY_TEMPERATURE = 1e-250


def _exp_scaled(w: np.ndarray, temperature: float) -> None:
    """w <- exp(w / T) in place, for w = logits - max (<= 0): float64, exact for any T > 0."""
    if temperature < TINY_TEMPERATURE:
        with np.errstate(over="ignore"):
            np.divide(w, temperature, out=w)
    else:
        np.divide(w, temperature, out=w)
    np.exp(w, out=w)


def _top_k_row(w: np.ndarray, k: int, work: np.ndarray, mask: np.ndarray) -> None:
    """Zero every weight below the k-th largest (ties with it stay), as BatchSampler does."""
    np.copyto(work, w)
    work.sort()  # a full sort of 256 floats: faster than partition() here (measured, numpy 2.4)
    np.less(w, work[VOCAB - k], out=mask)
    np.copyto(w, 0.0, where=mask)


def _top_p_row(w: np.ndarray, p: float, work: np.ndarray, cum: np.ndarray, mask: np.ndarray) -> None:
    """BatchSampler._top_p for one row without an argsort: the cumulative mass is summed over the
    values in descending order (equal values are interchangeable), and of the bytes tied at the
    last kept value the lowest-numbered are kept, which is what the stable argsort keeps."""
    np.copyto(work, w)
    work.sort()
    desc = work[::-1]
    np.add.accumulate(desc, out=cum)
    keep = int(cum.searchsorted(p * cum[-1], "left")) + 1  # = count(cum < p * total) + 1
    if keep < VOCAB:
        _cut(w, desc, keep, mask)


def _top_k_then_p(w: np.ndarray, k: int, p: float, work: np.ndarray, cum: np.ndarray, mask: np.ndarray) -> None:
    """top-k, then top-p over the k kept weights only: the others are zeros, which add nothing to
    the descending cumulative mass (x + 0.0 == x), so the cut is the one the full sort finds, and
    a cut inside the top k zeroes everything top-k would. A tie at the k-th value (more than k
    kept) takes the general path."""
    np.copyto(work, w)
    work.sort()  # work[VOCAB - k:]: the k largest, ascending
    if k < VOCAB and work[VOCAB - k - 1] == work[VOCAB - k]:
        _top_k_row(w, k, work, mask)
        _top_p_row(w, p, work, cum, mask)
        return
    desc, c = work[VOCAB - k:][::-1], cum[:k]
    np.add.accumulate(desc, out=c)
    keep = int(c.searchsorted(p * c[-1], "left")) + 1  # <= k: c[-1] is the whole mass
    if keep < k:
        _cut(w, desc, keep, mask)
    else:  # all k stay: the top-k cut alone
        np.less(w, desc[-1], out=mask)
        np.copyto(w, 0.0, where=mask)


def _cut(w: np.ndarray, desc: np.ndarray, keep: int, mask: np.ndarray) -> None:
    """Keep the `keep` largest weights (desc: the weights sorted, largest first): zero those below
    the cut value v; of those equal to it, keep the lowest-numbered (what the batch path's stable
    argsort keeps). v's sorted neighbours tell whether anything ties with it."""
    v = desc[keep - 1]
    np.less(w, v, out=mask)
    np.copyto(w, 0.0, where=mask)
    if desc[keep] != v and (keep == 1 or desc[keep - 2] != v):
        return  # v is unique: exactly `keep` weights are >= v
    below = int(np.count_nonzero(mask))
    np.equal(w, v, out=mask)  # the bytes tied at the cut, in the same buffer
    tied = int(np.count_nonzero(mask))
    keep_ties = keep - (VOCAB - below - tied)  # minus the bytes above v
    if keep_ties < tied:  # rare: more ties than places; the lowest-numbered stay
        w[np.flatnonzero(mask)[keep_ties:]] = 0.0


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off; seed None = fresh entropy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        as_real(self.temperature, "temperature (0 = greedy)", 0.0, MAX_TEMPERATURE)
        as_int(self.top_k, "top_k (0 = off)", 0, VOCAB)
        as_real(self.top_p, "top_p (1 = off)", 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            as_int(self.seed, "seed", 0)

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
        self.key = sampling.key  # computed once: a batch compares every row's key every step
        self.rng = np.random.default_rng(sampling.seed)
        self._t = float(sampling.temperature)
        self._plain = sampling.top_k in (0, VOCAB) and sampling.top_p >= 1.0
        self._w = np.empty(VOCAB, np.float64)  # work buffers of the one-row fast path
        self._c = np.empty(VOCAB, np.float64)
        self._sorted = np.empty(VOCAB, np.float64)
        self._mask = np.empty(VOCAB, bool)

    def sample(self, logits: np.ndarray) -> int:
        """Sample one byte from a (256,) logits row (float32), bit-identical to a batch of one.

        A one-row fast path over preallocated buffers: top-k and top-p by a sort of the values (no
        argsort; top-p after top-k over the k kept only): the same float64 results as the batch path.
        """
        if self.sampling.greedy:
            return int(logits.argmax())
        w, c = self._w, self._c
        np.subtract(logits, logits[logits.argmax()], out=w, dtype=np.float64)  # <= 0, 0 at the maximum
        _exp_scaled(w, self._t)
        if not self._plain:
            s, top_k = self.sampling, 0 < self.sampling.top_k < VOCAB
            if top_k and s.top_p < 1.0:
                _top_k_then_p(w, s.top_k, s.top_p, self._sorted, c, self._mask)
            elif top_k:
                _top_k_row(w, s.top_k, self._sorted, self._mask)
            elif s.top_p < 1.0:
                _top_p_row(w, s.top_p, self._sorted, c, self._mask)
        np.add.accumulate(w, out=c)
        # inverse CDF: the first byte whose cumulative mass exceeds u * total
        # (= BatchSampler's count of cumulative masses <= u * total, one draw either way)
        return min(int(c.searchsorted(self.rng.random() * c[-1], "right")), VOCAB - 1)

    # -- snapshots ---------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"sampling": self.sampling.to_dict(), "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state(cls, state) -> "Sampler":
        """A sampler from get_state()'s dict; ArgumentError if it is not one."""
        try:
            sampler = cls(Sampling(**state["sampling"]))
            sampler.rng.bit_generator.state = state["rng"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArgumentError(f"sampler state is invalid ({str(exc)[:80]})") from None
        return sampler


SOLO_ROWS = 2  # up to this many rows, Sampler.sample per row beats one vectorised pass (measured:
# a batch of one costs 15-45 µs vectorised, 5-11 µs solo; bench/sampling_bench.py)


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
        if len(samplers) <= SOLO_ROWS:  # each row through its own fast path: the same bytes, cheaper
            for i, s in enumerate(samplers):
                out[i] = s.sample(logits[i])
            return
        self.sample_vectorised(logits, samplers, out)

    def sample_vectorised(self, logits: np.ndarray, samplers: list[Sampler], out: np.ndarray) -> None:
        """`sample` as one vectorised pass per group of equal parameters, whatever the batch size."""
        first = samplers[0].sampling
        if all(s.key == first.key for s in samplers):
            self._rows(logits, samplers, first, out)
            return
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samplers):
            groups.setdefault(s.key, []).append(i)
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
        np.copyto(w, logits)
        np.subtract(w, w.max(axis=1, keepdims=True), out=w)  # <= 0, and 0 at each row's maximum
        _exp_scaled(w, s.temperature)
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
        if isinstance(stop, (bytes, bytearray, str, memoryview)):
            stop = [stop]
        if not isinstance(stop, (list, tuple)):
            raise ArgumentError(f"stop must be bytes, str or a list of them, not {type(stop).__name__}")
        self.stops = [s for s in (as_bytes(x, "each stop sequence") for x in stop) if s]
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
