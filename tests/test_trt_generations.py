"""`edgelm build` and the tensorrt backend on each TensorRT Python API generation: 8.2 (Jetson Nano:
bindings only), 8.5 (Xavier: names beside bindings, no strong typing, no INT64) and 10 (Orin:
names only, strongly typed), against the stand-in of each (tests/trt_standin.py,
tests/trt_standin_v8.py), where a member a generation lacks raises AttributeError.

Each generation builds and runs its own Jetson target's bundle (models/lstm-tiny.pt) and must equal
the onnxruntime backend on it, with the I/O calls of its generation (counted by the stand-in) and
CUDA graphs replayed; the builder records what it set (workspace, precision flags, optimization
level), which must agree with build_engine.sh's trtexec flags. Byte ids: an int64 bundle on 8.x
runs through the INT32 binding its parser makes, an int32 (TensorRT 8 target) bundle on 10 as
int32. The last part plants the 10.x call (or the wrong version boundary) on 8.x and shows each fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import trt_standin as ts
from bundle_tools import replace_file
from edgelm.devices import get_profile
from edgelm.errors import EdgelmError
from edgelm.export.trt_build import trtexec_args, workspace_bytes
from edgelm.runtime import Sampling, Session
from edgelm.runtime.bundle import load_bundle
from test_trt_backend import plant

pytest.importorskip("torch")
pytest.importorskip("onnx")

MODELS = Path(__file__).resolve().parents[1] / "models"
TARGETS = {"8.2": "jetson-nano", "8.5": "jetson-xavier-nx", "10": "jetson-orin-nano-8gb"}  # each one's Jetson
CHUNK, STREAMS, TOL = 8, 4, 1e-5
PROMPTS = (b"def ", b"import os, sys\n\nclass Stream(object):\n    x")  # steps only; chunks + steps
ENQUEUE = {"8.2": ("execute_async_v2", "set_binding_shape"), "8.5": ("execute_async_v3", "set_input_shape"),
           "10": ("execute_async_v3", "set_input_shape")}
RECORDS = {  # what build_engine records for a bundle in its target's default precision (fp16)
    "8.2": {"network_flags": ["EXPLICIT_BATCH"], "precision_flags": ["FP16"], "workspace": "max_workspace_size",
            "optimization_level": None},
    "8.5": {"network_flags": ["EXPLICIT_BATCH"], "precision_flags": ["FP16"], "workspace": "set_memory_pool_limit",
            "optimization_level": None},
    "10": {"network_flags": ["STRONGLY_TYPED"], "precision_flags": [], "workspace": "set_memory_pool_limit",
           "optimization_level": 3}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(target, precision=None, model=lstm-tiny): the model exported for target (chunk 8,
    without the C build). Cached per module."""
    base, made = tmp_path_factory.mktemp("gen"), {}

    def get(target: str, precision: str | None = None, model: Path = MODELS / "lstm-tiny.pt") -> Path:
        from edgelm.export import export_bundle

        key = (target, precision, model)
        if key not in made:
            made[key] = base / f"{target}-{precision}-{model.stem}"
            export_bundle(model, target, precision, made[key], chunk=CHUNK, native=False)
        return made[key]
    return get


@pytest.fixture(scope="module")
def built(exported, tmp_path_factory):
    """built(target, api, precision=None, model=...): a copy of that export with engines built by the
    real build_engine on the `api` stand-in. Cached per module."""
    base, made = tmp_path_factory.mktemp("gen-built"), {}

    def get(target: str, api: str, precision: str | None = None, **kw) -> Path:
        key = (target, api, precision, *kw.values())
        if key not in made:
            made[key] = shutil.copytree(exported(target, precision, **kw), base / f"{len(made)}")
            ts.build_engines(made[key], api=api)
        return made[key]
    return get


@pytest.fixture(scope="module")
def reference():
    """reference(path): `generate` on the onnxruntime backend. Cached per bundle."""
    made: dict = {}

    def get(path: Path) -> dict:
        if path not in made:
            with Session.open(path, backend="onnxruntime", max_streams=STREAMS) as sess:
                made[path] = generate(sess)
        return made[path]
    return get


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """lstm-tiny quantized w8a8 (explicit Q/DQ graphs: TensorRT 8 builds them with the INT8 flag)."""
    from quant_fixtures import calibration_bytes

    from edgelm.checkpoint import save_model
    from edgelm.export.quant.run import prepare, quantize_calibrated

    out = tmp_path_factory.mktemp("int8")
    (out / "calib.txt").write_bytes(calibration_bytes())
    model, cal, texts, _ = prepare(MODELS / "lstm-tiny.pt", [out / "calib.txt"], None)
    entry, _, _ = quantize_calibrated(model, cal, texts, "w8a8", 64)  # the recipe alone, no report
    save_model(model, out / "lstm-w8a8.pt", extra={"quant": entry})
    return out / "lstm-w8a8.pt"


# ---------------------------------------------------------------- what must not depend on the backend

def generate(sess: Session) -> dict:
    """Greedy bytes and the logits after each prompt, and three sampled streams batched."""
    out: dict = {}
    for prompt in PROMPTS:
        with sess.stream(Sampling(temperature=0), prompt=prompt) as s:
            out[prompt] = s.logits.copy(), b"".join(s.generate(12))
    streams = [sess.stream(Sampling(temperature=0.8, top_k=40, seed=i), p) for i, p in enumerate((*PROMPTS, b""))]
    sched, batched = sess.scheduler(), [b""] * len(streams)
    for s in streams:
        sched.add(s, 10)
    for _ in range(12):
        for stream, data in sched.step():
            batched[streams.index(stream)] += data
    for s in streams:
        s.close()
    out["batched"] = batched
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got["batched"] == want["batched"] and all(got["batched"])
    for prompt in PROMPTS:
        np.testing.assert_allclose(got[prompt][0], want[prompt][0], atol=TOL, rtol=TOL, err_msg=repr(prompt))
        assert got[prompt][1] == want[prompt][1], prompt


def run_on(api: str, path: Path, want: dict) -> None:
    """Run `path`'s engines on the `api` stand-in: results equal `want` (onnxruntime's), through the
    generation's I/O calls, with CUDA graphs captured and replayed, every buffer freed."""
    with ts.installed(api=api) as gpu:
        with Session.open(path, backend="tensorrt", max_streams=STREAMS) as sess:
            assert sess.describe() == f"tensorrt {ts.API_VERSIONS[api]}"
            assert_same(generate(sess), want)
            assert sess.backend.device_memory_bytes > sess.backend.buffer_bytes
        dev = gpu.device
    enqueue, set_shape = ENQUEUE[api]
    assert dev.calls[enqueue] == 2 * dev.captures > 0 and dev.calls[set_shape] > 0
    assert dev.calls["execute_async_v3" if enqueue == "execute_async_v2" else "execute_async_v2"] == 0
    assert dev.graph_launches > 0 and dev.kernel_runs == dev.graph_launches + dev.captures
    assert not dev.allocations and dev.sticky is None


def manifest_ids_type(path: Path) -> str:
    return next(t.dtype for t in load_bundle(path).manifest.expected_io("step")[0] if t.name == "byte_ids")


def engine_ids_type(path: Path, api: str) -> str:
    """The byte_ids type the step engine reports, through the generation's API."""
    from edgelm.runtime.backends.trt import engine_io

    b = load_bundle(path)
    with ts.installed(api=api) as gpu:
        runtime = gpu.tensorrt.Runtime(gpu.tensorrt.Logger())
        engine = runtime.deserialize_cuda_engine(b.read_artifact(b.artifact("step")))
        return next(t.dtype for t in engine_io(engine)[0] if t.name == "byte_ids")


# ---------------------------------------------------------------- each generation on its Jetson

@pytest.mark.parametrize("api", list(TARGETS))
def test_each_generation_builds_and_runs_its_jetson_target(built, reference, api):
    path = built(TARGETS[api], api)
    run_on(api, path, reference(path))
    b = load_bundle(path)
    art = b.artifact("step")
    assert art.info["tensorrt_version"] == ts.API_VERSIONS[api] and art.info["tensorrt_api"] == RECORDS[api]
    head = ts.plan_header(b.read_artifact(art))
    assert head["api"] == api and head["precision_flags"] == RECORDS[api]["precision_flags"]
    assert head["strongly_typed"] == (api == "10") and head["optimization_level"] == RECORDS[api]["optimization_level"]
    assert head["workspace"] == workspace_bytes(get_profile(TARGETS[api]))


@pytest.mark.parametrize("api", list(TARGETS))
def test_edgelm_build_and_build_engine_sh_agree(built, api):
    """The Python builder sets what the trtexec script asks for on the same target."""
    path = built(TARGETS[api], api)
    b = load_bundle(path)
    used = b.artifact("step").info["tensorrt_api"]
    args = trtexec_args(b.manifest, get_profile(TARGETS[api]))
    assert ("--fp16" in args) == ("FP16" in used["precision_flags"])
    assert ("--stronglyTyped" in args) == ("STRONGLY_TYPED" in used["network_flags"])
    assert any(a.startswith("--workspace=") for a in args) == (used["workspace"] == "max_workspace_size")
    assert any(a.startswith("--builderOptimizationLevel") for a in args) == (used["optimization_level"] is not None)


@pytest.mark.parametrize("api", list(TARGETS))
def test_fp32_bundles_set_no_precision_flag(built, api):
    b = load_bundle(built(TARGETS[api], api, "fp32"))
    assert ts.plan_header(b.read_artifact(b.artifact("step")))["precision_flags"] == []


@pytest.mark.parametrize("api", ["8.2", "8.5"])
def test_int8_bundles_build_with_the_int8_flag_on_tensorrt_8(built, reference, int8_model, api):
    """Explicit Q/DQ graphs need BuilderFlag.INT8 on TensorRT 8 (weakly typed); the Xavier's int8
    graphs take int32 ids and pass the TensorRT 8 op, dtype and Q/DQ checks."""
    import onnx

    from edgelm.devices import get_profile
    from edgelm.export import check_tensorrt_compat

    path = built("jetson-xavier-nx", api, None, model=int8_model)
    b = load_bundle(path)
    assert b.manifest.precision == "int8" and {g.ids_dtype for g in b.manifest.graphs.values()} == {"int32"}
    assert [p for g in b.manifest.graphs.values() for p in check_tensorrt_compat(
        onnx.load(str(path / g.file), load_external_data=False), get_profile("jetson-xavier-nx"), str(path))] == []
    assert ts.plan_header(b.read_artifact(b.artifact("step")))["precision_flags"] == ["INT8"]
    if api == "8.5":  # Xavier's own TensorRT runs it
        run_on(api, path, reference(path))


# ---------------------------------------------------------------- byte ids: the engine's type decides

@pytest.mark.parametrize("api", ["8.2", "8.5"])
def test_an_int64_bundle_on_tensorrt_8_runs_through_an_int32_binding(built, reference, api):
    path = built(TARGETS["10"], api)  # an int64 bundle (Orin's), built where TensorRT has no INT64
    assert manifest_ids_type(path) == "int64" and engine_ids_type(path, api) == "int32"
    with ts.installed(api=api), Session.open(path, backend="tensorrt", max_streams=STREAMS) as sess:
        engine = sess.backend.engines["prefill"]
        assert engine.ids.dtype == np.int64 and engine.staged.dtype == np.int32  # converted on the host
    run_on(api, path, reference(path))


def test_an_int32_bundle_runs_on_tensorrt_10(built, reference):
    path = built(TARGETS["8.2"], "10")  # a TensorRT 8 target's bundle: int32 byte ids
    assert manifest_ids_type(path) == "int32" == engine_ids_type(path, "10")
    with ts.installed(api="10"), Session.open(path, backend="tensorrt", max_streams=STREAMS) as sess:
        engine = sess.backend.engines["step"]
        assert engine.staged is engine.ids and engine.ids.dtype == np.int32  # no conversion
    run_on("10", path, reference(path))


def test_an_engine_with_another_byte_id_type_is_still_refused(exported, tmp_path, monkeypatch):
    """Only int32 <-> int64 byte ids are tolerated: a float byte_ids engine is another model's."""
    path = shutil.copytree(exported(TARGETS["8.2"]), tmp_path / "b")  # int32 byte ids
    with ts.installed(api="10"):
        monkeypatch.setattr(ts, "ONNX_TYPES", {**ts.ONNX_TYPES, 6: ts.DataType.FLOAT})  # the parser: int32 -> FLOAT
        ts.build_engines(path)
        monkeypatch.undo()
        with pytest.raises(EdgelmError, match=r"input byte_ids is \['batch'\] float32, the manifest says "
                                              r"\['batch'\] int32"):
            Session.open(path, backend="tensorrt", max_streams=STREAMS)


# ---------------------------------------------------------------- the stand-ins' surfaces

SURFACE = {  # members of the module, an engine, its context, a builder config: absent / present
    "8.2": {"absent": ["MemoryPoolType", "TensorIOMode", "DataType.INT64",
                       "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "engine.num_io_tensors",
                       "engine.get_tensor_dtype", "engine.device_memory_size_v2",
                       "context.set_input_shape", "context.set_tensor_address", "context.execute_async_v3",
                       "config.set_memory_pool_limit", "config.builder_optimization_level"],
            "present": ["engine.num_bindings", "engine.get_binding_dtype", "engine.device_memory_size",
                        "context.set_binding_shape", "context.execute_async_v2", "config.max_workspace_size",
                        "BuilderFlag.FP16", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]},
    "8.5": {"absent": ["DataType.INT64", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "engine.device_memory_size_v2",
                       "config.builder_optimization_level"],
            "present": ["engine.num_bindings", "engine.num_io_tensors", "context.execute_async_v2",
                        "context.execute_async_v3", "config.set_memory_pool_limit", "config.max_workspace_size",
                        "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT"]},
    "10": {"absent": ["engine.num_bindings", "engine.get_binding_dtype", "context.set_binding_shape",
                      "context.execute_async_v2", "config.max_workspace_size"],
           "present": ["DataType.INT64", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
                       "engine.device_memory_size_v2", "context.execute_async_v3",
                       "config.builder_optimization_level", "config.set_memory_pool_limit"]},
}


@pytest.mark.parametrize("api", list(SURFACE))
def test_each_standin_has_exactly_its_generations_members(built, api):
    b = load_bundle(built(TARGETS[api], api))
    with ts.installed(api=api) as gpu:
        trt = gpu.tensorrt
        engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b.read_artifact(b.artifact("step")))
        objects = {"": trt, "engine": engine, "context": engine.create_execution_context(),
                   "config": trt.Builder(trt.Logger()).create_builder_config()}
        assert trt.__version__ == ts.API_VERSIONS[api]
        for where, present in (("absent", False), ("present", True)):
            for member in SURFACE[api][where]:
                owner, _, name = member.rpartition(".")
                assert hasattr(objects[owner] if owner in objects else getattr(trt, owner), name) == present, member
        if "config.builder_optimization_level" in SURFACE[api]["absent"]:
            with pytest.raises(AttributeError):  # setting it fails too, as on a pybind11 object
                objects["config"].builder_optimization_level = 3


@pytest.mark.parametrize("api", ["8.2", "8.5"])
def test_tensorrt_8_parser_needs_explicit_batch_and_makes_int64_inputs_int32(exported, api):
    onnx_path = exported(TARGETS["10"]) / "step.onnx"  # int64 byte ids
    with ts.installed(api=api) as gpu:
        trt = gpu.tensorrt
        logger = trt.Logger(trt.Logger.VERBOSE)
        implicit = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
        assert not implicit.parse(onnx_path.read_bytes(), str(onnx_path))
        error = implicit.get_error(0)
        assert "explicit batch dimension" in error.desc() and not hasattr(error, "node_operator")
        network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        assert trt.OnnxParser(network, logger).parse(onnx_path.read_bytes(), str(onnx_path))
        ids = next(t for t in network.graph.tensors if t.name == "byte_ids")
        assert (ids.dtype, ids.graph_dtype) == (int(trt.DataType.INT32), "int64")
        assert any("Adding network input: byte_ids with dtype: Int32" in m for m in logger.messages)


@pytest.mark.parametrize("api, fmt", [("8.2", r"node -1: failed to parse"), ("8.5", r"node -1: failed to parse"),
                                      ("10", r"node -1 \(\): failed to parse")])
def test_parser_errors_in_each_generations_terms(exported, tmp_path, api, fmt):
    """8.x ParserError has no node_operator (9.1+): the message names the node and the text only."""
    path = shutil.copytree(exported(TARGETS[api]), tmp_path / "b")
    replace_file(path, "step.onnx", b"not an onnx model")
    with ts.installed(api=api), pytest.raises(EdgelmError, match=rf"could not parse .*step.onnx: {fmt}"):
        ts.build_engines(path)


# ---------------------------------------------------------------- planted bugs are caught

TRT, BUILD = "edgelm.runtime.backends.trt", "edgelm.export.trt_build"
BUGS = {  # name: (module, old, new, generation it must fail on[, target: its own by default])
    "none on 8.2": (TRT, "BACKEND = TrtBackend", "BACKEND = TrtBackend", "8.2"),
    "none on 8.5": (TRT, "BACKEND = TrtBackend", "BACKEND = TrtBackend", "8.5"),
    "10.x name API on 8.2": (TRT, "NAMED_IO = (8, 5)", "NAMED_IO = (8, 0)", "8.2"),
    "bindings API on 8.5": (TRT, "NAMED_IO = (8, 5)", "NAMED_IO = (9, 0)", "8.5"),
    "execute_async_v3 with bindings": (
        TRT, "return bool(self.ctx.execute_async_v2(bindings=self.pointers, stream_handle=stream))",
        "return self.ctx.execute_async_v3(stream)", "8.2"),
    "binding shapes not set": (TRT, "            self.ctx.set_binding_shape(index, shape)\n",
                               "            pass\n", "8.2"),
    "binding pointers reversed": (TRT, "self.pointers[index] = address",
                                  "self.pointers[len(self.pointers) - 1 - index] = address", "8.2"),
    "int64 ids fed to an INT32 binding": (TRT, "self.staged = ids if ids.dtype == ids_type else",
                                          "self.staged = ids if True else", "8.2", TARGETS["10"]),
    "device_memory_size_v2 on 8.x": (TRT, "MEMORY_V2 = (10, 1)", "MEMORY_V2 = (8, 0)", "8.5"),
    "no EXPLICIT_BATCH on 8.x": (BUILD, "EXPLICIT_BATCH_ONLY = (10, 0)", "EXPLICIT_BATCH_ONLY = (8, 0)", "8.2"),
    "memory pools on 8.2": (BUILD, "MEMORY_POOLS = (8, 4)", "MEMORY_POOLS = (8, 0)", "8.2"),
    "optimization level on 8.5": (BUILD, "OPTIMIZATION_LEVELS = (8, 6)", "OPTIMIZATION_LEVELS = (8, 5)", "8.5"),
    "no precision flag on 8.x": (BUILD, "STRONG_TYPING = (9, 0)", "STRONG_TYPING = (8, 0)", "8.5"),
    "built engine's device_memory_size_v2 on 8.x": (BUILD, "ENGINE_MEMORY_V2 = (10, 1)", "ENGINE_MEMORY_V2 = (8, 0)",
                                                    "8.2"),
}


def check_generation(api: str, path: Path, want: dict) -> None:
    """build_engine on the api's stand-in records its generation's calls, and the engines run right."""
    with ts.installed(api=api):
        ts.build_engines(path)
    assert load_bundle(path).artifact("step").info["tensorrt_api"] == RECORDS[api]
    run_on(api, path, want)


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_generation_bug_is_caught(exported, reference, tmp_path, monkeypatch, bug):
    module, old, new, api, *target = BUGS[bug]
    src = exported(*(target or [TARGETS[api]]))
    want = reference(src)  # onnxruntime's, before the planted module is in place
    plant(monkeypatch, module, old, new)
    path = shutil.copytree(src, tmp_path / "b")
    if bug.startswith("none"):
        check_generation(api, path, want)
    else:
        with pytest.raises((AssertionError, EdgelmError, AttributeError, TypeError)):
            check_generation(api, path, want)


def test_planted_parser_error_call_is_caught(exported, tmp_path, monkeypatch):
    """node_operator() exists from 9.1: calling it on 8.2 fails where the 8.x message is expected."""
    plant(monkeypatch, BUILD, "PARSER_OPERATOR = (9, 1)", "PARSER_OPERATOR = (8, 0)")
    path = shutil.copytree(exported(TARGETS["8.2"]), tmp_path / "b")
    replace_file(path, "step.onnx", b"not an onnx model")
    with ts.installed(api="8.2"), pytest.raises(AttributeError, match="node_operator"):
        ts.build_engines(path)
