"""The samplers against a plain numpy reference written here: the exact next-byte distribution
(softmax at a temperature, then top-k, then top-p), sampled by inverse CDF in byte order with the
stream's own uniform draw. Every sampled byte must be the reference's byte for the same draw,
solo and batched, for every configuration."""

from __future__ import annotations

import numpy as np
import pytest

from edgelm.runtime import BatchSampler, Sampler, Sampling
from edgelm.runtime.sampling import SOLO_ROWS


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution Sampling(temperature, top_k, top_p) defines, in float64, from scratch."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if 0 < top_k < 256:
        kth_largest = np.sort(p)[-top_k]
        p = np.where(p >= kth_largest, p, 0.0)  # ties with the k-th are kept
        p /= p.sum()
    if top_p < 1.0:
        order = sorted(range(256), key=lambda i: (-p[i], i))  # most likely first, ties by byte
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += p[i]
            if mass >= top_p:
                break
        keep = np.zeros(256, bool)
        keep[kept] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def reference_byte(p: np.ndarray, u: float) -> int:
    """Inverse CDF in byte order: the first byte whose cumulative probability exceeds u."""
    return int(min(np.searchsorted(np.cumsum(p), u, side="right"), 255))


def _near_boundary(p: np.ndarray, u: float) -> bool:
    """u within float rounding of a CDF step: either byte is right."""
    return bool(np.min(np.abs(np.cumsum(p) - u)) < 1e-9)


CONFIGS = [dict(temperature=1.0), dict(temperature=0.7), dict(temperature=2.5), dict(temperature=0.05),
           dict(temperature=0.8, top_k=40), dict(temperature=1.0, top_k=1), dict(temperature=1.2, top_k=3),
           dict(temperature=0.9, top_p=0.9), dict(temperature=1.0, top_p=0.3),
           dict(temperature=0.8, top_k=50, top_p=0.95)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sampler_draws_the_reference_byte(cfg):
    rng = np.random.default_rng(1)
    rows = (rng.standard_normal((40, 256)) * rng.uniform(0.5, 6, (40, 1))).astype(np.float32)
    rows[3, [10, 20, 30]] = rows[3].max() + 1  # ties at the top
    checked = 0
    for seed, logits in enumerate(rows):
        s = Sampling(seed=seed, **cfg)
        solo = Sampler(s)
        draws = np.random.default_rng(seed)  # the stream's generator: one uniform per sampled byte
        p = reference_probs(logits, cfg["temperature"], cfg.get("top_k", 0), cfg.get("top_p", 1.0))
        for _ in range(25):
            got = solo.sample(logits)
            if s.greedy:
                assert got == int(logits.argmax())
                continue
            u = draws.random()
            if not _near_boundary(p, u):
                assert got == reference_byte(p, u), (seed, u)
                assert p[got] > 0
                checked += 1
    assert checked > 500 or Sampling(**cfg).greedy


@pytest.mark.parametrize("cfg", CONFIGS[:1] + CONFIGS[4:], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_batch_sampler_draws_the_reference_byte(cfg):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((16, 256)) * 3).astype(np.float32)
    mixed = [Sampling(seed=i, **(cfg if i % 2 else CONFIGS[1])) for i in range(16)]  # two groups
    samplers = [Sampler(s) for s in mixed]
    draws = [np.random.default_rng(i) for i in range(16)]
    out, batch = np.zeros(16, np.int64), BatchSampler(16)
    for _ in range(20):
        batch.sample(logits, samplers, out)
        for i, s in enumerate(mixed):
            if s.greedy:
                assert out[i] == int(logits[i].argmax())
                continue
            u = draws[i].random()
            p = reference_probs(logits[i], s.temperature, s.top_k, s.top_p)
            if not _near_boundary(p, u):
                assert out[i] == reference_byte(p, u)


def test_empirical_frequencies_follow_the_reference():
    """A second, distribution-level look: 20,000 draws against the reference probabilities."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(256) * 2).astype(np.float32)
    p = reference_probs(logits, 0.8, 20, 0.9)
    sampler = Sampler(Sampling(temperature=0.8, top_k=20, top_p=0.9, seed=7))
    counts = np.bincount([sampler.sample(logits) for _ in range(20_000)], minlength=256)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(p))
    expected = p * 20_000
    big = expected > 50
    chi2 = float((((counts - expected) ** 2)[big] / expected[big]).sum())
    assert chi2 < 3 * big.sum()  # generous: a wrong distribution gives thousands


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    """Four equally likely bytes (0.25 each) and top_p 0.5: exactly two are kept, by byte order."""
    logits = np.full(256, -1e4, np.float32)
    logits[[5, 6, 7, 8]] = 0.0
    p = reference_probs(logits, 1.0, 0, 0.5)
    assert set(np.flatnonzero(p)) == {5, 6}
    solo = Sampler(Sampling(temperature=1.0, top_p=0.5, seed=0))
    assert {solo.sample(logits) for _ in range(200)} == {5, 6}
    out, rows = np.zeros(3, np.int64), np.stack([logits] * 3)
    got = set()
    samplers = [Sampler(Sampling(temperature=1.0, top_p=0.5, seed=i)) for i in range(3)]
    for _ in range(100):
        BatchSampler(3).sample(rows, samplers, out)
        got |= set(out.tolist())
    assert got == {5, 6}


def test_a_group_of_one_in_a_mixed_batch():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((3, 256)) * 2).astype(np.float32)
    mixed = [Sampling(temperature=0.7, seed=0), Sampling(temperature=0.7, seed=1), Sampling(temperature=1.3, seed=2)]
    samplers, solo = [Sampler(s) for s in mixed], [Sampler(s) for s in mixed]
    out = np.zeros(3, np.int64)
    for _ in range(30):
        BatchSampler(3).sample(logits, samplers, out)
        assert out.tolist() == [s.sample(row) for s, row in zip(solo, logits)]


@pytest.mark.parametrize("kw,name", [(dict(top_k=257), "top_k"), (dict(top_k=-1), "top_k"),
                                     (dict(top_p=1.5), "top_p"), (dict(top_p=0.0), "top_p"),
                                     (dict(temperature=2e6), "temperature"), (dict(temperature=-0.1), "temperature"),
                                     (dict(seed=-1), "seed"), (dict(seed="1"), "seed")])
def test_sampling_ranges_name_the_parameter(kw, name):
    from edgelm.errors import ArgumentError

    with pytest.raises(ArgumentError, match=f"^{name} .*must be"):
        Sampling(**kw)
    assert Sampling(top_k=256, top_p=1.0, temperature=0.0, seed=0).greedy


def test_sampler_state_errors_say_what_is_wrong():
    from edgelm.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"^sampler state is invalid \(.*seed"):
        Sampler.from_state({"sampling": {"seed": "x"}, "rng": {}})
    with pytest.raises(ArgumentError, match=r"^sampler state is invalid \('rng'\)"):
        Sampler.from_state({"sampling": {}})


class _FixedUniform:
    """A generator whose every draw is u: puts a draw exactly on a cumulative-mass boundary."""

    def __init__(self, u: float):
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_a_draw_on_a_boundary_takes_the_next_byte(temperature):
    """Two equal maxima and nothing else: cumulative masses [1, 2, 2, ...]; u = 0.5 lands exactly
    on the first byte's upper edge, which belongs to the next byte (inverse CDF: the first byte
    whose cumulative mass exceeds u * total), solo and batched alike."""
    logits = np.full(256, -1e4, np.float32)
    logits[[65, 66]] = 3.0
    assert reference_byte(reference_probs(logits.astype(np.float64), temperature, 0, 1.0), 0.5) == 66
    solo = Sampler(Sampling(temperature=temperature, seed=0))
    solo.rng = _FixedUniform(0.5)
    assert solo.sample(logits) == 66
    batch = Sampler(Sampling(temperature=temperature, seed=0))
    batch.rng = _FixedUniform(0.5)
    out = np.zeros(1, np.int64)
    BatchSampler(1).sample_vectorised(logits[None], [batch], out)
    assert out[0] == 66
    solo.rng = _FixedUniform(0.0)  # the lowest draw takes the first byte with mass
    assert solo.sample(logits) == 65


@pytest.mark.parametrize("cfg", CONFIGS[4:] + [dict(temperature=1e-300, top_p=0.2), dict(temperature=5.0, top_p=0.999),
                                 dict(temperature=0.8, top_k=5, top_p=0.9999), dict(temperature=3.0, top_k=200, top_p=0.5)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_the_solo_fast_path_draws_the_batch_paths_byte_exactly(cfg):
    """Sampler's one-row top-k/top-p (value sorts; top-p over the top k only) against BatchSampler's (argsort) on
    logits full of ties: the same byte for every draw, boundaries included (a stream's bytes do
    not depend on whether it runs alone or batched)."""
    rng = np.random.default_rng(3)
    solo, batched = Sampler(Sampling(seed=5, **cfg)), Sampler(Sampling(seed=5, **cfg))
    batch, out = BatchSampler(1), np.zeros(1, np.int64)
    for i in range(1500):
        logits = (rng.standard_normal(256) * rng.uniform(0.1, 8)).astype(np.float32)
        if i % 3 == 0:
            logits = np.round(logits)  # many exact ties, at the k-th value and the top-p cut alike
        if i % 5 == 0:
            logits[rng.integers(0, 256, 6)] = logits.max()
        batch.sample_vectorised(logits[None], [batched], out)
        assert solo.sample(logits) == out[0], i


def test_small_batches_sample_through_each_rows_solo_path():
    """BatchSampler.sample takes each row's Sampler.sample up to SOLO_ROWS rows and the vectorised
    pass above: both give every stream the bytes it gets alone."""
    rng = np.random.default_rng(11)
    for rows in (1, SOLO_ROWS, SOLO_ROWS + 1):
        cfgs = [dict(temperature=0.9, top_k=20, top_p=0.9, seed=i) for i in range(rows)]
        batched, alone = [Sampler(Sampling(**c)) for c in cfgs], [Sampler(Sampling(**c)) for c in cfgs]
        batch, out = BatchSampler(rows), np.zeros(rows, np.int64)
        for _ in range(200):
            logits = (rng.standard_normal((rows, 256)) * 3).astype(np.float32)
            batch.sample(logits, batched, out)
            assert out.tolist() == [s.sample(row) for s, row in zip(alone, logits)]
