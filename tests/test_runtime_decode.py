"""UTF-8 incremental decoding, stop sequences and the samplers' arithmetic (no bundle needed)."""

from __future__ import annotations

import numpy as np
import pytest

from edgelm.errors import EdgelmError
from edgelm.runtime import BatchSampler, Sampler, Sampling, StopMatcher, Utf8Decoder


def _bytewise(data: bytes) -> list[str]:
    d = Utf8Decoder()
    return [d.feed(bytes((b,))) for b in data] + [d.flush()]


@pytest.mark.parametrize("text", ["é", "€", "𝄞", "aé€𝄞z", "日本語"])
def test_multibyte_characters_are_never_split(text):
    parts = _bytewise(text.encode())
    assert "".join(parts) == text
    assert all(p == "" or p in text for p in parts)  # each emission is whole characters
    n = len(text[0].encode())
    assert parts[:n - 1] == [""] * (n - 1)


def test_pending_counts_held_bytes():
    d = Utf8Decoder()
    assert d.feed(b"\xf0\x9d") == "" and d.pending == 2
    assert d.feed(b"\x84") == "" and d.pending == 3
    assert d.feed(b"\x9e") == "𝄞" and d.pending == 0


@pytest.mark.parametrize("data, expected", [
    (b"\x80", "\ufffd"),  # stray continuation byte
    (b"\xe2\x82(", "\ufffd("),  # truncated 3-byte sequence followed by ASCII
    (b"\xc0\xaf", "\ufffd\ufffd"),  # overlong encoding
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # UTF-16 surrogate
    (b"\xf4\x90\x80\x80", "\ufffd\ufffd\ufffd\ufffd"),  # above U+10FFFF
    (b"\xff", "\ufffd"), (b"a\xe2\x82", "a\ufffd"),  # invalid byte; truncated at the end
])
def test_invalid_bytes_become_one_replacement_each(data, expected):
    assert "".join(_bytewise(data)) == expected == data.decode("utf-8", "replace")


def test_replacement_only_once_definitely_invalid():
    d = Utf8Decoder()
    assert d.feed(b"\xe2") == ""  # could still become a valid character
    assert d.feed(b"\x82") == ""
    assert d.feed(b"A") == "\ufffdA"  # now it cannot
    assert d.feed(b"\xe2") == "" and d.flush() == "\ufffd"


def test_stop_matcher_holds_back_prefixes():
    m = StopMatcher([b"END"])
    out = b"".join(m.push(b) for b in b"abEXEN")
    assert out == b"abEX" and m.held == b"EN"
    assert m.push(ord("D")) == b"" and m.stopped
    m = StopMatcher(["\n\n", "xyz"])
    assert b"".join(m.push(b) for b in b"ab\nc") == b"ab\nc"
    assert m.push(ord("x")) == b"" and m.flush() == b"x"


def test_greedy_topk_topp_restrict_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-9] * 252, np.float32))
    assert Sampler(Sampling(temperature=0)).sample(logits) == 0
    for params, allowed in ((dict(top_k=2), {0, 1}), (dict(top_p=0.7), {0, 1}), (dict(top_p=0.85), {0, 1, 2})):
        s = Sampler(Sampling(seed=0, **params))
        seen = {s.sample(logits) for _ in range(400)}
        assert seen == allowed, params


def test_batch_sampler_rows_match_solo_and_mixed_params():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 256)).astype(np.float32) * 3
    params = [Sampling(seed=i, temperature=0.7, top_k=30 if i % 2 else 0, top_p=0.9 if i % 3 else 1.0)
              for i in range(6)]
    batched, out = [Sampler(p) for p in params], np.zeros(6, np.int64)
    solo = [Sampler(p) for p in params]
    for _ in range(50):
        BatchSampler(6).sample(logits, batched, out)
        assert out.tolist() == [s.sample(row) for s, row in zip(solo, logits)]


def test_sampler_state_roundtrip_and_validation():
    s = Sampler(Sampling(seed=7, temperature=0.5))
    logits = np.zeros(256, np.float32)
    s.sample(logits)
    t = Sampler.from_state(s.get_state())
    assert [s.sample(logits) for _ in range(20)] == [t.sample(logits) for _ in range(20)]
    for bad in (dict(temperature=-1), dict(top_k=300), dict(top_p=0), dict(seed=-2)):
        with pytest.raises(EdgelmError):
            Sampling(**bad)


def test_stop_matcher_emits_at_once_and_reuses_after_flush():
    m = StopMatcher(b"xyz")  # a single stop sequence, not a list
    assert m.stops == [b"xyz"]
    assert m.push(ord("a")) == b"a"  # no prefix of a stop: emitted immediately
    assert m.push(ord("x")) == b"" and m.flush() == b"x"
    assert m.push(ord("b")) == b"b"  # nothing left over from before the flush
    assert StopMatcher().push(ord("q")) == b"q" and StopMatcher([]).stops == []
    with pytest.raises(Exception, match="^stop must be bytes, str or a list of them, not int"):
        StopMatcher(5)
    with pytest.raises(Exception, match="^each stop sequence must be bytes"):
        StopMatcher([5])
    done = StopMatcher([b"ab"])
    assert done.push(ord("a")) == b"" and done.push(ord("b")) == b"" and done.stopped is True
    assert done.flush() == b"" and done.flush() == b""  # nothing held after a stop, nor twice
