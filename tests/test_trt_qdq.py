"""TensorRT's explicit-quantization rules (export/trt_qdq.py) on small hand-built ONNX graphs: each
legal form edgelm exports passes (and runs in ONNX Runtime on the CPU), each rule broken once is
reported once, by node and with its fix."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper
from onnx import numpy_helper as nh

from edgelm.devices import get_profile
from edgelm.export.trt_ops import check_tensorrt_compat, qdq_problems

K, N, V = 128, 8, 256  # matmul in, out; gather table rows
RNG = np.random.default_rng(0)
W8 = RNG.integers(-127, 128, (K, N)).astype(np.int8)
S8 = RNG.uniform(0.01, 0.1, N).astype(np.float32)
W4 = RNG.integers(-8, 8, (K, N))
TABLE = RNG.integers(-127, 128, (V, N)).astype(np.int8)
ORIN = "jetson-orin-nano-8gb"


def _init(name, arr):
    return nh.from_array(np.asarray(arr), name)


def _int4(name, values, shape):
    return helper.make_tensor(name, TP.INT4, shape, np.asarray(values).flatten().tolist())


def _model(nodes, inits, opset=17, x=("x", TP.FLOAT, [2, K]), check=True, extra_inputs=()):
    y = helper.make_tensor_value_info("y", TP.FLOAT, ["d0", "d1"])  # every form here outputs rank 2
    inputs = [helper.make_tensor_value_info(*x)] + [helper.make_tensor_value_info(*i) for i in extra_inputs]
    g = helper.make_graph(nodes, "g", inputs, [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def _dq(x, s, out, zp=None, **attrs):
    return helper.make_node("DequantizeLinear", [x, s] + ([zp] if zp else []), [out], name=f"dq_{x}", **attrs)


def _w8(w=W8, s=S8, axis=1, zp=None, user="MatMul", check=True):
    """INT8 weight -> DQ(per-column scale) -> MatMul(x, .) (edgelm's w8 form)."""
    inits = [_init("w", w), _init("s", s)] + ([_init("wz", zp)] if zp is not None else [])
    mm = helper.make_node(user, ["x", "wd"], ["y"], name="mm")
    return _model([_dq("w", "s", "wd", "wz" if zp is not None else None, axis=axis), mm], inits, check=check)


def _w8a8(scale=0.05, zp=np.int8(0), use_zp=True):
    """QuantizeLinear(x, scalar scale, INT8 0) -> DequantizeLinear -> MatMul with a w8 weight."""
    zin = ["az"] if use_zp else []
    nodes = [helper.make_node("QuantizeLinear", ["x", "as"] + zin, ["xq"], name="q_x"),
             _dq("xq", "as", "xd", "az" if use_zp else None), _dq("w", "s", "wd", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    inits = [_init("as", np.asarray(scale, np.float32)), _init("w", W8), _init("s", S8)]
    return _model(nodes, inits + ([_init("az", zp)] if use_zp else []))


def _w4(block=64, scale_shape=None, axis=0, opset=21, user="MatMul", check=True):
    """INT4 weight -> blocked DQ (opset 21) -> MatMul (edgelm's w4 form)."""
    shape = scale_shape or (-(-K // block), N)
    s = RNG.uniform(0.01, 0.1, shape).astype(np.float32)
    node = _dq("w", "s", "wd", axis=axis, **({"block_size": block} if block else {}))
    mm = helper.make_node(user, ["x", "wd"] if user == "MatMul" else ["wd", "x"], ["y"], name="mm")
    x = ("x", TP.FLOAT, [2, K]) if user == "MatMul" else ("x", TP.INT64, [2])
    return _model([node, mm], [_int4("w", W4, [K, N]), _init("s", s)], opset, x=x, check=check)


def _gather_trt(table=TABLE):
    """DQ(INT8 table, per-column scale, axis=1) -> Gather: the TensorRT form of a quantized embedding."""
    nodes = [_dq("t", "s", "td", axis=1), helper.make_node("Gather", ["td", "x"], ["y"], name="emb")]
    return _model(nodes, [_init("t", table), _init("s", S8)], x=("x", TP.INT64, [2]))


def _gather_cpu():
    """Gather(INT8 table) -> DQ(per-column scale, axis=1): the ONNX Runtime form (refused on TensorRT)."""
    nodes = [helper.make_node("Gather", ["t", "x"], ["tg"], name="emb"), _dq("tg", "s", "y", axis=1)]
    return _model(nodes, [_init("t", TABLE), _init("s", S8)], x=("x", TP.INT64, [2]))


LEGAL = {"w8 matmul": _w8, "w8 gemm": lambda: _w8(user="Gemm"), "w8 zero zp": lambda: _w8(zp=np.zeros(N, np.int8)),
         "w8a8": _w8a8, "w4 block 64": _w4, "w4 block 128": lambda: _w4(block=128),
         "gather table": _gather_trt}


@pytest.mark.parametrize("form", LEGAL)
def test_legal_forms_pass(form):
    m = LEGAL[form]()
    assert qdq_problems(m) == []
    for target in (ORIN, "rtx-3060", "h100", "cpu"):
        assert check_tensorrt_compat(m, get_profile(target)) == [], target


def _run(m, feed, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


X = RNG.standard_normal((2, K)).astype(np.float32)
IDS = np.array([3, 250], np.int64)


def _w4_reference(m, x):
    s = nh.to_array(next(t for t in m.graph.initializer if t.name == "s"))
    block = next(a.i for a in m.graph.node[0].attribute if a.name == "block_size")
    return x @ (W4 * np.repeat(s, block, axis=0)[:K])


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_cpu_forms_run_in_onnxruntime(level):
    """The CPU forms give the dequantized result in ONNX Runtime: exactly without graph rewrites;
    within 2% with ORT's default rewrites (MatMulIntegerToFloat, MatMulNBits: see below)."""
    tol = 1e-4 if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL else 2e-2
    ref8 = X @ (W8 * S8)
    assert np.abs(_run(_w8(), {"x": X}, level) - ref8).max() <= tol * np.abs(ref8).max()
    xq = np.clip(np.round(X / 0.05), -128, 127) * 0.05
    assert np.abs(_run(_w8a8(), {"x": X}, level) - xq @ (W8 * S8)).max() <= 1e-4 * np.abs(ref8).max()
    m4 = _w4()
    ref4 = _w4_reference(m4, X)
    assert np.abs(_run(m4, {"x": X}, level) - ref4).max() <= tol * np.abs(ref4).max()
    rows = TABLE[IDS] * S8
    for m in (_gather_cpu(), _gather_trt()):
        assert np.abs(_run(m, {"x": IDS}, level) - rows).max() <= 1e-6


def test_onnxruntime_weight_only_fusion_is_exact_at_accuracy_level_0():
    """Pinned ORT behaviour the w8/w4 parity tolerances depend on: ORT (1.32) rewrites a weight
    DequantizeLinear -> MatMul into MatMulNBits (bits 8 or 4) at accuracy level 4, which quantizes
    the activations to int8 on the fly (~0.5% of the output here); a session that sets
    session.qdq_matmulnbits_accuracy_level = 0 computes the dequantized product in float."""
    for m, ref in ((_w8(), X @ (W8 * S8)), (_w4(), None)):
        ref = _w4_reference(m, X) if ref is None else ref
        so = ort.SessionOptions()
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        out = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_cpu_gather_form_is_for_cpu_targets_only():
    m = _gather_cpu()
    assert check_tensorrt_compat(m, get_profile("cpu")) == []
    problems = qdq_problems(m)
    assert problems == ["Gather emb reads INT8 table t; TensorRT's Gather takes no INT8: dequantize the "
                        "table first, DequantizeLinear(t, per-column scale, axis=1) -> Gather"]
    assert problems[0] in check_tensorrt_compat(m, get_profile(ORIN))


def _scale_input(kind):
    """A weight DQ whose scale (or zero point) is a graph input, i.e. known only at run time."""
    name = "s" if kind == "scale" else "wz"
    inits = [_init("w", W8)] + ([_init("s", S8)] if kind == "zp" else [])
    extra = [(name, TP.FLOAT if kind == "scale" else TP.INT8, [N])]
    nodes = [_dq("w", "s", "wd", "wz" if kind == "zp" else None, axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    return _model(nodes, inits, extra_inputs=extra)


def _q_feeds(user):
    """QuantizeLinear whose INT8 output feeds `user` instead of a DequantizeLinear."""
    inits = [_init("as", np.float32(0.05)), _init("az", np.int8(0))]
    q = helper.make_node("QuantizeLinear", ["x", "as", "az"], ["xq" if user else "y"], name="q_x")
    rest = [helper.make_node("Identity", ["xq"], ["y"], name="id")] if user else []
    return _model([q] + rest, inits, check=False)


def _reshape_int8():
    """An INT8 weight reshaped before its DequantizeLinear: Reshape has no INT8 in TensorRT."""
    nodes = [helper.make_node("Reshape", ["w", "shape"], ["wr"], name="rs"), _dq("wr", "s", "wd", axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    return _model(nodes, [_init("w", W8.reshape(-1)), _init("shape", np.array([K, N])), _init("s", S8)])


def _transposed_weight():
    nodes = [_dq("w", "s", "wd", axis=0), helper.make_node("Transpose", ["wd"], ["wt"], name="tr"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    return _model(nodes, [_init("w", W8.T.copy()), _init("s", S8)])


def _weight_as_activation():
    nodes = [_dq("w", "s", "wd", axis=1), helper.make_node("MatMul", ["wd", "x"], ["y"], name="mm")]
    return _model(nodes, [_init("w", W8), _init("s", S8)], x=("x", TP.FLOAT, [N, 2]))


def _bad_w8(**kw):
    return lambda: _w8(**kw)


BROKEN = [  # (form, expected problem text)
    ("nonzero zero point", _bad_w8(zp=np.ones(N, np.int8)), "dq_w: zero point wz is not all zero"),
    ("run-time zero point", lambda: _scale_input("zp"), "dq_w: zero point wz is computed at run time"),
    ("run-time scale", lambda: _scale_input("scale"), "dq_w: scale s is computed at run time"),
    ("zero scale", _bad_w8(s=np.where(np.arange(N) == 3, 0, S8).astype(np.float32)), "zero, negative or non-finite"),
    ("per-channel activation scale", lambda: _w8a8(scale=np.full(K, 0.05, np.float32), zp=np.zeros(K, np.int8)),
     "QuantizeLinear q_x: activation x has a scale of shape [128]; TensorRT quantizes activations per tensor"),
    ("uint8 activations", lambda: _w8a8(use_zp=False), "QuantizeLinear q_x: quantizes x to UINT8"),
    ("per-tensor weight scale", _bad_w8(s=np.float32(0.05)), "has a scale of shape [] on axis 1; quantize weights "
                                                                "per output channel: a 1-D scale of 8 values with axis=1"),
    ("input-channel weight scale", _bad_w8(s=np.full(K, 0.05, np.float32), axis=0),
     "has a scale of shape [128] on axis 0; quantize weights per output channel: a 1-D scale of 8 values with axis=1"),
    ("3-D weight", lambda: _w8(w=W8.reshape(1, K, N), s=S8, axis=2, check=False),
     "INT8 weight w has shape [1, 128, 8]; TensorRT quantizes 2-D weights"),
    ("-128 in a weight", _bad_w8(w=np.where(np.arange(K * N).reshape(K, N) == 5, -128, W8).astype(np.int8)),
     "INT8 weight w holds -128; TensorRT's INT8 weights are in [-127, 127]"),
    ("dequantized weight transposed", _transposed_weight, "weight w feeds Transpose tr (input 0)"),
    ("dequantized weight as activation", _weight_as_activation, "weight w feeds MatMul mm (input 0)"),
    ("int4 below opset 21", lambda: _w4(opset=19, check=False), "INT4 weight w needs opset 21+"),
    ("int4 block 32", lambda: _w4(block=32), "has a scale of shape [4, 8] and block_size 32; TensorRT's INT4 needs "
                                             "per-block scales"),
    ("int4 per channel", lambda: _w4(block=0, scale_shape=(N,), axis=1),
     "has a scale of shape [8] and block_size 0; TensorRT's INT4 needs per-block scales"),
    ("int4 scale shape", lambda: _w4(scale_shape=(3, N), check=False), "needs a scale of shape [2, 8], not [3, 8]"),
    ("int4 table", lambda: _w4(user="Gather", check=False), "weight w feeds Gather mm (input 0); TensorRT takes a "
                                                            "dequantized weight only as the weight input of MatMul/Gemm"),
    ("Q feeds no DQ", lambda: _q_feeds("Identity"), "QuantizeLinear q_x: output xq feeds Identity id, not a "
                                                    "DequantizeLinear"),
    ("Q is a graph output", lambda: _q_feeds(None), "output y feeds the graph output, not a DequantizeLinear"),
    ("INT8 into Reshape", _reshape_int8, "Reshape rs reads INT8 tensor w; TensorRT takes quantized tensors only "
                                         "through DequantizeLinear: insert one before Reshape"),
]


@pytest.mark.parametrize("form,expected", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_rule_is_reported_once(form, expected):
    problems = qdq_problems(form())
    qdq = [p for p in problems if "Identity id reads" not in p]  # _q_feeds' Identity also reads INT8
    assert len(qdq) == 1 and expected in qdq[0], problems
    assert "\n" not in qdq[0]


def test_rules_reach_tensorrt_targets_only():
    m = _bad_w8(zp=np.ones(N, np.int8))()
    assert any("not all zero" in p for p in check_tensorrt_compat(m, get_profile(ORIN)))
    assert check_tensorrt_compat(m, get_profile("cpu")) == []


def test_int4_on_old_tensorrt_is_a_precision_problem():
    problems = check_tensorrt_compat(_w4(), get_profile("jetson-xavier-nx"))
    assert any("supports only fp32, fp16, int8" in p for p in problems)
    assert any("the graph uses int4, which needs TensorRT 10+, but jetson-xavier-nx ships TensorRT 8.5" in p
               for p in problems)
    listed = dataclasses.replace(get_profile("jetson-xavier-nx"), precisions=("fp32", "fp16", "int8", "int4"))
    assert [p for p in check_tensorrt_compat(_w4(), listed) if "int4" in p] == [
        "the graph uses int4, which needs TensorRT 10+, but jetson-xavier-nx ships TensorRT 8.5"]


def test_external_values_are_read_from_base_dir(tmp_path):
    """Bundled graphs keep their weights in weights.bin: value rules need the directory."""
    bad = _bad_w8(w=np.where(np.arange(K * N).reshape(K, N) == 5, -128, W8).astype(np.int8))()
    onnx.save_model(bad, str(tmp_path / "g.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    m = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    assert qdq_problems(m) == []  # values not at hand: shapes, axes and placement only
    assert any("holds -128" in p for p in qdq_problems(m, base_dir=str(tmp_path)))
    assert any("holds -128" in p for p in check_tensorrt_compat(m, get_profile(ORIN), base_dir=str(tmp_path)))


def test_constant_nodes_count_as_build_time_constants():
    """torch's exporter may emit scales as Constant nodes rather than initializers."""
    nodes = [helper.make_node("Constant", [], ["as"], value=nh.from_array(np.array(0.05, np.float32))),
             helper.make_node("Constant", [], ["az"], value=nh.from_array(np.array(0, np.int8))),
             helper.make_node("QuantizeLinear", ["x", "as", "az"], ["xq"], name="q_x"),
             _dq("xq", "as", "y", "az")]
    assert qdq_problems(_model(nodes, [])) == []
    nodes[1] = helper.make_node("Constant", [], ["az"], value=nh.from_array(np.array(3, np.int8)))
    assert [p for p in qdq_problems(_model(nodes, [])) if "not all zero" in p] == [
        "QuantizeLinear q_x: zero point az is not all zero; TensorRT quantizes symmetrically: use zero points "
        "of 0 (or none)",
        "DequantizeLinear dq_xq: zero point az is not all zero; TensorRT quantizes symmetrically: use zero "
        "points of 0 (or none)"]
