"""The native C target: a bundle's step and prefill graphs as dependency-free C99.

    plan.py     graph -> buffer plan (shapes probed in ONNX Runtime, weights at their
                weights.bin offsets, scratch reused by liveness, in-place state, runs of
                elementwise ops fused into one loop)
    cexpr.py    the C text of operands, elementwise ops and literals
    ops.py      one C emitter per ONNX op (matmul.py: the matmuls)
    kernels.h   the matmul / exp / quantize kernels pasted into model.c
    emit.py     model.h (the ABI, declared once) and model.c
    build.py    the host's C compiler -> the bundle's shared library; build_native.sh

The C is generated from the ONNX graphs that the fused forms export, so it computes what the
validated graphs compute, reading the same weights file. fp32 and int8 (w8, w8a8) bundles;
fp16 and int4 bundles have no C target (the native kernels have no half or int4 math).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import EdgelmError

NATIVE_PRECISIONS = ("fp32", "int8")
SOURCES = ("model.h", "model.c")
PER_POSITION_GRAPH = "prefill.per_position.onnx"  # written and removed during export: never in a bundle


def unsupported(precision: str) -> str | None:
    """Why a bundle of `precision` has no C target, or None."""
    if precision in NATIVE_PRECISIONS:
        return None
    return f"the native C target runs fp32 and int8 bundles, not {precision}"


def generate(directory: Path, manifest, prefill: str | None) -> list[str]:
    """Write model.h and model.c for the bundle in `directory` (its graphs and weights.bin).
    prefill: the graph file C compiles for a prefill chunk (the bundle's prefill graph, or the
    form's per-position prefill beside it), or None: C runs a chunk as a loop of its step. The
    fused form's NATIVE_PREFILL says which, as measured."""
    import onnx

    from ...runtime import manifest as fmt
    from .emit import write_sources
    from .plan import build_plan

    reason = unsupported(manifest.precision)
    if reason:
        raise EdgelmError(reason)
    state = [(s.input, s.output) for s in manifest.state]
    weights = directory / fmt.WEIGHTS
    files = {"step": manifest.graphs["step"].file, **({"prefill": prefill} if prefill else {})}
    plans = {}
    for g, file in files.items():
        model = onnx.load(str(directory / file), load_external_data=False)
        plans[g] = build_plan(model, weights, g, state)
    return write_sources(directory, manifest, plans, weights.read_bytes())
