"""Stream snapshots: a stream's whole recurrent state, its next-byte logits and its sampler.

Layout (little-endian):
    magic   8 bytes  b"EDGELMSS"
    version u16      SNAPSHOT_VERSION
    hlen    u32      length of the JSON header
    header  hlen     {"bundle_id", "state": [[name, shape, dtype], ...], "fed", "sampler"}
    payload          each state tensor's float32 bytes, in manifest order, then 256 float32 logits
    sha256  32 bytes over everything before it
A snapshot is tied to the bundle it came from (`bundle_id`); a foreign, newer, truncated or
corrupted snapshot is refused with an EdgelmError before anything is touched, and so is one with a
valid checksum but a malformed header, a non-finite state or logits (a hand-made blob).
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from ..errors import EdgelmError

MAGIC = b"EDGELMSS"
SNAPSHOT_VERSION = 1
_HEAD = struct.Struct("<8sHI")
_DIGEST = 32
_HEADER_KEYS = {"bundle_id", "state", "fed", "sampler"}


def state_layout(bundle) -> list:
    return [[s.name, list(s.shape), s.dtype] for s in bundle.state]


def pack(bundle, states: list[np.ndarray], logits: np.ndarray, fed: int, sampler: dict | None) -> bytes:
    header = json.dumps({"bundle_id": bundle.bundle_id, "state": state_layout(bundle),
                         "fed": fed, "sampler": sampler}, separators=(",", ":")).encode()
    parts = [_HEAD.pack(MAGIC, SNAPSHOT_VERSION, len(header)), header]
    parts += [np.ascontiguousarray(s, "<f4").tobytes() for s in states]
    parts.append(np.ascontiguousarray(logits, "<f4").tobytes())
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _check_frame(blob: bytes) -> tuple[dict, memoryview]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise EdgelmError(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = memoryview(blob).cast("B")
    if len(blob) < _HEAD.size + _DIGEST or bytes(blob[:8]) != MAGIC:
        raise EdgelmError("not an edgelm stream snapshot (bad magic or too short)")
    _, version, hlen = _HEAD.unpack(blob[:_HEAD.size])
    if version > SNAPSHOT_VERSION:
        raise EdgelmError(f"snapshot version {version} is newer than this edgelm reads "
                          f"({SNAPSHOT_VERSION}); upgrade edgelm")
    body, digest = blob[:-_DIGEST], bytes(blob[-_DIGEST:])
    if hashlib.sha256(body).digest() != digest:
        raise EdgelmError("snapshot is corrupt or truncated (checksum mismatch); it cannot be restored")
    try:
        header = json.loads(bytes(body[_HEAD.size:_HEAD.size + hlen]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgelmError(f"snapshot header is unreadable ({str(exc)[:80]})") from None
    _check_header(header)
    return header, body[_HEAD.size + hlen:]


def _check_header(header) -> None:
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise EdgelmError("snapshot header is malformed (not the fields edgelm writes); it cannot be restored")
    fed = header["fed"]
    if type(fed) is not int or fed < 0:
        raise EdgelmError(f"snapshot header field fed must be a byte count, not {str(fed)[:20]!r}")
    if header["sampler"] is not None and not isinstance(header["sampler"], dict):
        raise EdgelmError("snapshot header field sampler is malformed; it cannot be restored")


def unpack(bundle, blob: bytes) -> tuple[list[np.ndarray], np.ndarray, int, dict | None]:
    """(states (1, *shape) each, logits (256,), bytes fed, sampler state) for `bundle`."""
    header, payload = _check_frame(blob)
    if header.get("bundle_id") != bundle.bundle_id:
        raise EdgelmError(f"snapshot belongs to bundle {str(header.get('bundle_id'))[:12]}..., not to "
                          f"this bundle {bundle.bundle_id[:12]}...; restore it with the bundle that made it")
    if header.get("state") != state_layout(bundle):
        raise EdgelmError("snapshot state layout does not match this bundle's; it cannot be restored")
    sizes = [s.numel for s in bundle.state] + [256]
    if len(payload) != 4 * sum(sizes):
        raise EdgelmError("snapshot payload has the wrong size; it cannot be restored")
    flat = np.frombuffer(payload, "<f4")
    if not np.isfinite(flat).all():
        raise EdgelmError("snapshot holds NaN or infinite state or logits; it cannot be restored")
    arrays, offset = [], 0
    for n in sizes:
        arrays.append(flat[offset:offset + n])
        offset += n
    states = [a.reshape(1, *s.shape) for a, s in zip(arrays, bundle.state)]
    return states, arrays[-1], header["fed"], header["sampler"]
