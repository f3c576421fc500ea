"""Stream semantics: chunked prefill == byte-by-byte, sampling reproducibility, stops, snapshots."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bundle_tools import edit_manifest
from runtime_fixtures import ARCHS, bundle_dir  # noqa: F401
from edgelm.errors import EdgelmError
from edgelm.runtime import GREEDY, Sampling, Session

TEXT = ("The quick brown fox jumps over the lazy dog. Ünïcödé ✓ bytes: \x00\x01\xff. " * 4).encode()


def _max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _close(a, b, tol: float) -> bool:
    """States within tol relative (an LSTM's cell state grows to ~100s) or absolute."""
    return all(np.allclose(x, y, rtol=tol, atol=tol) for x, y in zip(a, b))


def _feed_pieces(stream, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        stream.feed(data[i:i + size])


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_equals_byte_by_byte(bundle_dir, arch):
    with Session.open(bundle_dir(arch), backend="onnxruntime") as sess:
        chunk = sess.bundle.prefill_chunk
        ref = sess.stream()
        _feed_pieces(ref, TEXT, 1)
        for size in (1, 2, 7, 64):
            s = sess.stream()
            _feed_pieces(s, TEXT, size * chunk)
            assert s.fed == ref.fed == len(TEXT)
            assert _close(s.state, ref.state, 1e-5), (arch, size, _max_diff(s.state, ref.state))
            assert np.abs(s.logits - ref.logits).max() < 1e-4
            s.close()
        whole = sess.stream(prompt=TEXT)
        assert _close(whole.state, ref.state, 1e-5)
        aligned = TEXT[: len(TEXT) // chunk * chunk]  # the last logits come from the prefill graph
        by_byte, by_chunk = sess.stream(), sess.stream(prompt=aligned)
        _feed_pieces(by_byte, aligned, 1)
        assert np.abs(by_chunk.logits - by_byte.logits).max() < 1e-4
        assert _close(by_chunk.state, by_byte.state, 1e-5)


@pytest.mark.parametrize("arch", ["lstm", "mamba"])
def test_onnxruntime_matches_torch_reference(bundle_dir, arch):
    with Session.open(bundle_dir(arch), backend="onnxruntime") as a, \
            Session.open(bundle_dir(arch), backend="torch") as b:
        x, y = a.stream(GREEDY, TEXT), b.stream(GREEDY, TEXT)
        assert _close(x.state, y.state, 1e-4)
        assert b"".join(x.generate(40)) == b"".join(y.generate(40))


def test_seeded_sampling_reproducible_and_seeds_differ(bundle_dir):
    with Session.open(bundle_dir("mamba")) as sess:
        def run(**kw):
            s = sess.stream(Sampling(**kw), prompt=b"Hello")
            out = b"".join(s.generate(64))
            s.close()
            return out
        for kw in (dict(seed=3), dict(seed=3, temperature=0.7, top_k=20), dict(seed=3, top_p=0.9)):
            assert run(**kw) == run(**kw)
            assert run(**kw) != run(**{**kw, "seed": 4})
        assert run(temperature=0.0) == run(temperature=0.0, seed=9)


def _assert_primed(sess, stream):
    """A fresh stream holds what the model computes after PRIME_BYTE from the zero state."""
    import torch

    from edgelm.checkpoint import load_model
    from edgelm.vocab import PRIME_BYTE

    model = load_model(sess.bundle.path / "model.pt")
    with torch.no_grad():
        logits, state = model.step(torch.tensor([PRIME_BYTE]), model.init_state(1))
    np.testing.assert_allclose(stream.logits, logits[0].numpy(), atol=1e-4)
    assert _close(stream.state, [t.numpy() for t in state], 1e-4)


def test_generate_length_stop_and_empty_prompt(bundle_dir):
    with Session.open(bundle_dir("lstm")) as sess:
        s = sess.stream(Sampling(seed=1))
        assert s.fed == 0
        _assert_primed(sess, s)
        out = b"".join(s.generate(50))
        assert len(out) == 50 and s.fed == 50
        full = b"".join(sess.stream(Sampling(seed=1)).generate(50))
        assert full == out
        # a stop sequence that first appears well into the output, so bytes before it pass through
        start = next(i for i in range(10, 40) if full.find(full[i:i + 2]) == i)
        stop, first = full[start:start + 2], start
        stopped = b"".join(sess.stream(Sampling(seed=1)).generate(50, stop=[stop]))
        assert first >= 10 and stopped == full[:first]
        assert b"".join(sess.stream(Sampling(seed=1)).generate(50, stop=stop)) == full[:first]  # bare bytes
        assert b"".join(s.generate(0)) == b""


def test_reset_returns_to_initial_state(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(Sampling(seed=5), prompt=b"abc")
        first = b"".join(s.generate(30))
        s.reset()
        assert s.fed == 0
        _assert_primed(sess, s)
        s.feed(b"abc")
        assert b"".join(s.generate(30)) == first


def test_snapshot_roundtrip_continues_exactly(bundle_dir):
    with Session.open(bundle_dir("mamba")) as sess:
        a = sess.stream(Sampling(seed=11, temperature=0.9), prompt=b"snapshot me")
        assert len(b"".join(a.generate(20))) == 20
        blob = a.snapshot()
        tail = b"".join(a.generate(40))
        b = sess.restore(blob)
        assert b.fed == len(b"snapshot me") + 20
        assert b"".join(b.generate(40)) == tail
        assert b"".join(a.generate(5)) and b.fed == len(b"snapshot me") + 60  # b does not move with a
    with Session.open(bundle_dir("mamba")) as other_session:  # "another process"
        assert b"".join(other_session.restore(blob).generate(40)) == tail


def test_snapshot_refused_when_foreign_or_corrupt(bundle_dir, tmp_path):
    with Session.open(bundle_dir("mamba")) as sess:
        s = sess.stream(prompt=b"x")
        blob = s.snapshot()
        before = s.state
        for bad in (blob[:-1], blob[:20], b"garbage" * 10, b"",
                    blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]):
            with pytest.raises(EdgelmError, match="snapshot"):
                s.restore(bad)
        assert _max_diff(s.state, before) == 0  # a refused restore touches nothing
        newer = bytearray(blob)
        newer[8] = 99
        with pytest.raises(EdgelmError, match="newer"):
            s.restore(bytes(newer))
    other_dir = tmp_path / "other"  # same layout, another bundle: any change gives another id
    shutil.copytree(bundle_dir("mamba"), other_dir)
    edit_manifest(other_dir, lambda m: m.update(edgelm_version="another"))
    with Session.open(other_dir) as other:
        with pytest.raises(EdgelmError, match="another bundle|not to this bundle"):
            other.restore(blob)
    with Session.open(bundle_dir("lstm")) as other_arch:
        with pytest.raises(EdgelmError, match="bundle"):
            other_arch.restore(blob)


def test_sizes_documented_and_slots_bounded(bundle_dir):
    with Session.open(bundle_dir("mamba"), max_streams=2) as sess:
        expected = sum(int(np.prod(t.shape)) * 4 for t in sess.bundle.state)
        assert sess.state_bytes_per_stream == expected == sess.bundle.state_bytes_per_stream()
        assert sess.buffer_bytes >= 2 * 3 * expected  # pool + ping-pong backend buffers
        a, b = sess.stream(), sess.stream()
        with pytest.raises(EdgelmError, match="slots"):
            sess.stream()
        a.close()
        sess.stream()
        with pytest.raises(EdgelmError, match="closed"):
            a.feed(b"x")
        del b


def test_backend_errors_are_one_line_and_name_the_package(bundle_dir):
    with pytest.raises(EdgelmError, match="tensorrt is not installed.*JetPack"):
        Session.open(bundle_dir("lstm"), backend="tensorrt")
    with pytest.raises(EdgelmError, match="CUDAExecutionProvider"):
        Session.open(bundle_dir("lstm"), backend="onnxruntime", device="cuda")
    with pytest.raises(EdgelmError, match="unknown backend"):
        Session.open(bundle_dir("lstm"), backend="tflite")


@pytest.mark.parametrize("arch", ARCHS)
def test_restored_state_and_logits_are_bit_equal(bundle_dir, arch):
    with Session.open(bundle_dir(arch)) as sess:
        a = sess.stream(Sampling(seed=2, temperature=0.9), TEXT[:50])
        b"".join(a.generate(10))
        blob = a.snapshot()
        b = sess.restore(blob)
        for got, want in zip(b.state + [b.logits], a.state + [a.logits]):
            assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
        assert b.fed == a.fed == 60
        assert b"".join(b.generate(20)) == b"".join(a.generate(20))
    with Session.open(bundle_dir(arch)) as other:
        c = other.restore(blob)
        b2 = c.snapshot()
        assert b2 == blob  # a restore then snapshot gives back the very same bytes
