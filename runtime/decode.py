"""Incremental UTF-8 decoding for streamed bytes.

`Utf8Decoder.feed(b)` returns only complete characters: a multi-byte character is emitted once
its last byte arrives, never half of it. A byte becomes U+FFFD only once it is definitely invalid
(a stray continuation byte, a lead byte followed by a non-continuation, an overlong form, a
surrogate, a code point above U+10FFFF), following the Unicode "maximal subpart" practice;
an incomplete sequence at the very end becomes U+FFFD only on `flush()`.
"""

from __future__ import annotations

import codecs


class Utf8Decoder:
    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes | int) -> str:
        if isinstance(data, int):
            data = bytes((data,))
        return self._dec.decode(data, final=False)

    @property
    def pending(self) -> int:
        """Bytes held back as the start of a possibly valid multi-byte character (0..3)."""
        return len(self._dec.getstate()[0])

    def flush(self) -> str:
        """End of stream: an incomplete trailing sequence becomes U+FFFD."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out

    def reset(self) -> None:
        self._dec.reset()
