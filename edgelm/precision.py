"""Precision rules in one place (standard library only): for each precision, the dtype the fused
graph computes in, the parity tolerance export holds it to, and what TensorRT calls it. Whether a
target allows a precision is the device profile's data (`DeviceProfile.precisions`); the rules that
combine the two are `for_target` (float bundles, chosen by --precision) and
`check_quantized_target` (int8/int4 bundles, whose precision the quantized checkpoint decides).

Tolerances are max |logit difference| between ONNX Runtime and the fp32 PyTorch model over the
export-time parity run (256 streamed bytes, 2 streams, then one prefill chunk):
  fp32  float rounding only: 6e-8..1.5e-6 on the tiny presets; a trained RG-LRU reaches ~1.1e-4
        (1 - a^2 near a = 1 amplifies rounding in log a). 5e-4 still catches any real graph error,
        which shows up as 1e-2 or more.
  fp16  weights and compute in half, fp32 residual stream and graph IO: measured 5e-5 (lstm) ..
        7e-4 (rglru) on random-init tiny models and 1.4e-3 (max |dstate| 1.9e-3) on the trained
        mamba-tiny, so 5e-2 leaves ~35x headroom.
  int8 / int4  quantized checkpoints (recipes w8, w8a8-naive, w8a8 / w4): integer weights (and
        w8a8 activations) through ONNX Q/DQ, float32 everywhere else and at the graph IO; parity
        is against the quantized checkpoint's own PyTorch forward (see INT8_ATOL / INT4_ATOL).
States (e.g. an LSTM's c) are unbounded sums: their tolerance is STATE_ATOL_FACTOR x the logits'.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgelmError

STATE_ATOL_FACTOR = 10.0
# Quantized parity is against the checkpoint's fake-quantized PyTorch form. An activation that
# lands within float rounding of a quantization boundary rounds one way in PyTorch and the other in
# ONNX Runtime, and the recurrence carries that one-LSB step on; ONNX Runtime's MatMulNBits also
# quantizes activations per block at run time (accuracy level 4). Measured over the parity run on
# the tiny reference models: max |dlogit| 0.05..0.35, mean |dlogit| 1.4e-4..1.1e-2. A wrong scale,
# channel or rotation moves the mean by 0.1 or more: the mean is the sharp check, the max a bound.
INT8_ATOL = INT4_ATOL = 1.0
QUANT_MEAN_ATOL = 0.05
QUANTIZE_FIX = ("int8/int4 bundles come from a quantized checkpoint: run `edgelm quantize MODEL "
                "--recipe w8a8 ...` and export its output")


@dataclass(frozen=True)
class Precision:
    name: str  # "fp16"
    weight_bits: int  # bits per stored weight value
    compute: str | None  # torch dtype name of the fused graph's weights and math; None: not exported yet
    atol: float | None  # export-time parity tolerance on logits (see the module docstring)
    trt_types: tuple[str, ...]  # TensorRT tensor types whose presence in a graph means this precision
    trt8_flag: str | None = None  # TensorRT 8 builds weakly typed: the flag that allows this precision
    quantized: bool = False  # decided by a quantized checkpoint, never by --precision
    min_tensorrt: int | None = None  # oldest TensorRT major that builds it, where that matters
    mean_atol: float | None = None  # quantized: bound on the mean |dlogit| (see QUANT_MEAN_ATOL)

    @property
    def exported(self) -> bool:
        return self.compute is not None

    @property
    def state_atol(self) -> float | None:
        return None if self.atol is None else self.atol * STATE_ATOL_FACTOR

    def weight_bytes(self, values: int) -> int:
        return (values * self.weight_bits + 7) // 8


# int4: TensorRT's INT4 type and blocked DequantizeLinear arrived with TensorRT 10 (TensorRT 8.x
# has no INT4; onnx-tensorrt docs/operators.md); TensorRT 8's explicit INT8 needs the --int8 flag.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", 32, "float32", 5e-4, ()),
    Precision("fp16", 16, "float16", 5e-2, ("FP16",), "--fp16"),
    Precision("bf16", 16, None, None, ("BF16",)),
    Precision("int8", 8, "float32", INT8_ATOL, ("INT8",), "--int8", quantized=True, mean_atol=QUANT_MEAN_ATOL),
    Precision("fp8", 8, None, None, ("FP8",)),
    Precision("int4", 4, "float32", INT4_ATOL, ("INT4",), quantized=True, min_tensorrt=10,
              mean_atol=QUANT_MEAN_ATOL),
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


def requestable() -> tuple[str, ...]:
    """The exported precisions --precision may ask for (a float checkpoint's export)."""
    return tuple(p.name for p in PRECISIONS.values() if p.exported and not p.quantized)


def for_target(profile, requested: str | None) -> Precision:
    """The precision to export a float checkpoint in for `profile`: `requested`, or the target's
    default; refused (one line naming the fix) if the target lacks it, if it is a quantized
    precision (those come from a quantized checkpoint), or if edgelm cannot export it yet."""
    name = requested or profile.default_precision
    if not profile.supports(name):
        raise EdgelmError(f"target {profile.name} does not support {name} (it supports "
                          f"{', '.join(profile.precisions)}); pass --precision "
                          f"{profile.default_precision} or pick another --target")
    precision = get(name)
    if precision.quantized:
        raise EdgelmError(QUANTIZE_FIX)
    if not precision.exported:
        raise EdgelmError(f"edgelm export writes {' or '.join(requestable())} graphs, not {name}; "
                          f"pass --precision {'fp16' if profile.supports('fp16') else 'fp32'}")
    return precision


def _target(profile) -> str:
    """'target jetson-nano (Maxwell, sm 5.3)'; CPUs by name only."""
    cc, arch = profile.compute_capability, profile.architecture
    return f"target {profile.name}" + (f" ({arch + ', ' if arch else ''}sm {cc})" if cc else "")


def _fallback(profile, name: str) -> str:
    """What to export instead of a quantized precision the target cannot run."""
    if name != "int8" and profile.supports("int8"):
        return "quantize with `--recipe w8a8` (int8) instead"
    return f"export an {profile.default_precision} bundle from the unquantized model"


def check_quantized_target(profile, precision_name: str) -> None:
    """Refuse (one line naming the fix) a quantized checkpoint's precision that `profile` cannot
    run: the profile does not list it, or one of its TensorRT versions is too old for it."""
    precision = get(precision_name)
    fix = f"{_fallback(profile, precision.name)} or pick another --target"
    if precision.min_tensorrt is not None:
        old = [v for v in profile.tensorrt_versions if int(v.split(".")[0]) < precision.min_tensorrt]
        if old:
            raise EdgelmError(f"{precision.name} needs TensorRT {precision.min_tensorrt}+, target "
                              f"{profile.name} ships TensorRT {old[0]}; {fix}")
    if not profile.supports(precision.name):
        raise EdgelmError(f"{_target(profile)} has no {precision.name}; {fix}")


def used_by(tensor_types) -> set[str]:
    """Precisions implied by a graph's TensorRT tensor type names (FP16, INT8, ...)."""
    return {p.name for p in PRECISIONS.values() if set(p.trt_types) & set(tensor_types)}
