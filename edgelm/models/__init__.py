"""The architecture registry: name -> model class. One file per architecture."""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import dataclasses

from ..errors import EdgelmError
from .common import VOCAB, ByteLM, State
from .gru import GRULM
from .lstm import LSTMLM
from .mamba import MambaLM
from .mingru import MinGRULM
from .rglru import RGLRULM

ARCHS: dict[str, type[ByteLM]] = {cls.arch: cls for cls in (LSTMLM, GRULM, MinGRULM, MambaLM, RGLRULM)}


def get_arch(name: str) -> type[ByteLM]:
    if name not in ARCHS:
        raise EdgelmError(f"unknown architecture '{name}'; choose one of: {', '.join(ARCHS)}")
    return ARCHS[name]


def make_config(arch: str, config: dict | None = None, preset: str | None = None):
    """Build an architecture's config from a preset and/or explicit fields."""
    cls = get_arch(arch)
    fields = {}
    if preset is not None:
        if preset not in cls.PRESETS:
            raise EdgelmError(f"unknown preset '{preset}' for {arch}; choose one of: {', '.join(cls.PRESETS)}")
        fields.update(cls.PRESETS[preset])
    fields.update(config or {})
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise EdgelmError(f"config for {arch} has unknown fields {unknown}; valid fields: {sorted(known)}")
    return cls.Config(**fields)


def build_model(arch: str, config: dict | None = None, preset: str | None = None) -> ByteLM:
    return get_arch(arch)(make_config(arch, config, preset))


__all__ = ["ARCHS", "VOCAB", "ByteLM", "State", "build_model", "get_arch", "make_config"]
