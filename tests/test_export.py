"""ONNX export: fused graphs match the model, stay loop-free and small, and build on the targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgelm.checkpoint import save_model
from edgelm.devices import get_profile
from edgelm.export import check_tensorrt_compat, export_bundle
from edgelm.export.fused import fuse
from edgelm.export.onnx_export import LOOP_OPS, export_naive_step, loop_ops
from edgelm.export.trt_ops import target_opset
from edgelm.export.validate import session
from edgelm.precision import PRECISIONS
from edgelm.models import ARCHS, build_model
from edgelm.runtime.bundle import load_bundle

# The targets the export issue names: cpu, jetson (= jetson-orin-nano-8gb, the same profile), h100.
GPU_TARGETS = ["jetson", "h100"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(100 + i)
        paths[arch] = root / f"{arch}.pt"
        save_model(build_model(arch, preset="tiny"), paths[arch])
    return paths


@pytest.fixture(scope="module")
def bundles(ckpts, tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("bundles"), {}

    def get(arch: str, precision: str, target: str = "cpu"):
        if (arch, precision, target) not in cache:
            out = root / f"{arch}-{precision}-{target}"
            # chunk 8 keeps the suite fast (the exporter's passes grow faster than linearly with
            # the unrolled prefill); the default chunk 32 is exported in test_bundle.py
            cache[arch, precision, target] = (out, export_bundle(ckpts[arch], target, precision, out, chunk=8))
        return cache[arch, precision, target]
    return get


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_parity_and_graphs(bundles, arch, precision):
    out, manifest = bundles(arch, precision)
    v = manifest.validation
    atol = PRECISIONS[precision].atol
    assert manifest.precision == precision and manifest.arch == arch
    assert 0 <= v["max_abs_logit_diff"] <= atol
    assert 0 <= v["prefill_max_abs_diff"] <= atol
    assert v["max_abs_state_diff"] <= v["state_atol"]
    if precision == "fp32":
        assert v["max_abs_logit_diff"] < 1e-4
    bundle = load_bundle(out)
    assert bundle.bundle_id == manifest.bundle_id and len(bundle.bundle_id) == 64
    for name in ("step", "prefill"):
        g = onnx.load(str(out / manifest.graphs[name].file))
        assert loop_ops(g) == [], f"{name} graph has {loop_ops(g)}"
        assert not {n.op_type for n in g.graph.node} & set(LOOP_OPS)
        assert manifest.graphs[name].nodes == len(g.graph.node)
        ins = {i.name: i for i in manifest.graphs[name].inputs}
        assert ins["byte_ids"].dtype == "int64" and ins["byte_ids"].shape[0] == "batch"
        outs = {o.name: o for o in manifest.graphs[name].outputs}
        assert outs["logits"].shape == ("batch", 256) and outs["logits"].dtype == "float32"
        for s in manifest.state:
            assert ins[s.input].dtype == "float32" and outs[s.output].shape == ("batch", *s.shape)
    has_half = any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(out / "step.onnx")).graph.initializer)
    assert has_half == (precision == "fp16")


@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_on_gpu_targets(bundles, arch, precision, target):
    out, manifest = bundles(arch, precision, target)
    profile = get_profile(target)
    assert profile == get_profile("jetson-orin-nano-8gb") or target != "jetson"
    assert manifest.target["name"] == profile.name and manifest.max_streams == profile.default_max_streams
    assert manifest.validation["tensorrt_ops"] == "ok"
    assert manifest.validation["max_abs_logit_diff"] <= PRECISIONS[precision].atol
    assert "--stronglyTyped" in (out / "build_engine.sh").read_text()
    assert check_tensorrt_compat(onnx.load(str(out / "step.onnx")), profile) == []


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fused_graph_smaller_than_naive(bundles, ckpts, arch, tmp_path):
    from edgelm.checkpoint import load_model

    _, manifest = bundles(arch, "fp32")
    export_naive_step(load_model(ckpts[arch]), tmp_path / "naive.onnx")
    naive = len(onnx.load(str(tmp_path / "naive.onnx")).graph.node)
    assert manifest.graphs["step"].nodes < naive


@pytest.mark.parametrize("arch", list(ARCHS))
@torch.no_grad()
def test_fused_module_equals_model_step(arch):
    threads = torch.get_num_threads()
    torch.manual_seed(7)
    torch.set_num_threads(1)  # restored below: eager steps at batch 3 only spin with more
    model = build_model(arch, preset="tiny").eval()
    fused = fuse(model)
    ids = torch.randint(0, 256, (3, 20))
    st_m = model.init_state(3)
    st_f = list(st_m)
    for t in range(ids.shape[1]):
        lm, st_m = model.step(ids[:, t], st_m)
        lf, *st_f = fused(ids[:, t], *st_f)
        torch.testing.assert_close(lf, lm, atol=2e-5, rtol=1e-4)
    for a, b in zip(st_f, st_m):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ["lstm", "mamba"])
def test_prefill_leaves_the_state_stepping_leaves(bundles, arch):
    out, manifest = bundles(arch, "fp32")
    bundle = load_bundle(out)
    step, prefill = session(out / "step.onnx"), session(out / "prefill.onnx")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (2, bundle.prefill_chunk), dtype=np.int64)
    state = {s.input: rng.standard_normal((2, *s.shape)).astype(np.float32) * 0.5 for s in bundle.state}
    p_out = prefill.run(None, {"byte_ids": ids, **state})
    for t in range(ids.shape[1]):
        s_out = step.run(None, {"byte_ids": ids[:, t], **state})
        state = {s.input: v for s, v in zip(bundle.state, s_out[1:])}
    np.testing.assert_allclose(p_out[0], s_out[0], atol=1e-5)
    for s, v in zip(bundle.state, p_out[1:]):
        np.testing.assert_allclose(v, state[s.input], atol=1e-5)


@pytest.mark.parametrize("arch,target,precision", [("lstm", "h100", None), ("gru", "jetson-orin-nano-8gb", "fp32"),
                                                   ("rglru", "jetson-nano", None)])
def test_gpu_targets(ckpts, tmp_path, arch, target, precision):
    manifest = export_bundle(ckpts[arch], target, precision, tmp_path / "b", chunk=8)
    profile = get_profile(target)
    assert manifest.target["name"] == profile.name
    assert manifest.precision == (precision or profile.default_precision)
    assert manifest.max_streams == profile.default_max_streams
    assert manifest.opset == target_opset(profile, 17)
    assert manifest.validation["tensorrt_ops"] == "ok"
    script = (tmp_path / "b" / "build_engine.sh").read_text()
    assert "--onnx=step.onnx" in script and "--onnx=prefill.onnx" in script


def test_opset_follows_the_targets_parser():
    assert target_opset(get_profile("jetson-nano"), 17) == 13  # TensorRT 8.2 parser: opset <= 13
    assert target_opset(get_profile("jetson"), 17) == 17
    assert target_opset(get_profile("cpu"), 17) == 17


# -- TensorRT compatibility checks on hand-made graphs --------------------------------------------
def _graph(nodes, inits=(), elem=TensorProto.FLOAT, opset=17):
    x = helper.make_tensor_value_info("x", elem, ["batch", 4])
    y = helper.make_tensor_value_info("y", elem, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _qdq(zero_type):
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", zero_type, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    return _graph(nodes, [scale, zero], opset=19)


def test_compat_clean_graph_passes():
    assert check_tensorrt_compat(_graph([helper.make_node("Sigmoid", ["x"], ["y"])]), get_profile("jetson")) == []


def test_compat_fp16_on_a_target_without_it():
    g = _graph([helper.make_node("Sigmoid", ["x"], ["y"])], elem=TensorProto.FLOAT16)
    no_fp16 = dataclasses.replace(get_profile("cpu"), precisions=("fp32",))
    problems = check_tensorrt_compat(g, no_fp16)
    assert any("fp16" in p for p in problems)
    assert check_tensorrt_compat(g, get_profile("jetson")) == []


def test_compat_int8_and_fp8():
    int8 = _qdq(TensorProto.INT8)
    assert any("int8" in p for p in check_tensorrt_compat(int8, get_profile("jetson-nano")))
    assert not any("int8" in p for p in check_tensorrt_compat(int8, get_profile("jetson-orin-nano-8gb")))
    fp8 = _qdq(TensorProto.FLOAT8E4M3FN)
    assert any("fp8" in p for p in check_tensorrt_compat(fp8, get_profile("jetson-orin-nano-8gb")))
    assert check_tensorrt_compat(fp8, get_profile("h100")) == []


def test_compat_unsupported_op_is_named():
    g = _graph([helper.make_node("Unique", ["x"], ["y"])])
    problems = check_tensorrt_compat(g, get_profile("jetson"))
    assert problems and "Unique" in problems[0] and "unsupported" in problems[0]
    g = _graph([helper.make_node("Gelu", ["x"], ["y"])], opset=20)
    assert any("Gelu" in p and "TensorRT 10" in p for p in check_tensorrt_compat(g, get_profile("jetson-xavier-nx")))


def test_compat_opset_too_new_for_old_parser():
    g = _graph([helper.make_node("Sigmoid", ["x"], ["y"])], opset=17)
    assert any("opset 17" in p for p in check_tensorrt_compat(g, get_profile("jetson-nano")))
