"""edgelm/precision.py's rules for quantized bundles: int8/int4 come from a quantized checkpoint
(never from --precision), and check_quantized_target refuses a target that cannot run them."""

import dataclasses

import pytest

from edgelm import precision
from edgelm.devices import get_profile, list_profiles
from edgelm.devices.profile import check_profile
from edgelm.errors import EdgelmError
from edgelm.precision import check_quantized_target, exported, for_target, requestable

QUANTIZED = ("int8", "int4")
QUANTIZE_FIX = ("int8/int4 bundles come from a quantized checkpoint: run `edgelm quantize MODEL "
                "--recipe w8a8 ...` and export its output")


def _refusal(fn, *args) -> str:
    with pytest.raises(EdgelmError) as err:
        fn(*args)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_int8_and_int4_are_exported_in_float32_but_not_requestable():
    assert set(QUANTIZED) <= set(exported()) and requestable() == ("fp32", "fp16")
    for name, bits, atol in (("int8", 8, precision.INT8_ATOL), ("int4", 4, precision.INT4_ATOL)):
        p = precision.get(name)
        assert p.exported and p.quantized and p.compute == "float32" and p.atol == atol
        assert p.weight_bits == bits and p.state_atol == atol * precision.STATE_ATOL_FACTOR
    assert precision.get("int4").min_tensorrt == 10 and precision.get("int8").min_tensorrt is None
    assert precision.get("int4").weight_bytes(9) == 5 and precision.get("int8").trt8_flag == "--int8"
    assert not any(precision.get(n).quantized for n in ("fp32", "fp16", "bf16", "fp8", "fp4"))


@pytest.mark.parametrize("target", ["jetson", "jetson-orin-nano-8gb", "rtx-3060", "h100", "cpu"])
@pytest.mark.parametrize("name", QUANTIZED)
def test_precision_flag_refuses_quantized_precisions(target, name):
    assert _refusal(for_target, get_profile(target), name) == QUANTIZE_FIX


def test_precision_flag_keeps_its_other_answers():
    assert for_target(get_profile("jetson"), None).name == "fp16"
    assert for_target(get_profile("cpu"), None).name == "fp32"
    assert for_target(get_profile("cpu"), "fp16").name == "fp16"
    assert _refusal(for_target, get_profile("jetson-nano"), "int8").startswith(
        "target jetson-nano does not support int8 (it supports fp32, fp16); pass --precision fp16")
    assert _refusal(for_target, get_profile("jetson"), "bf16") == (
        "edgelm export writes fp32 or fp16 graphs, not bf16; pass --precision fp16")


def test_no_profile_defaults_to_a_quantized_precision():
    assert all(p.default_precision in requestable() for p in list_profiles())
    bad = dataclasses.replace(get_profile("cpu-x86"), default_precision="int8")
    assert any("--precision" in problem for problem in check_profile(bad))


@pytest.mark.parametrize("target,name,message", [
    ("jetson-nano", "int8", "target jetson-nano (Maxwell, sm 5.3) has no int8; export an fp16 bundle "
                            "from the unquantized model or pick another --target"),
    ("jetson-xavier-nx", "int4", "int4 needs TensorRT 10+, target jetson-xavier-nx ships TensorRT 8.5; "
                                 "quantize with `--recipe w8a8` (int8) instead or pick another --target"),
    ("jetson-agx-xavier", "int4", "int4 needs TensorRT 10+, target jetson-agx-xavier ships TensorRT 8.5; "
                                  "quantize with `--recipe w8a8` (int8) instead or pick another --target"),
    ("jetson-nano", "int4", "int4 needs TensorRT 10+, target jetson-nano ships TensorRT 8.2; export an "
                            "fp16 bundle from the unquantized model or pick another --target"),
])
def test_quantized_target_refusals(target, name, message):
    assert _refusal(check_quantized_target, get_profile(target), name) == message


@pytest.mark.parametrize("target", ["jetson-orin-nano-8gb", "jetson-orin-nano-4gb", "jetson-orin-nx",
                                    "jetson-agx-orin", "jetson-thor", "rtx-3060", "rtx-4090", "a100",
                                    "h100", "h200", "cpu", "cpu-x86", "cpu-arm64"])
@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_target_accepts(target, name):
    assert check_quantized_target(get_profile(target), name) is None


def test_xavier_runs_int8():
    assert check_quantized_target(get_profile("jetson-xavier-nx"), "int8") is None


def test_each_refusal_rule_on_its_own():
    """The TensorRT-version rule holds even where a profile lists int4, and the listing rule even
    where the TensorRT is new enough."""
    old_trt = dataclasses.replace(get_profile("jetson-orin-nano-8gb"), tensorrt_versions=("8.6", "10.3"))
    assert _refusal(check_quantized_target, old_trt, "int4").startswith(
        "int4 needs TensorRT 10+, target jetson-orin-nano-8gb ships TensorRT 8.6;")
    no_int4 = dataclasses.replace(get_profile("rtx-3060"), precisions=("fp32", "fp16", "int8"))
    assert _refusal(check_quantized_target, no_int4, "int4") == (
        "target rtx-3060 (Ampere, sm 8.6) has no int4; quantize with `--recipe w8a8` (int8) instead or "
        "pick another --target")
    no_q = dataclasses.replace(get_profile("cpu-x86"), precisions=("fp32", "fp16"))
    assert _refusal(check_quantized_target, no_q, "int8") == (
        "target cpu-x86 has no int8; export an fp32 bundle from the unquantized model or pick another --target")
    odd = dataclasses.replace(get_profile("rtx-3060"), compute_capability="3.0", precisions=("fp32",))
    assert _refusal(check_quantized_target, odd, "int8").startswith("target rtx-3060 (sm 3.0) has no int8;")
    assert _refusal(check_quantized_target, get_profile("cpu"), "int2").startswith("unknown precision 'int2'")


@pytest.mark.parametrize("target,arch", [
    ("jetson-nano", "Maxwell"), ("jetson-xavier-nx", "Volta"), ("jetson-orin-nano-8gb", "Ampere"),
    ("rtx-3060", "Ampere"), ("a100", "Ampere"), ("rtx-4090", "Ada"), ("h100", "Hopper"),
    ("jetson-thor", "Blackwell"), ("cpu-x86", None)])
def test_architecture_names(target, arch):
    assert get_profile(target).architecture == arch
