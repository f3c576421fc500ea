"""Typed, range-checked access to one JSON object of a manifest: every error names the field's
full path (e.g. `graphs.prefill.chunk`) and ends with the fix. Standard library only."""

from __future__ import annotations

import re

from ..errors import EdgelmError


class Fields:
    """Typed access to one JSON object of the manifest; errors name the field's full path."""

    def __init__(self, raw, where: str, prefix: str = ""):
        self.where, self.prefix = where, f"{prefix}." if prefix else ""
        if not isinstance(raw, dict):
            raise EdgelmError(f"{where}: field {prefix or 'manifest'} must be a JSON object; re-export the bundle")
        self.raw = raw

    def error(self, key, what: str) -> EdgelmError:
        return EdgelmError(f"{self.where}: field {self.prefix}{key} {what}; re-export the bundle")

    def get(self, key):
        if key not in self.raw:
            raise self.error(key, "is missing")
        return self.raw[key]

    def only(self, keys: tuple) -> None:
        extra = sorted(set(self.raw) - set(keys))
        if extra:
            raise self.error(extra[0], "is not a field of bundle format 2")

    def int(self, key, lo: int, hi: int) -> int:
        v = self.get(key)
        if type(v) is not int or not lo <= v <= hi:
            raise self.error(key, f"must be an integer in {lo}..{hi}, not {str(v)[:40]!r}")
        return v

    def str(self, key) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v:
            raise self.error(key, f"must be a non-empty string, not {str(v)[:40]!r}")
        return v

    def ints(self, key, n_lo: int, n_hi: int, lo: int, hi: int) -> list[int]:
        v = self.list(key, n_lo, n_hi)
        if not all(type(x) is int and lo <= x <= hi for x in v):
            raise self.error(key, f"must hold integers in {lo}..{hi}, not {str(v)[:40]}")
        return v

    def strs(self, key, n_lo: int, n_hi: int) -> list[str]:
        v = self.list(key, n_lo, n_hi, default=[])
        if not all(isinstance(x, str) and x for x in v):
            raise self.error(key, "must hold non-empty strings")
        return v

    def match(self, key, pattern: re.Pattern) -> str:
        v = self.str(key)
        if not pattern.fullmatch(v):
            raise self.error(key, f"is malformed: {v[:40]!r}")
        return v

    def choice(self, key, options) -> str:
        v = self.str(key)
        if v not in options:
            raise self.error(key, f"must be one of {', '.join(options)}, not {v[:40]!r}")
        return v

    def dict(self, key) -> dict:
        v = self.get(key)
        if not isinstance(v, dict):
            raise self.error(key, f"must be a JSON object, not {type(v).__name__}")
        return v

    def list(self, key, lo: int, hi: int, default=None) -> list:
        v = self.raw.get(key, default) if default is not None else self.get(key)
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise self.error(key, f"must be a list of {lo}..{hi} items")
        return v
