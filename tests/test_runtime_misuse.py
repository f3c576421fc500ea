"""The runtime API under misuse: stream lifecycle, closed sessions, threads, odd inputs, hand-made
snapshots, tiny temperatures. Each case here broke a promise before (a traceback, silently wrong
bytes, or state leaking between streams)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import bundle_dir  # noqa: F401
from edgelm.errors import ArgumentError, EdgelmError
from edgelm.runtime import GREEDY, BatchSampler, Sampler, Sampling, Session

TEXT = b"The quick brown fox jumps over the lazy dog. "


def _solo(bundle, prompt: bytes, n: int, sampling=GREEDY) -> bytes:
    with Session.open(bundle, max_streams=1) as sess:
        return b"".join(sess.stream(sampling, prompt).generate(n))


# -- lifecycle ------------------------------------------------------------------------------
def test_closing_a_scheduled_stream_takes_it_out_of_the_scheduler(bundle_dir):
    b = bundle_dir("lstm")
    with Session.open(b, max_streams=2) as sess:
        sched = sess.scheduler()
        dead = sess.stream(GREEDY, b"dead ")
        sched.add(dead, 50)
        sched.step()
        dead.close()
        assert sched.active == 0
        new = sess.stream(GREEDY, TEXT)  # gets the dead stream's slot
        sched.add(new, 30)
        out = b"".join(data for _, data in sched.run())
    assert out == _solo(b, TEXT, 30)


def test_a_failed_stream_gives_its_slot_back(bundle_dir):
    with Session.open(bundle_dir("lstm"), max_streams=2) as sess:
        prompt = "^prompt must be bytes, bytearray, memoryview or str, not "
        for bad, message in ((dict(prompt=3.5), prompt + "float$"), (dict(prompt=123), prompt + "int$"),
                             (dict(prompt=[1, 2]), prompt + "list$"), (dict(prompt=np.array([1000, 2])), prompt + "ndarray$"),
                             (dict(sampling="greedy"), "^sampling must be a Sampling or None, not str$")):
            with pytest.raises(ArgumentError, match=message):
                sess.stream(**bad)
        with pytest.raises(ArgumentError, match="seed"):
            sess.stream(Sampling(seed=1.5))
        a = sess.stream()
        real = sess.backend.run_resident

        def fails_once(ids):  # a backend failure while the prompt is fed
            sess.backend.run_resident = real
            raise RuntimeError("device lost")
        sess.backend.run_resident = fails_once
        with pytest.raises(RuntimeError, match="device lost"):
            sess.stream(prompt=b"x" * 40)
        b = sess.stream(prompt=b"x" * 40)
        assert {a.slot, b.slot} == {0, 1} and b.fed == 40


def test_a_closed_session_refuses_everything(bundle_dir):
    sess = Session.open(bundle_dir("gru"))
    s = sess.stream(GREEDY, b"abc")
    blob = s.snapshot()
    running = s.generate(100)
    next(running)
    sched = sess.scheduler()
    sched.add(sess.stream(GREEDY), 5)
    sess.close()
    if sess.backend.name == "onnxruntime":
        assert sess.backend.sessions == {}  # the ONNX Runtime sessions are freed
    else:  # the native library is unloaded and its memory file closed
        assert sess.backend._lib is None and sess.backend._fd is None
    for call in (lambda: s.feed(b"x"), lambda: next(s.generate(3)), s.snapshot, lambda: sess.stream(),
                 lambda: sess.restore(blob), lambda: s.reset(), lambda: next(running), sched.step,
                 sess.scheduler, lambda: s.state):
        with pytest.raises(EdgelmError, match=r"^this session is closed; open a new one with Session\.open$"):
            call()
    s.close()  # closing what is left stays harmless
    sess.close()


CLOSED_STREAM = r"^this stream is closed; open a new one with session\.stream\(\)$"


def test_closed_stream_is_refused(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream()
        s.close()
        s.close()
        for call in (lambda: s.feed(b"x"), lambda: next(s.generate(1)), s.snapshot, lambda: s.fed,
                     lambda: s.state, lambda: s.logits, lambda: s.reset(), lambda: s.restore(b"")):
            with pytest.raises(EdgelmError, match=CLOSED_STREAM):
                call()
        with pytest.raises(EdgelmError, match=CLOSED_STREAM):
            sess.scheduler().add(s, 3)


# -- threads --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["lstm", "mamba"])
def test_threads_sharing_a_session_each_get_their_solo_bytes(bundle_dir, arch):
    """The contract: a Session may be shared; each thread owns its stream."""
    b = bundle_dir(arch)
    prompts = [TEXT[i:] for i in range(4)]
    samplings = [Sampling(seed=i, temperature=0.8) for i in range(4)]
    want = [_solo(b, p, 120, s) for p, s in zip(prompts, samplings)]
    got: list = [None] * 4
    with Session.open(b, max_streams=4) as sess:
        start = threading.Barrier(4)

        def work(i):
            start.wait()
            stream = sess.stream(samplings[i], prompts[i])
            got[i] = b"".join(stream.generate(120))
            stream.feed(b"more")  # interleaved prefill too
            stream.close()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == want


def test_a_scheduler_and_a_stream_in_two_threads(bundle_dir):
    b = bundle_dir("lstm")
    want_batch = [_solo(b, TEXT[i:], 80, Sampling(seed=i, temperature=0.9)) for i in range(3)]
    want_alone = _solo(b, b"alone ", 200)
    with Session.open(b, max_streams=4) as sess:
        sched = sess.scheduler()
        streams = [sess.stream(Sampling(seed=i, temperature=0.9), TEXT[i:]) for i in range(3)]
        for s in streams:
            sched.add(s, 80)
        out = {id(s): b"" for s in streams}
        alone: list = []
        t = threading.Thread(target=lambda: alone.append(b"".join(sess.stream(GREEDY, b"alone ").generate(200))))
        t.start()
        for s, data in sched.run():
            out[id(s)] += data
        t.join()
    assert [out[id(s)] for s in streams] == want_batch and alone == [want_alone]


# -- inputs ---------------------------------------------------------------------------------
def test_only_bytes_and_text_are_fed(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream()
        for bad in (5, np.array([1000, 2]), None, [104, 105], 3.5, memoryview(np.array([1, 2], np.int64))):
            with pytest.raises(ArgumentError, match="data must be bytes, bytearray, memoryview or str"):
                s.feed(bad)
        assert s.fed == 0
        states = []
        for good in (b"hi\xff", bytearray(b"hi\xff"), memoryview(b"hi\xff"), "hi\udcff"):
            t = sess.stream()
            t.feed(good)
            assert t.fed == 3
            states.append(t.state)
            t.close()
        assert all(np.array_equal(x, y) for st in states[1:] for x, y in zip(st, states[0]))


@pytest.mark.parametrize("call,name", [
    (lambda s: next(s.generate("5")), "max_bytes"),
    (lambda s: next(s.generate(1.5)), "max_bytes"),
    (lambda s: next(s.generate(-1)), "max_bytes"),
    (lambda s: next(s.generate(3, stop=5)), "stop"),
    (lambda s: next(s.generate(3, sampling="x")), "sampling"),
    (lambda s: s.reset(sampling=0.5), "sampling"),
    (lambda s: s.session.scheduler().add("stream", 3), "stream"),
    (lambda s: s.session.scheduler().add(s, None), "max_bytes"),
    (lambda s: Sampling(temperature="hot"), "temperature"),
    (lambda s: Sampling(temperature=float("nan")), "temperature"),
    (lambda s: Sampling(top_k=2.0), "top_k"),
    (lambda s: Sampling(top_k=True), "top_k"),
    (lambda s: Sampling(top_p=0), "top_p"),
    (lambda s: Sampling(seed=-1), "seed"),
])
def test_wrong_arguments_name_the_argument(bundle_dir, call, name):
    with Session.open(bundle_dir("gru")) as sess:
        with pytest.raises(ArgumentError, match=f"^{name}") as exc:
            call(sess.stream())
        assert isinstance(exc.value, TypeError) and isinstance(exc.value, ValueError)


@pytest.mark.parametrize("kw,message", [
    (dict(max_streams="2"), "max_streams must be an integer, not str '2'"),
    (dict(max_streams=0), "max_streams must be in 1..65536, got 0"),
    (dict(max_streams=65537), "max_streams must be in 1..65536, got 65537"),
    (dict(backend=3), "backend must be a str, not int"), (dict(backend=None), "backend must be a str, not NoneType"),
    (dict(device=1), "device must be a str or None, not int")])
def test_session_open_arguments(bundle_dir, kw, message):
    with pytest.raises(ArgumentError, match=f"^{re.escape(message)}$"):
        Session.open(bundle_dir("gru"), **kw)


def test_session_open_passes_the_trusted_keys_on(bundle_dir, tmp_path):
    pytest.importorskip("cryptography")
    from edgelm.runtime.signing import keygen

    _, pub = keygen(tmp_path / "k")
    b = bundle_dir("gru")
    with pytest.raises(EdgelmError, match=f"^bundle {re.escape(str(Path(b).resolve()))} is not signed"):
        Session.open(b, trusted_keys=[pub])


# -- hand-made snapshots with a valid checksum ---------------------------------------------------
def _forge(blob: bytes, header=None, payload=None) -> bytes:
    """A snapshot with another header or payload and a valid checksum (as a hand-made one would be)."""
    magic, version, hlen = struct.unpack("<8sHI", blob[:14])
    old_header, body = blob[14:14 + hlen], blob[14 + hlen:-32]
    head = json.dumps(header).encode() if header is not None else old_header
    out = struct.pack("<8sHI", magic, version, len(head)) + head + (payload if payload is not None else body)
    return out + hashlib.sha256(out).digest()


def test_hand_made_snapshots_are_refused(bundle_dir):
    with Session.open(bundle_dir("mamba")) as sess:
        s = sess.stream(Sampling(seed=1), b"snap")
        blob, before = s.snapshot(), s.state
        hlen = struct.unpack("<I", blob[10:14])[0]
        header, payload_len = json.loads(blob[14:14 + hlen]), len(blob) - 14 - hlen - 32
        malformed = r"^snapshot header is malformed \(not the fields edgelm writes\); it cannot be restored$"
        nonfinite = r"^snapshot holds NaN or infinite state or logits; it cannot be restored$"
        cases = [(_forge(blob, header=[1, 2]), malformed),
                 (_forge(blob, header={**header, "fed": "abc"}), r"^snapshot header field fed must be a byte count, not 'abc'$"),
                 (_forge(blob, header={**header, "fed": -1}), r"^snapshot header field fed must be a byte count, not '-1'$"),
                 (_forge(blob, header={**header, "sampler": {"sampling": {"seed": "x"}}}),
                  r"^snapshot sampler state is invalid \(seed must be an integer.*; it cannot be restored$"),
                 (_forge(blob, header={**header, "sampler": 5}),
                  r"^snapshot header field sampler is malformed; it cannot be restored$"),
                 (_forge(blob, header={**header, "extra": 1}), malformed),
                 (_forge(blob, header={**header, "state": []}),
                  r"^snapshot state layout does not match this bundle's; it cannot be restored$"),
                 (_forge(blob, payload=b"\0" * 8), r"^snapshot payload has the wrong size; it cannot be restored$"),
                 (_forge(blob, payload=np.full(payload_len // 4, np.nan, "<f4").tobytes()), nonfinite),
                 (_forge(blob, payload=np.full(payload_len // 4, np.inf, "<f4").tobytes()), nonfinite)]
        assert len(_forge(blob)) == len(blob) and _forge(blob) == blob
        for bad, match in cases:
            with pytest.raises(EdgelmError, match=match):
                s.restore(bad)
            with pytest.raises(EdgelmError, match=match):
                sess.restore(bad)
        assert all(np.array_equal(x, y) for x, y in zip(s.state, before))
        assert len(sess._free) == sess.max_streams - 1  # failed restores kept no slot


# -- sampling at any temperature ----------------------------------------------------------------
@pytest.mark.parametrize("t", [1e-38, 1e-300, 5e-324, 1e-7])
def test_tiny_temperatures_sample_the_maximum_exactly(t):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 256)).astype(np.float32) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no invalid value
        for row in logits:
            assert Sampler(Sampling(temperature=t, seed=1)).sample(row) == int(row.argmax())
        out = np.zeros(5, np.int64)
        BatchSampler(5).sample(logits, [Sampler(Sampling(temperature=t, seed=i)) for i in range(5)], out)
        assert out.tolist() == logits.argmax(axis=1).tolist()
        ties = np.zeros(256, np.float32)
        ties[[3, 200]] = 1.0  # two maxima: the exact limit is a fair coin between them
        picks = {Sampler(Sampling(temperature=t, seed=i)).sample(ties) for i in range(40)}
        assert picks == {3, 200}


def test_huge_logits_at_low_temperature(bundle_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = np.array([3e38, -3e38] + [0.0] * 254, np.float32)
        assert Sampler(Sampling(temperature=1e-3, seed=0)).sample(row) == 0
        with Session.open(bundle_dir("lstm")) as sess:
            tiny = b"".join(sess.stream(Sampling(temperature=1e-38, seed=3), TEXT).generate(60))
            greedy = b"".join(sess.stream(GREEDY, TEXT).generate(60))
    assert tiny == greedy


def test_cli_tiny_temperature_is_the_greedy_output(bundle_dir, capsys):
    from bundle_tools import cli

    b = bundle_dir("lstm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = cli(capsys, "run", b, "--prompt", "def ", "--max-bytes", 60, "--seed", 1, "--temperature", "1e-38")
        greedy = cli(capsys, "run", b, "--prompt", "def ", "--max-bytes", 60, "--temperature", "0")
    assert tiny[0] == greedy[0] == 0 and tiny[2] == "" and tiny[1] == greedy[1] and "\ufffd" not in tiny[1][:5]
