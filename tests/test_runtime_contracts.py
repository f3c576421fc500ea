"""The runtime's documented numbers and messages, exactly: buffer sizes, byte counts, the
snapshot layout, the scheduler's bookkeeping and the errors a caller sees."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import numpy as np
import pytest

from runtime_fixtures import bundle_dir  # noqa: F401
from edgelm.errors import ArgumentError, EdgelmError
from edgelm.runtime import GREEDY, Sampling, Session
from edgelm.runtime.snapshot import MAGIC, SNAPSHOT_VERSION


def test_sizes_are_what_the_docs_say(bundle_dir):
    with Session.open(bundle_dir("gru"), max_streams=3, backend="onnxruntime") as sess:
        state = sum(int(np.prod(s.shape)) for s in sess.bundle.state) * 4
        chunk = sess.bundle.prefill_chunk
        assert sess.state_bytes_per_stream == state
        pool = 3 * state + 3 * 256 * 4  # state pool + logits pool
        backend = 2 * 3 * state + 3 * 8 + 3 * chunk * 8 + 3 * 256 * 4  # ping-pong state, ids, ids, logits
        assert sess.buffer_bytes == pool + backend
        assert sess.describe().startswith("onnxruntime ") and sess.describe().endswith("(CPUExecutionProvider)")


def test_native_sizes_add_only_its_scratch(bundle_dir):
    """The native backend holds the same buffers plus its scratch: model.h's per-stream figure
    times the largest batch run so far (64 bytes for alignment), nothing else."""
    import re

    bundle = bundle_dir("gru")
    per_stream = int(re.search(r"EDGELM_SCRATCH_PER_STREAM (\d+)u", (bundle / "model.h").read_text()).group(1))
    with Session.open(bundle, max_streams=3, backend="native") as sess:
        state = sum(int(np.prod(s.shape)) for s in sess.bundle.state) * 4
        chunk = sess.bundle.prefill_chunk
        base = 3 * state + 3 * 256 * 4 + 2 * 3 * state + 3 * 8 + 3 * chunk * 8 + 3 * 256 * 4
        sched = sess.scheduler()
        for _ in range(3):
            sched.add(sess.stream(GREEDY, b"ab"), 2)
        while sched.step():
            pass
        assert sess.buffer_bytes == base + 3 * per_stream + 64
        assert sess.describe().startswith("native C")


def test_bytes_fed_count_prompt_prefill_and_generation(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        chunk = sess.bundle.prefill_chunk
        s = sess.stream(GREEDY, b"x" * (2 * chunk + 3))
        assert s.fed == 2 * chunk + 3
        assert len(b"".join(s.generate(5))) == 5 and s.fed == 2 * chunk + 8
        s.feed(b"")
        assert s.fed == 2 * chunk + 8
        s.reset()
        assert s.fed == 0 and not s.closed
        s.close()
        assert s.closed and s.slot is None


def test_snapshot_layout(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(Sampling(seed=4, temperature=0.5), b"abc")
        blob = s.snapshot()
    magic, version, hlen = struct.unpack("<8sHI", blob[:14])
    header = json.loads(blob[14:14 + hlen])
    assert magic == MAGIC == b"EDGELMSS" and version == SNAPSHOT_VERSION == 1
    assert header["bundle_id"] == sess.bundle.bundle_id and header["fed"] == 3
    assert header["state"] == [[t.name, list(t.shape), "float32"] for t in sess.bundle.state]
    assert header["sampler"]["sampling"] == {"temperature": 0.5, "top_k": 0, "top_p": 1.0, "seed": 4}
    numel = sum(int(np.prod(t.shape)) for t in sess.bundle.state)
    assert len(blob) == 14 + hlen + 4 * (numel + 256) + 32
    assert blob[-32:] == hashlib.sha256(blob[:-32]).digest()
    assert json.dumps(header, separators=(",", ":")).encode() == blob[14:14 + hlen]  # compact header


@pytest.mark.parametrize("make,message", [
    (lambda blob: blob[:-1], "^snapshot is corrupt or truncated \\(checksum mismatch\\); it cannot be restored$"),
    (lambda blob: b"NOTSNAPS" + blob[8:], "^not an edgelm stream snapshot \\(bad magic or too short\\)$"),
    (lambda blob: blob[:45], "^not an edgelm stream snapshot|^snapshot is corrupt"),
    (lambda blob: blob[:8] + struct.pack("<H", 2) + blob[10:], "^snapshot version 2 is newer than this edgelm reads \\(1\\); upgrade edgelm$"),
    (lambda blob: "text", "^a snapshot is bytes, got str$"),
])
def test_snapshot_refusals_say_exactly_why(bundle_dir, make, message):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(GREEDY, b"abc")
        with pytest.raises(EdgelmError, match=message):
            s.restore(make(s.snapshot()))


def test_a_snapshot_restores_from_bytearray_and_memoryview(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(GREEDY, b"abc")
        blob = s.snapshot()
        for form in (bytearray(blob), memoryview(blob)):
            assert sess.restore(form).fed == 3


def test_foreign_snapshots_name_the_bundle(bundle_dir):
    with Session.open(bundle_dir("gru")) as a, Session.open(bundle_dir("lstm")) as b:
        blob = a.stream(GREEDY, b"x").snapshot()
        with pytest.raises(EdgelmError, match=f"^snapshot belongs to bundle {a.bundle.bundle_id[:12]}\\.\\.\\., not "
                                              f"to this bundle {b.bundle.bundle_id[:12]}\\.\\.\\.; restore it"):
            b.restore(blob)


def test_scheduler_bookkeeping(bundle_dir):
    with Session.open(bundle_dir("gru"), max_streams=3) as sess:
        sched = sess.scheduler()
        a, b, c = (sess.stream(Sampling(seed=i, temperature=0.8), b"hi") for i in range(3))
        assert sched.add(c, 0).done and sched.active == 0  # nothing to generate: never joins
        job_a, job_b = sched.add(a, 3), sched.add(b, 5)
        assert (job_a.remaining, job_b.remaining, sched.active) == (3, 5, 2)
        out = sched.step()
        assert [s for s, _ in out] == [a, b] and all(len(d) == 1 for _, d in out)
        assert (job_a.remaining, job_b.remaining) == (2, 4) and a.fed == b.fed == 3
        sched.remove(c)  # not scheduled: nothing happens
        sched.remove(a)
        assert sched.active == 1 and sched.step()[0][0] is b
        sched.add(a, 1)
        sched.discard(b.slot)
        assert sched.active == 1 and [s for s, _ in sched.step()] == [a] and sched.active == 0
        assert sched.step() == [] and list(sched.run()) == []


def test_stop_sequences_through_the_scheduler(bundle_dir):
    with Session.open(bundle_dir("lstm")) as sess:
        full = b"".join(sess.stream(GREEDY, b"def ").generate(40))
        stop = full[10:12]
        sched = sess.scheduler()
        s = sess.stream(GREEDY, b"def ")
        job = sched.add(s, 40, stop=[stop])
        got = b"".join(d for _, d in sched.run())
        assert got == full[:full.find(stop)] and job.matcher.stopped and s.fed == 4 + full.find(stop) + 2


def test_session_errors_are_exact(bundle_dir):
    with Session.open(bundle_dir("gru"), max_streams=1) as sess:
        sess.stream()
        with pytest.raises(EdgelmError, match="^all 1 stream slots are in use; close a stream or open the session "
                                              "with a larger max_streams$"):
            sess.stream()
    with pytest.raises(EdgelmError, match="^this session is closed; open a new one with Session.open$"):
        sess.stream()
    with Session.open(bundle_dir("gru")) as sess:
        chunk = sess.bundle.prefill_chunk
        for shape in ((2,), (1, chunk - 1), (2, chunk), (1, chunk, 1), ()):
            with pytest.raises(ValueError, match=re.escape(
                    f"byte ids of shape {shape} for 1 streams: give (1,) for a step or (1, {chunk}) for a prefill chunk")):
                sess.run((0,), np.zeros(shape, np.int64))
        assert sess.run((0,), np.zeros((1, chunk), np.int64)).shape == (1, 256)
        assert sess.run((0,), np.zeros(1, np.int64)).shape == (1, 256) and sess.fed(0) == chunk + 1


def test_snapshot_size_bounds(bundle_dir):
    """The smallest frame: 14-byte head + 32-byte digest. Anything shorter is refused as such."""
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(GREEDY, b"abc")
        too_short = "^not an edgelm stream snapshot \\(bad magic or too short\\)$"
        for n in (0, 8, 45):
            with pytest.raises(EdgelmError, match=too_short):
                s.restore(s.snapshot()[:n])
        head = MAGIC + struct.pack("<HI", 1, 0)
        empty = head + hashlib.sha256(head).digest()  # 46 bytes, valid frame, empty header
        with pytest.raises(EdgelmError, match="^snapshot header is unreadable \\(Expecting value"):
            s.restore(empty)


def test_a_snapshot_without_sampler_state_restores(bundle_dir):
    with Session.open(bundle_dir("gru")) as sess:
        s = sess.stream(Sampling(seed=9, temperature=0.8), b"abc")
        blob = s.snapshot()
        hlen = struct.unpack("<I", blob[10:14])[0]
        header = {**json.loads(blob[14:14 + hlen]), "sampler": None}
        head = json.dumps(header, separators=(",", ":")).encode()
        body = MAGIC + struct.pack("<HI", 1, len(head)) + head + blob[14 + hlen:-32]
        r = sess.restore(body + hashlib.sha256(body).digest())
        assert r.fed == 3 and r.sampler.sampling == Sampling()  # the stream's own default sampler
        for got, want in zip(r.state, s.state):
            assert np.array_equal(got, want)


def test_sampling_given_to_generate_or_the_scheduler_replaces_the_streams(bundle_dir):
    """generate(sampling=...) and scheduler.add(sampling=...) give the bytes of a stream opened
    with that sampling; set_sampling refuses anything but a Sampling."""
    hot = Sampling(temperature=1.3, seed=11)
    with Session.open(bundle_dir("gru"), max_streams=4) as sess:
        want = b"".join(sess.stream(hot, b"The ").generate(40))
        greedy = b"".join(sess.stream(GREEDY, b"The ").generate(40))
        s = sess.stream(GREEDY, b"The ")
        assert b"".join(s.generate(40, sampling=hot)) == want != greedy
        assert s.sampler.sampling == hot
        t = sess.stream(GREEDY, b"The ")
        sched = sess.scheduler()
        sched.add(t, 40, sampling=hot)
        assert b"".join(d for _, d in sched.run()) == want and t.sampler.sampling == hot
        for bad in (None, "hot", 1.3, {"temperature": 1.3}):
            with pytest.raises(ArgumentError, match="sampling must be a Sampling"):
                t.set_sampling(bad)
        assert t.sampler.sampling == hot


def test_generation_ends_on_a_held_prefix_or_a_completed_stop(bundle_dir):
    """The last byte of a generation decides: a stop sequence it completes is not emitted; a stop
    prefix still held when the bytes run out is emitted. Solo and through the scheduler."""
    with Session.open(bundle_dir("lstm"), max_streams=2) as sess:
        full = b"".join(sess.stream(GREEDY, b"def ").generate(40))
        i = next(i for i in range(8, 30) if full.find(full[i:i + 2]) == i)  # first occurrence at i
        cases = [(full[i:i + 2], i + 2, full[:i]),  # completed by the last byte: dropped, stopped
                 (full[i:i + 2] + b"\xff", i + 2, full[:i + 2])]  # still a prefix at the end: emitted
        for stop, n, want in cases:
            s = sess.stream(GREEDY, b"def ")
            assert b"".join(s.generate(n, stop=[stop])) == want and s.fed == 4 + n
            s.close()
            s = sess.stream(GREEDY, b"def ")
            sched = sess.scheduler()
            job = sched.add(s, n, stop=[stop])
            assert b"".join(d for _, d in sched.run()) == want
            assert job.done and job.remaining == 0 and job.matcher.stopped == (want == full[:i])
            s.close()


def test_scheduler_refusals_are_exact_and_change_nothing(bundle_dir):
    with Session.open(bundle_dir("gru"), max_streams=2) as sess, Session.open(bundle_dir("gru")) as other:
        sched = sess.scheduler()
        a = sess.stream(GREEDY, b"hi")
        sched.add(a, 3)
        for bad, message in ((None, "stream must be a Stream, not NoneType"), ("a", "stream must be a Stream, not str"),
                             (other.stream(), "stream belongs to another session; a scheduler batches its own "
                                              "session's streams"),
                             (a, "stream is already scheduled")):
            with pytest.raises(ArgumentError, match=f"^{re.escape(message)}$"):
                sched.add(bad, 3)
        assert sched.active == 1 and [s for s, _ in sched.step()] == [a]
