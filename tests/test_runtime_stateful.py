"""A stateful property test of one Session (hypothesis RuleBasedStateMachine).

Random interleavings of open, feed, generate, snapshot, restore, reset, close, scheduler add /
step / remove and closing the session, over up to 8 streams. After every step each live stream's
state, logits and byte count must equal those of its reference: a solo stream run byte by byte
through the bundle's step graph in a plain onnxruntime.InferenceSession with its own state arrays
(no Session, no pool, no batching), advanced incrementally with exactly the bytes the stream
consumed. A state leak between streams, a lost or stale slot, a wrong snapshot or a scheduler that
steps a dead stream shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from edgelm.errors import EdgelmError
from edgelm.export import export_bundle
from edgelm.runtime import Sampling, Session, load_bundle
from edgelm.vocab import PRIME_BYTE

MAX_STREAMS = 8
ATOL = 1e-4  # prefill chunks vs byte-by-byte stepping differ by float rounding (~1e-6 measured)


class RefStream:
    """The solo reference: byte-by-byte steps of step.onnx with explicit state arrays."""

    def __init__(self, graph: ort.InferenceSession, state_io, state=None, logits=None, fed=0):
        self.graph, self.io = graph, state_io
        if state is None:
            zeros = [np.zeros((1, *shape), np.float32) for _, _, shape in state_io]
            state, logits = self._step(zeros, PRIME_BYTE)
        self.state, self.logits, self.fed = state, logits, fed

    def _step(self, state, byte: int):
        feeds = {"byte_ids": np.array([byte], np.int64), **{i: s for (i, _, _), s in zip(self.io, state)}}
        out = self.graph.run(None, feeds)
        return out[1:], out[0][0]

    def feed(self, data: bytes) -> None:
        for byte in data:
            self.state, self.logits = self._step(self.state, byte)
        self.fed += len(data)

    def copy(self) -> "RefStream":
        return RefStream(self.graph, self.io, [s.copy() for s in self.state], self.logits.copy(), self.fed)


class SessionMachine(RuleBasedStateMachine):
    BUNDLE: Path
    GRAPH: ort.InferenceSession
    STATE_IO: list

    def __init__(self):
        super().__init__()
        self.sess = Session.open(self.BUNDLE, max_streams=MAX_STREAMS)
        self.sched = self.sess.scheduler()
        self.live: list = []  # [stream, RefStream]
        self.jobs: dict[int, int] = {}  # id(stream) -> bytes its scheduler job has left
        self.snaps: list = []  # (blob, RefStream copy)
        self.closed = False

    def fresh(self) -> RefStream:
        return RefStream(self.GRAPH, self.STATE_IO)

    def teardown(self):
        self.sess.close()

    def pick(self, i: int):
        return self.live[i % len(self.live)]

    # -- streams ----------------------------------------------------------------------------
    @precondition(lambda self: not self.closed)
    @rule(prompt=st.binary(max_size=40), seed=st.integers(0, 3))
    def open_stream(self, prompt, seed):
        if len(self.live) == MAX_STREAMS:
            with pytest.raises(EdgelmError, match="slots are in use"):
                self.sess.stream(Sampling(seed=seed, temperature=0.9), prompt)
            return
        ref = self.fresh()
        ref.feed(prompt)
        self.live.append([self.sess.stream(Sampling(seed=seed, temperature=0.9), prompt), ref])

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7), data=st.binary(max_size=40))
    def feed(self, i, data):
        stream, ref = self.pick(i)
        stream.feed(data)
        ref.feed(data)

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7), n=st.integers(0, 12))
    def generate(self, i, n):
        stream, ref = self.pick(i)
        out = b"".join(stream.generate(n))
        assert len(out) == n
        ref.feed(out)

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7))
    def snapshot(self, i):
        stream, ref = self.pick(i)
        self.snaps.append((stream.snapshot(), ref.copy()))

    @precondition(lambda self: self.snaps and len(self.live) < MAX_STREAMS and not self.closed)
    @rule(j=st.integers(0, 20))
    def restore(self, j):
        blob, ref = self.snaps[j % len(self.snaps)]
        self.live.append([self.sess.restore(blob), ref.copy()])

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7))
    def reset(self, i):
        pair = self.pick(i)
        pair[0].reset()
        pair[1] = self.fresh()

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7))
    def close_stream(self, i):
        stream, _ = pair = self.pick(i)
        stream.close()
        self.live.remove(pair)
        self.jobs.pop(id(stream), None)

    # -- the scheduler ------------------------------------------------------------------------
    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7), n=st.integers(1, 10))
    def schedule(self, i, n):
        stream, _ = self.pick(i)
        if id(stream) in self.jobs:
            with pytest.raises(EdgelmError, match="already scheduled"):
                self.sched.add(stream, n)
            return
        self.sched.add(stream, n)
        self.jobs[id(stream)] = n

    @precondition(lambda self: self.live and not self.closed)
    @rule(i=st.integers(0, 7))
    def unschedule(self, i):
        stream, _ = self.pick(i)
        self.sched.remove(stream)
        self.jobs.pop(id(stream), None)

    @precondition(lambda self: not self.closed)
    @rule(steps=st.integers(1, 6))
    def step(self, steps):
        refs = {id(s): r for s, r in self.live}
        for _ in range(steps):
            for stream, data in self.sched.step():
                assert len(data) == 1
                refs[id(stream)].feed(data)
                self.jobs[id(stream)] -= 1
                if self.jobs[id(stream)] == 0:
                    del self.jobs[id(stream)]

    # -- the session --------------------------------------------------------------------------
    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 9))
    def close_session(self, dice):
        if dice:  # rarely: most runs should exercise a live session for their whole length
            return
        self.sess.close()
        self.closed = True
        for stream, _ in self.live:
            with pytest.raises(EdgelmError, match="session is closed"):
                stream.feed(b"x")
        with pytest.raises(EdgelmError, match="session is closed"):
            self.sess.stream()
        with pytest.raises(EdgelmError, match="session is closed"):
            self.sched.step()

    @precondition(lambda self: self.closed)
    @rule(i=st.integers(0, 7))
    def use_after_close(self, i):
        with pytest.raises(EdgelmError, match="session is closed"):
            self.sess.restore(self.snaps[i % len(self.snaps)][0]) if self.snaps else self.sess.scheduler()
        if self.live:
            stream, _ = pair = self.pick(i)
            with pytest.raises(EdgelmError, match="session is closed"):
                next(stream.generate(1))
            stream.close()  # closing what is left stays harmless
            self.live.remove(pair)
            self.jobs.pop(id(stream), None)

    @invariant()
    def every_stream_matches_its_solo_reference(self):
        assert self.sched.active == len(self.jobs)
        if self.closed:
            return
        for stream, ref in self.live:
            assert stream.fed == ref.fed
            np.testing.assert_allclose(stream.logits, ref.logits, atol=ATOL, rtol=0)
            for got, want in zip(stream.state, ref.state):
                np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def trained_lstm(tmp_path_factory):
    """The committed trained LSTM: its outputs depend on the state (a random-init model's barely do)."""
    out = tmp_path_factory.mktemp("stateful") / "lstm"
    export_bundle(Path(__file__).resolve().parents[1] / "models" / "lstm-tiny.pt", "cpu", None, out, chunk=8)
    return out


def test_session_state_machine(trained_lstm):
    bundle = load_bundle(trained_lstm)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    SessionMachine.BUNDLE = trained_lstm
    SessionMachine.GRAPH = ort.InferenceSession(str(trained_lstm / "step.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
    SessionMachine.STATE_IO = [(s.input, s.output, s.shape) for s in bundle.state]
    run_state_machine_as_test(SessionMachine, settings=settings(
        max_examples=200, stateful_step_count=25, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
