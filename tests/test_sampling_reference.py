"""The samplers against a plain numpy reference written here: the exact next-byte distribution
(softmax at a temperature, then top-k, then top-p), sampled by inverse CDF in byte order with the
stream's own uniform draw. Every sampled byte must be the reference's byte for the same draw,
solo and batched, for every configuration."""

from __future__ import annotations

import numpy as np
import pytest

from edgelm.runtime import BatchSampler, Sampler, Sampling


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
