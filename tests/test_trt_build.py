"""export/trt_build.py (and the tensorrt runtime backend) without a GPU: mypy against tensorrt-stubs, the no-TensorRT error, the pure
helpers, build_engine.sh, and build_engine's control flow against a fake `tensorrt` module."""

import dataclasses
import hashlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edgelm.devices import get_profile
from edgelm.errors import EdgelmError
from edgelm.export import trt_build
from edgelm.export.trt_build import (BuilderApi, build_engine, build_engine_script, profile_shapes, trtexec_args,
                                     workspace_bytes)
from edgelm.runtime import manifest as fmt
from edgelm.runtime.bundle import load_bundle
from edgelm.runtime.manifest import GraphSpec, Manifest, StateTensor, graph_io, state_io
from trt_stubs_check import run_mypy as _mypy, trt_stubs  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parents[1]
EDGELM = Path(sys.executable).parent / "edgelm"
MIB = 1 << 20
STATE = tuple(StateTensor(n, *state_io(n), (128,)) for n in ("0.h", "0.c"))
STEP_INPUTS = graph_io(STATE)[0]
CHUNK = 4


# ---------------------------------------------------------------- mypy against tensorrt-stubs

@pytest.mark.parametrize("module", ["export/trt_build.py", "runtime/backends/trt.py"])
def test_trt_build_typechecks_against_tensorrt_stubs(trt_stubs, module):
    res = _mypy(trt_stubs, REPO / module)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_check_catches_tensorrt_api_typos(trt_stubs, tmp_path):
    """The check above is real: a misspelt TensorRT call fails it."""
    src = (REPO / "export" / "trt_build.py").read_text()
    bad = src.replace("builder.build_serialized_network(", "builder.build_serialised_network(")
    assert bad != src
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "trt_build.py").write_text(bad)
    res = _mypy(trt_stubs, tmp_path / "export" / "trt_build.py")
    assert res.returncode == 1 and '"Builder" has no attribute "build_serialised_network"' in res.stdout
    float_flag = src.replace("ignore_mismatch=False", "ignore_mismatch=0.5", 1)  # bool in the (repaired) stubs
    assert float_flag != src
    (tmp_path / "export" / "trt_build.py").write_text(float_flag)
    res = _mypy(trt_stubs, tmp_path / "export" / "trt_build.py")
    assert res.returncode == 1 and 'has incompatible type "float"; expected "bool"' in res.stdout


def test_trt_standin_typechecks_against_tensorrt_stubs(trt_stubs, tmp_path):
    """tests/trt_standin.py subclasses the stubs' classes: its methods are checked as overrides, so
    the stand-in the backend tests run against cannot drift from the TensorRT 10 API. (The 8.x
    stand-ins, which have no stubs to follow, are type-checked as code too.)"""
    for standin in ("trt_standin.py", "trt_standin_v8.py"):
        res = _mypy(trt_stubs, REPO / "tests" / standin)
        assert res.returncode == 0, res.stdout + res.stderr
    src = (REPO / "tests" / "trt_standin.py").read_text()
    for old, new, error in [("def set_tensor_address(self, name: str, memory: int)",
                             "def set_tensor_address(self, name: str, memory: int, size: int)",
                             'Signature of "set_tensor_address" incompatible with supertype'),
                            ("def get_tensor_mode(self, name: str)", "def get_tensor_io_mode(self, name: str)",
                             'Method "get_tensor_io_mode" is marked as an override, but no base method')]:
        assert src.count(old) == 1
        (tmp_path / "trt_standin.py").write_text(src.replace(old, new))
        res = _mypy(trt_stubs, tmp_path / "trt_standin.py")
        assert res.returncode == 1 and error in res.stdout, res.stdout


# ---------------------------------------------------------------- bundles

def _manifest(precision: str = "fp16", max_streams: int = 16, target: str = "jetson-orin-nano-8gb") -> Manifest:
    graphs = {"step": GraphSpec("step.onnx", 1, *graph_io(STATE), None, ("weights.bin",)),
              "prefill": GraphSpec("prefill.onnx", 1, *graph_io(STATE, CHUNK), CHUNK, ("weights.bin",))}
    return Manifest(arch="lstm", config={}, params=1, precision=precision, opset=17, max_streams=max_streams,
                    target=get_profile(target).to_dict(), state=STATE, graphs=graphs, files={},
                    edgelm_version="test")


FILES = {"step.onnx": b"not really onnx", "prefill.onnx": b"not really onnx either", "weights.bin": b"W"}


def _write_bundle(path: Path, target: str = "jetson-orin-nano-8gb", max_streams: int = 16) -> Path:
    """A bundle whose graphs TensorRT never really parses here (the fake below takes any bytes)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in FILES.items():
        (path / name).write_bytes(data)
    files = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    fmt.write(path, dataclasses.replace(_manifest(max_streams=max_streams, target=target), files=files))
    return path


def test_build_without_tensorrt_says_where_to_build(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # like stubs-only
    bundle = _write_bundle(tmp_path / "b")
    with pytest.raises(EdgelmError, match=r"TensorRT is not installed here; copy .*b to the device "
                                          r"and run `edgelm build .*b` there"):
        build_engine(bundle)


def test_cli_build_without_tensorrt_exits_2(tmp_path):
    if not EDGELM.exists():
        pytest.skip(f"{EDGELM} not installed")
    if trt_build._tensorrt_available():
        pytest.skip("TensorRT is installed here")
    bundle = _write_bundle(tmp_path / "b")
    res = subprocess.run([str(EDGELM), "build", str(bundle)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: TensorRT is not installed here; copy {bundle} to the device")
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_build_missing_bundle_exits_2(tmp_path):
    if not EDGELM.exists():
        pytest.skip(f"{EDGELM} not installed")
    res = subprocess.run([str(EDGELM), "build", str(tmp_path / "nope")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "does not exist" in res.stderr


# ---------------------------------------------------------------- pure helpers

def test_profile_shapes_from_max_streams():
    shapes = profile_shapes(STEP_INPUTS, 32)
    assert shapes["byte_ids"] == ((1,), (8,), (32,))
    assert shapes["state_in.0.h"] == ((1, 128), (8, 128), (32, 128))
    assert profile_shapes(STEP_INPUTS, 4)["state_in.0.c"] == ((1, 128), (4, 128), (4, 128))
    assert profile_shapes(STEP_INPUTS, 1)["byte_ids"] == ((1,), (1,), (1,))
    prefill = profile_shapes(graph_io(STATE, CHUNK)[0], 32)
    assert prefill["byte_ids"] == ((1, CHUNK), (8, CHUNK), (32, CHUNK))


@pytest.mark.parametrize("version, strongly_typed, flags", [
    ((8, 2), False, {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}),  # weakly typed: precision by flag
    ((8, 6), False, {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}),
    ((9, 0), True, {"fp32": [], "fp16": [], "int8": []}),  # STRONGLY_TYPED: precision is the graph's
    ((10, 3), True, {"fp32": [], "fp16": [], "int8": []}),
    ((11, 0), True, {"fp32": [], "fp16": [], "int8": []})])
def test_builder_precision_flags_by_tensorrt_version(version, strongly_typed, flags):
    api = BuilderApi(version)
    assert api.strongly_typed == strongly_typed
    assert {p: api.precision_flags(p) for p in flags} == flags


def test_workspace_from_device_memory_budget():
    nano = get_profile("jetson-nano")  # 4 GiB x 0.5 app share / 4
    assert workspace_bytes(nano) == 512 * MIB
    orin = get_profile("jetson-orin-nano-8gb")  # 8 GiB x 0.6 / 4 = 1228.8 MiB -> whole MiB
    assert workspace_bytes(orin) == 1228 * MIB
    assert workspace_bytes(get_profile("h200")) == 4096 * MIB  # capped
    assert workspace_bytes(dataclasses.replace(nano, memory_gib=0.5)) == 256 * MIB  # floor


# ---------------------------------------------------------------- build_engine.sh

def _bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "build_engine.sh"
    path.write_text(script)
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("target", ["jetson-orin-nano-4gb", "jetson-orin-nano-8gb", "jetson-orin-nx",
                                    "jetson-agx-orin", "jetson-thor", "rtx-3060", "h100", "h200"])
def test_script_for_tensorrt_10_and_11_targets(target, tmp_path):
    profile = get_profile(target)
    script = build_engine_script(_manifest(max_streams=profile.default_max_streams), profile)
    _bash_syntax_ok(script, tmp_path)
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    assert "/usr/src/tensorrt/bin/trtexec" in script and "command -v trtexec" in script
    assert "--onnx=step.onnx" in script and "--saveEngine=engine.plan" in script
    assert "--onnx=prefill.onnx" in script and "--saveEngine=engine.prefill.plan" in script
    assert f"--minShapes=byte_ids:1x{CHUNK},state_in.0.h:1x128" in script
    assert "--stronglyTyped" in script and "--fp16" not in script and "--int8" not in script
    n = profile.default_max_streams
    opt = min(8, n)
    assert "--minShapes=byte_ids:1,state_in.0.h:1x128,state_in.0.c:1x128" in script
    assert f"--optShapes=byte_ids:{opt},state_in.0.h:{opt}x128,state_in.0.c:{opt}x128" in script
    assert f"--maxShapes=byte_ids:{n},state_in.0.h:{n}x128,state_in.0.c:{n}x128" in script
    assert f"--memPoolSize=workspace:{workspace_bytes(profile) // MIB}M" in script
    assert "--timingCacheFile=timing.cache" in script
    assert f"--builderOptimizationLevel={profile.builder_optimization_level}" in script


def test_script_for_tensorrt_8_targets(tmp_path):
    nano = build_engine_script(_manifest(), get_profile("jetson-nano"))  # TensorRT 8.2
    _bash_syntax_ok(nano, tmp_path)
    assert "--fp16" in nano and "--stronglyTyped" not in nano
    assert "--workspace=512" in nano and "--memPoolSize" not in nano  # memPoolSize is 8.4+
    assert "--builderOptimizationLevel" not in nano  # 8.6+
    xavier = trtexec_args(_manifest(precision="fp32"), get_profile("jetson-xavier-nx"))  # TensorRT 8.5
    assert "--fp16" not in xavier and "--stronglyTyped" not in xavier
    assert any(a.startswith("--memPoolSize=workspace:") for a in xavier)
    assert not any(a.startswith("--builderOptimizationLevel") for a in xavier)


def test_script_refuses_cpu_targets():
    with pytest.raises(EdgelmError, match="has no TensorRT"):
        build_engine_script(_manifest(), get_profile("cpu-x86"))


def test_script_runs_trtexec_with_its_arguments(tmp_path):
    """Run the script with a stand-in trtexec that prints its arguments."""
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    profile = get_profile("jetson-agx-orin")
    script = tmp_path / "bundle" / "build_engine.sh"
    script.parent.mkdir()
    script.write_text(build_engine_script(_manifest(), profile))
    res = subprocess.run(["bash", str(script), "--verbose"], capture_output=True, text=True,
                         env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # runs in the bundle directory, once per engine
    step = trtexec_args(_manifest(), profile, "step") + ["--verbose"]
    prefill = trtexec_args(_manifest(), profile, "prefill") + ["--verbose"]
    assert lines == [str(script.parent), *step, str(script.parent), *prefill]


# ---------------------------------------------------------------- build_engine against a fake tensorrt

def _fake_tensorrt(calls: dict, trt11: bool = False, parse_ok: bool = True, build_ok: bool = True):
    """Just enough of the TensorRT Python API to run build_engine's control flow."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0" if trt11 else "10.3.0.30"

    class _Severity(int):
        @property
        def name(self):
            return ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"][int(self)]

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=_Severity(0), ERROR=_Severity(1),
                                         WARNING=_Severity(2), INFO=_Severity(3), VERBOSE=_Severity(4))

        def __init__(self):
            pass

    class Config:
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def add_optimization_profile(self, profile):
            calls["shapes"] = profile.shapes
            return 0

        def create_timing_cache(self, data):
            calls.setdefault("cache_in", []).append(bytes(data))
            return data

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"CACHE")

    class OptProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            calls["flags"] = flags
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            calls["opt_level"] = config.builder_optimization_level
            if not build_ok:
                self.logger.log(ILogger.Severity.ERROR, "fake: no tactic for node 7")
                return None
            return bytearray(b"PLAN")

    class ParserError:
        def node(self):
            return 3

        def node_operator(self):
            return "Loop"

        def desc(self):
            return "operation not supported within a loop body"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse(self, model, path):
            calls.setdefault("onnx", []).append((bytes(model), path))
            return parse_ok

        def get_error(self, i):
            return ParserError()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            engine = types.SimpleNamespace(device_memory_size_v2=1234, device_memory_size=99)
            if trt11:
                engine.get_engine_stat = lambda stat: 4096
            return engine

    flags = {} if trt11 else {"STRONGLY_TYPED": 1}
    trt.__dict__.update(ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
                        Dims=lambda shape: tuple(shape), MemoryPoolType=types.SimpleNamespace(WORKSPACE="ws"),
                        NetworkDefinitionCreationFlag=types.SimpleNamespace(**flags))
    if trt11:
        trt.EngineStat = types.SimpleNamespace(TOTAL_WEIGHTS_SIZE=0)
    return trt


@pytest.mark.parametrize("trt11", [False, True])
def test_build_engine_flow_with_fake_tensorrt(tmp_path, monkeypatch, trt11):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls, trt11=trt11))
    bundle = _write_bundle(tmp_path / "b", max_streams=16)
    before = load_bundle(bundle).bundle_id
    arts = build_engine(bundle)
    assert [(a.file, a.graph, a.bytes) for a in arts] == [("engine.plan", "step", 4), ("engine.prefill.plan", "prefill", 4)]
    assert (bundle / "engine.plan").read_bytes() == (bundle / "engine.prefill.plan").read_bytes() == b"PLAN"
    # each graph parsed from its verified bytes, its weights found beside it
    assert calls["onnx"] == [(FILES[f], str(bundle.resolve() / f)) for f in ("step.onnx", "prefill.onnx")]
    assert calls["flags"] == (0 if trt11 else 2)
    profile = get_profile("jetson-orin-nano-8gb")
    assert calls["pool"] == ("ws", workspace_bytes(profile)) and calls["opt_level"] == 3
    assert calls["shapes"]["state_in.0.h"] == ((1, 128), (8, 128), (16, 128))  # the prefill build's, last
    assert calls["shapes"]["byte_ids"] == ((1, CHUNK), (8, CHUNK), (16, CHUNK))
    assert (bundle / "timing.cache").read_bytes() == b"CACHE"
    loaded = load_bundle(bundle)  # the build changed neither files nor the id; engines are recorded
    assert loaded.bundle_id == before and "engine.plan" not in loaded.manifest.files
    step = loaded.artifact("step")
    assert step.sha256 == hashlib.sha256(b"PLAN").hexdigest() and step.bundle_id == before
    assert loaded.read_artifact(step) == b"PLAN"
    assert step.info["device_memory_bytes"] == 1234 and step.info["weights_bytes"] == (4096 if trt11 else None)
    assert step.info["tensorrt_version"] == ("11.0.0" if trt11 else "10.3.0.30") and step.info["built_on"]
    assert step.info["tensorrt_api"] == {"network_flags": [] if trt11 else ["STRONGLY_TYPED"], "precision_flags": [],
                                         "workspace": "set_memory_pool_limit", "optimization_level": 3}
    build_engine(bundle)  # rebuild reuses the timing cache
    assert calls["cache_in"] == [b"", b"CACHE", b"CACHE", b"CACHE"]


def test_build_engine_reports_parser_and_builder_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, parse_ok=False))
    bundle = _write_bundle(tmp_path / "b")
    with pytest.raises(EdgelmError, match=r"could not parse .*node 3 \(Loop\): operation not supported"):
        build_engine(bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, build_ok=False))
    with pytest.raises(EdgelmError, match="could not build the step engine .*ERROR: fake: no tactic for node 7"):
        build_engine(bundle)
    assert not (bundle / "engine.plan").exists()


def test_build_engine_refuses_cpu_bundles(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}))
    with pytest.raises(EdgelmError, match="cpu-x86 has no TensorRT"):
        build_engine(_write_bundle(tmp_path / "b", target="cpu-x86"))
