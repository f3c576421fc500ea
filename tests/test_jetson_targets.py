"""Bundles for every Jetson generation: TensorRT 8 targets (Nano: 8.2, Xavier: 8.5) get int32 byte
ids and graphs that pass the TensorRT 8 op and dtype check; the Nano's documented path (the C
library on its Cortex-A57 cores) runs the int32 bundle, cross-compiled and under qemu-user."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bundle_tools import copy_bundle, edit_manifest
from test_native import PROMPT, _example

from edgelm.devices import get_profile
from edgelm.errors import EdgelmError
from edgelm.export import check_tensorrt_compat, export_bundle
from edgelm.export.graph_passes import narrow_byte_ids
from edgelm.runtime import GREEDY, Session
from edgelm.runtime.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TRT8 = ("jetson-nano", "jetson-xavier-nx", "jetson-agx-xavier")


def _greedy(bundle: Path, backend: str = "onnxruntime", n: int = 96) -> bytes:
    with Session.open(bundle, backend=backend) as sess:
        return b"".join(sess.stream(GREEDY, PROMPT).generate(n))


def _graph_problems(bundle: Path, target: str) -> list[str]:
    m = load_bundle(bundle).manifest
    return [p for g in m.graphs.values()
            for p in check_tensorrt_compat(onnx.load(str(bundle / g.file), load_external_data=False),
                                           get_profile(target), str(bundle))]


def test_only_tensorrt_8_targets_take_int32_ids():
    assert {p.name for p in map(get_profile, TRT8) if p.byte_ids_dtype == "int32"} == set(TRT8)
    assert {get_profile(t).byte_ids_dtype for t in ("jetson-orin-nx", "jetson-thor", "h100", "cpu-x86")} == {"int64"}


# Every architecture at the Nano's opset 13 (the strictest parser), two at the Xavier's 17.
@pytest.mark.parametrize("arch, target, opset", [*[(a, "jetson-nano", 13) for a in ("lstm", "gru", "mingru", "mamba", "rglru")],
                                                ("lstm", "jetson-xavier-nx", 17), ("mamba", "jetson-xavier-nx", 17)])
def test_tensorrt_8_bundles_have_int32_ids_and_pass_the_tensorrt_8_check(tmp_path, arch, target, opset):
    """The default (fp16) bundle for a Nano (TensorRT 8.2) and a Xavier (8.5): int32 byte ids in
    the manifest and in both ONNX graphs, the opset the parser reads, and nothing it rejects (ops,
    dtypes, I/O types)."""
    out = tmp_path / "b"
    m = export_bundle(MODELS / f"{arch}-tiny.pt", target, None, out)
    assert m.precision == "fp16" and m.opset <= opset
    for spec in m.graphs.values():
        graph = onnx.load(str(out / spec.file), load_external_data=False)
        ids = next(i for i in graph.graph.input if i.name == "byte_ids")
        assert spec.ids_dtype == "int32" and ids.type.tensor_type.elem_type == TensorProto.INT32
    assert _graph_problems(out, target) == []


def test_an_int64_graph_fails_the_tensorrt_8_check_and_passes_on_10(tmp_path):
    """The check that the int32 export satisfies can fail: a cpu bundle's int64 ids are what
    TensorRT 8 cannot bind, and are fine for TensorRT 10."""
    out = tmp_path / "cpu"
    export_bundle(MODELS / "lstm-tiny.pt", "cpu", "fp32", out, native=False)
    problems = _graph_problems(out, "jetson-xavier-nx")  # opset 17: only the ids fail
    assert problems and all("byte_ids is INT64" in p and "TensorRT 8" in p for p in problems), problems
    assert _graph_problems(out, "jetson-orin-nano-8gb") == []


def test_narrowing_refuses_ids_that_are_computed_on(tmp_path):
    """int32 ids are valid only where the ids move and end as Gather indices; an Add on them
    (int64 arithmetic) is named, not silently retyped."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [256, 4], np.zeros(1024, np.float32))
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    nodes = [helper.make_node("Add", ["byte_ids", "one"], ["shifted"], name="shift"),
             helper.make_node("Gather", ["table", "shifted"], ["logits"], name="embed")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("byte_ids", TensorProto.INT64, ["batch"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [table, one])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="byte_ids reach Add node shift"):
        narrow_byte_ids(path)
    nodes[0] = helper.make_node("Reshape", ["byte_ids", "shape"], ["shifted"], name="shape_only")
    graph = helper.make_graph(nodes, "g", list(graph.input), list(graph.output),
                              [table, helper.make_tensor("shape", TensorProto.INT64, [1], [-1])])
    onnx.save(helper.make_model(graph), str(path))
    narrow_byte_ids(path)
    narrowed = onnx.load(str(path))
    assert narrowed.graph.input[0].type.tensor_type.elem_type == TensorProto.INT32
    onnx.checker.check_model(narrowed, full_check=True)


def test_a_manifest_names_int64_or_int32_ids_only(tmp_path, bundle_for_nano):
    bad = copy_bundle(bundle_for_nano, tmp_path / "bad")

    def retype(raw):
        for g in raw["graphs"].values():
            g["inputs"][0]["dtype"] = "int16"
    edit_manifest(bad, retype)
    with pytest.raises(EdgelmError, match="do not match the manifest's state spec"):
        load_bundle(bad)


@pytest.fixture(scope="module")
def bundle_for_nano(tmp_path_factory) -> Path:
    """gru-tiny for the Nano at fp32: the precision its C library runs."""
    out = tmp_path_factory.mktemp("nano") / "b"
    export_bundle(MODELS / "gru-tiny.pt", "jetson-nano", "fp32", out)
    return out


def test_the_nano_bundle_runs_the_same_bytes_as_a_cpu_bundle(tmp_path, bundle_for_nano):
    """int32 ids change the graphs' interface, not what they compute: the runtime's bytes equal a
    cpu (int64) bundle's, and model.h declares the ids as int32_t for C apps."""
    cpu = tmp_path / "cpu"
    export_bundle(MODELS / "gru-tiny.pt", "cpu", "fp32", cpu, native=False)
    assert load_bundle(bundle_for_nano).manifest.graphs["prefill"].ids_dtype == "int32"
    assert "typedef int32_t edgelm_id_t;" in (bundle_for_nano / "model.h").read_text()
    assert _greedy(bundle_for_nano) == _greedy(cpu)


@pytest.mark.skipif(not all(shutil.which(t) for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64")),
                    reason="no aarch64 cross tools; `make test` installs gcc-aarch64-linux-gnu and qemu-user")
def test_the_nano_path_c_on_cortex_a57_under_qemu(tmp_path, bundle_for_nano):
    """What a Nano runs (its Python 3.6 cannot run edgelm): the bundle's C with the profile's
    -mcpu=cortex-a57, static for aarch64, under qemu-user: the same greedy bytes as the runtime."""
    flags = get_profile("jetson-nano").native_cflags
    arm = _example(bundle_for_nano, tmp_path / "arm", "aarch64-linux-gnu-gcc", ("-static", *flags))
    args = [str(bundle_for_nano / "weights.bin"), PROMPT.decode(), "96"]
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(arm), *args]
    got = subprocess.run(qemu, capture_output=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert got.stdout == _greedy(bundle_for_nano)
