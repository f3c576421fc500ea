"""Precision rules in one place (standard library only): for each precision, the dtype the fused
graph computes in, the parity tolerance export holds it to, and what TensorRT calls it. Whether a
target allows a precision is the device profile's data (`DeviceProfile.precisions`); the rule that
combines the two is `for_target`.

Tolerances are max |logit difference| between ONNX Runtime and the fp32 PyTorch model over the
export-time parity run (256 streamed bytes, 2 streams, then one prefill chunk):
  fp32  float rounding only: 6e-8..1.5e-6 on the tiny presets; a trained RG-LRU reaches ~1.1e-4
        (1 - a^2 near a = 1 amplifies rounding in log a). 5e-4 still catches any real graph error,
        which shows up as 1e-2 or more.
  fp16  weights and compute in half, fp32 residual stream and graph IO: measured 5e-5 (lstm) ..
        7e-4 (rglru) on random-init tiny models and 1.4e-3 (max |dstate| 1.9e-3) on the trained
        mamba-tiny, so 5e-2 leaves ~35x headroom.
States (e.g. an LSTM's c) are unbounded sums: their tolerance is STATE_ATOL_FACTOR x the logits'.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgelmError

STATE_ATOL_FACTOR = 10.0


@dataclass(frozen=True)
class Precision:
    name: str  # "fp16"
    weight_bits: int  # bits per stored weight value
    compute: str | None  # torch dtype name of the fused graph's weights and math; None: not exported yet
    atol: float | None  # export-time parity tolerance on logits (see the module docstring)
    trt_types: tuple[str, ...]  # TensorRT tensor types whose presence in a graph means this precision
    trt8_flag: str | None = None  # TensorRT 8 builds weakly typed: the flag that allows this precision

    @property
    def exported(self) -> bool:
        return self.compute is not None

    @property
    def state_atol(self) -> float | None:
        return None if self.atol is None else self.atol * STATE_ATOL_FACTOR

    def weight_bytes(self, values: int) -> int:
        return (values * self.weight_bits + 7) // 8


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", 32, "float32", 5e-4, ()),
    Precision("fp16", 16, "float16", 5e-2, ("FP16",), "--fp16"),
    Precision("bf16", 16, None, None, ("BF16",)),
    Precision("int8", 8, None, None, ("INT8",)),
    Precision("fp8", 8, None, None, ("FP8",)),
    Precision("int4", 4, None, None, ("INT4",)),
    Precision("fp4", 4, None, None, ("FP4",)),
)}
NAMES = tuple(PRECISIONS)


def get(name: str) -> Precision:
    if name not in PRECISIONS:
        raise EdgelmError(f"unknown precision {name!r}; choose one of {', '.join(NAMES)}")
    return PRECISIONS[name]


def exported() -> tuple[str, ...]:
    """The precisions `edgelm export` writes graphs in."""
    return tuple(p.name for p in PRECISIONS.values() if p.exported)


def for_target(profile, requested: str | None) -> Precision:
    """The precision to export for `profile`: `requested`, or the target's default; refused
    (one line naming the fix) if the target lacks it or edgelm cannot export it yet."""
    name = requested or profile.default_precision
    if not profile.supports(name):
        raise EdgelmError(f"target {profile.name} does not support {name} (it supports "
                          f"{', '.join(profile.precisions)}); pass --precision "
                          f"{profile.default_precision} or pick another --target")
    precision = get(name)
    if not precision.exported:
        ok = exported()
        raise EdgelmError(f"edgelm export writes {' or '.join(ok)} graphs, not {name}; "
                          f"pass --precision {'fp16' if profile.supports('fp16') else 'fp32'}")
    return precision


def used_by(tensor_types) -> set[str]:
    """Precisions implied by a graph's TensorRT tensor type names (FP16, INT8, ...)."""
    return {p.name for p in PRECISIONS.values() if set(p.trt_types) & set(tensor_types)}
