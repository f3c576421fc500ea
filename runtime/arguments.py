"""Checks of what callers pass to the runtime API: the wrong type or value is an ArgumentError
naming the argument, never a silent conversion (5 is not five zero bytes)."""

from __future__ import annotations

import math
import numbers

from ..errors import ArgumentError

_BYTE_FORMATS = ("B", "b", "c")


def as_bytes(data, name: str) -> bytes:
    """bytes, bytearray, a memoryview of bytes, or str (UTF-8; surrogate-escaped bytes, as in
    sys.argv, come back as themselves). Anything else is refused."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise ArgumentError(f"{name} is a str that is not valid text ({exc.reason}); pass bytes") from None
    if isinstance(data, memoryview) and data.format in _BYTE_FORMATS:
        return data.tobytes()
    raise ArgumentError(f"{name} must be bytes, bytearray, memoryview or str, not {type(data).__name__}")


def as_int(value, name: str, lo: int, hi: int | None = None) -> int:
    """An integer (not a bool, not a float) in lo..hi."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ArgumentError(f"{name} must be in {lo}..{'' if hi is None else hi}, got {value}")
    return int(value)


def as_real(value, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite real number (not a bool) in [lo, hi] (or (lo, hi] with lo_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, not {type(value).__name__} {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise ArgumentError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def as_instance(value, cls: type, name: str, optional: bool = True):
    if (value is None and optional) or isinstance(value, cls):
        return value
    raise ArgumentError(f"{name} must be a {cls.__name__}{' or None' if optional else ''}, "
                        f"not {type(value).__name__}")
