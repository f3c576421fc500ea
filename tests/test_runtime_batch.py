"""Continuous batching: batched streams equal solo streams; streams join, leave and stay isolated."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_fixtures import bundle_dir  # noqa: F401
from edgelm.runtime import Sampling, Session

PROMPTS = [b"", b"Hello", b"\xff\xfe binary", b"The quick brown fox jumps over the lazy dog " * 3,
           "héllo wörld".encode(), b"a", b"0123456789" * 5, b"zz"]


def _solo(bundle, prompt: bytes, seed: int, n: int):
    with Session.open(bundle, max_streams=1) as sess:
        s = sess.stream(Sampling(seed=seed, temperature=0.8), prompt)
        return b"".join(s.generate(n)), s.state


def _assert_states_close(a, b, atol=1e-5):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=atol)  # an LSTM's cell state reaches ~100s


@pytest.mark.parametrize("arch", ["lstm", "mamba", "rglru"])
def test_batched_equals_solo_with_joins_and_leaves(bundle_dir, arch):
    bundle = bundle_dir(arch)
    lengths = [40, 25, 60, 10, 33, 1, 50, 45]
    solo = [_solo(bundle, p, seed, n) for seed, (p, n) in enumerate(zip(PROMPTS, lengths))]
    with Session.open(bundle, max_streams=8) as sess:
        sched = sess.scheduler()
        streams = [sess.stream(Sampling(seed=i, temperature=0.8), p) for i, p in enumerate(PROMPTS)]
        out = {i: b"" for i in range(8)}
        for i in range(4):  # half join now, the rest join while the batch is running
            sched.add(streams[i], lengths[i])
        steps = 0
        while sched.active or steps < 5:
            if steps == 5:
                for i in range(4, 8):
                    sched.add(streams[i], lengths[i])
            for s, data in sched.step():
                out[streams.index(s)] += data
            steps += 1
        for i, (text, state) in enumerate(solo):
            assert out[i] == text, i
            _assert_states_close(streams[i].state, state)


def test_removed_or_reset_stream_leaves_others_bit_identical(bundle_dir):
    bundle = bundle_dir("mamba")
    with Session.open(bundle, max_streams=4) as sess:
        sched = sess.scheduler()
        streams = [sess.stream(Sampling(seed=i, temperature=0.8), p) for i, p in enumerate(PROMPTS[:4])]
        for s in streams:
            sched.add(s, 30)
        for _ in range(10):
            sched.step()
        sched.remove(streams[1])
        streams[1].close()
        streams[2].reset()
        streams[2].feed(b"completely different")
        collected = {0: b"", 3: b""}
        for s, data in sched.run():
            if s in (streams[0], streams[3]):
                collected[streams.index(s)] += data
        for i in (0, 3):
            text, _ = _solo(bundle, PROMPTS[i], i, 30)
            assert text[10:] == collected[i]
    with Session.open(bundle, max_streams=4) as a, Session.open(bundle, max_streams=1) as b:
        x, y = a.stream(prompt=b"same"), b.stream(prompt=b"same")
        a.stream(prompt=b"neighbour with another prompt")
        assert all(np.array_equal(u, v) for u, v in zip(x.state, y.state))


def test_scheduler_batch_is_sliced_to_active_count(bundle_dir):
    with Session.open(bundle_dir("gru"), max_streams=8) as sess:
        sched = sess.scheduler()
        calls = []
        real = sess.backend._run
        sess.backend._run = lambda graph, batch: (calls.append(batch), real(graph, batch))[1]
        streams = [sess.stream(Sampling(seed=i)) for i in range(3)]
        for n, s in zip((1, 2, 3), streams):
            sched.add(s, n)
        list(sched.run())
        assert calls == [3, 2, 1]
