"""The tensorrt backend, run: engines built by the real `build_engine` and run by
`Session.open(bundle, backend="tensorrt")` against tests/trt_standin.py (TensorRT and cudart
stand-ins that compute each step with the bundle's ONNX graph on fake device memory).

On bundles exported from the committed trained models for an H100, every result must equal the
onnxruntime backend's on the same bundle: the bytes of greedy, sampled and batched generation and
of snapshot/restore, and logits and state within 1e-5; on TensorRT 10 and, with engines rebuilt
there, on the 8.5 and 8.2 API generations (whose INT32 binding takes these int64 byte ids). The
last part plants bugs in copies of runtime/backends/trt.py and export/trt_build.py and shows these
checks fail on each. tests/test_trt_generations.py covers the Jetson targets of each generation.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import trt_standin as ts
from edgelm.errors import EdgelmError
from edgelm.runtime import Sampling, Session
from edgelm.runtime import snapshot as snap
from edgelm.runtime.bundle import load_bundle

pytest.importorskip("torch")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
CHUNK = 8
TOL = 1e-5
STREAMS = 4  # sessions open this many slots (the engines are built for the bundle's 512)
PROMPTS = {"short": b"def ",  # shorter than a chunk: steps only
           "aligned": b"import os, sys\n\n",  # two whole chunks: prefill only
           "unaligned": b"class Stream(object):\n    x"}  # three chunks and three steps


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """bundle(arch): models/{arch}-tiny.pt exported for an H100 (fp32, chunk 8), engines built as
    `edgelm build` builds them (the real build_engine against the stand-in). Cached per module."""
    from edgelm.export import export_bundle

    base, made = tmp_path_factory.mktemp("trt"), {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = base / arch
            export_bundle(REPO / "models" / f"{arch}-tiny.pt", "h100", "fp32", out, chunk=CHUNK)
            ts.build_engines(out)
            made[arch] = out
        return made[arch]
    return get


@pytest.fixture(scope="module")
def bundle_on(bundle, tmp_path_factory):
    """bundle_on(arch, api): a copy of bundle(arch) with its engines rebuilt by the `api` stand-in
    ("8.2", "8.5"; "10" is bundle(arch) itself). Cached per module."""
    base, made = tmp_path_factory.mktemp("trt-api"), {}

    def get(arch: str, api: str) -> Path:
        if api == "10":
            return bundle(arch)
        if (arch, api) not in made:
            made[arch, api] = shutil.copytree(bundle(arch), base / f"{arch}-{api}")
            ts.build_engines(made[arch, api], api=api)
        return made[arch, api]
    return get


@pytest.fixture(scope="module")
def reference(bundle):
    """reference(arch): the scenario's results from the onnxruntime backend on the same bundle."""
    made: dict = {}

    def get(arch: str) -> dict:
        if arch not in made:
            with Session.open(bundle(arch), backend="onnxruntime", max_streams=STREAMS) as sess:
                made[arch] = scenario(sess)
        return made[arch]
    return get


@pytest.fixture
def gpu():
    with ts.installed() as standin:
        yield standin


# ---------------------------------------------------------------- what a backend must reproduce

def scenario(sess: Session) -> dict:
    """Everything a session computes that must not depend on the backend."""
    r: dict = {}
    with sess.stream() as s:
        r["fresh"] = s.state, s.logits
    for name, prompt in PROMPTS.items():
        with sess.stream(prompt=prompt) as s:
            r[name] = s.state, s.logits
    with sess.stream() as s:  # the same prompt one byte at a time: the step engine only
        for byte in PROMPTS["unaligned"]:
            s.feed(bytes([byte]))
        r["bytewise"] = s.state, s.logits
    _close(r["bytewise"], r["unaligned"], "prefill chunks + steps vs stepping byte by byte")
    with sess.stream(Sampling(temperature=0, seed=1), prompt=b"def ") as s:
        r["greedy"] = b"".join(s.generate(16))
        blob = s.snapshot()
        r["greedy"] += b"".join(s.generate(16))
        r["greedy_state"] = s.state, s.logits
    r["snapshot"] = snap.unpack(sess.bundle, blob)
    with sess.restore(blob) as s:
        r["restored"] = b"".join(s.generate(16)), s.state
    with sess.stream(Sampling(temperature=0.8, seed=3), prompt=PROMPTS["unaligned"]) as s:
        r["sampled"] = b"".join(s.generate(24))
    r["batched"], r["batched_state"] = batched(sess)
    return r


def batched(sess: Session) -> tuple[list[bytes], list]:
    """Three streams through one scheduler; the third joins after three steps, one leaves early."""
    prompts = [b"", PROMPTS["aligned"], PROMPTS["unaligned"]]
    streams = [sess.stream(Sampling(temperature=0.8, top_k=40, seed=i), p) for i, p in enumerate(prompts)]
    sched, out = sess.scheduler(), [b"", b"", b""]
    sched.add(streams[0], 10)
    sched.add(streams[1], 20)
    for step in range(40):
        if step == 3:
            sched.add(streams[2], 14)
        for stream, data in sched.step():
            out[streams.index(stream)] += data
    states = [s.state for s in streams]
    for s in streams:
        s.close()
    return out, states


def _close(got, want, what: str) -> None:
    if isinstance(want, (bytes, int, dict)) or want is None:
        assert got == want, f"{what}: {got!r} != {want!r}"
    elif isinstance(want, np.ndarray):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL, err_msg=what)
    else:
        assert len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{what}[{i}]")


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        _close(got[key], want[key], key)


# ---------------------------------------------------------------- the stand-in itself

def _stub_enum(text: str, cls: str) -> dict[str, int]:
    pattern = rf"typing\.ClassVar\[(?:\w+\.)*{cls}\]\s+# value = <{cls}\.(\w+): (-?\d+)>"
    return {name: int(value) for name, value in re.findall(pattern, text)}


def test_standin_enums_match_the_stubs():
    """The stand-in's enums have tensorrt-stubs' (TensorRT 10) names and values."""
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-stubs is not installed")
    text = (Path(spec.origin).parent.parent / "tensorrt_bindings" / "tensorrt.pyi").read_text()
    for enum in (ts.DataType, ts.TensorIOMode, ts.MemoryPoolType, ts.NetworkDefinitionCreationFlag, ts.Severity,
                 ts.BuilderFlag):
        assert {m.name: m.value for m in enum} == _stub_enum(text, enum.__name__), enum.__name__
    assert ts.TRT_VERSION in (Path(spec.origin).parent.parent / "tensorrt" / "__init__.pyi").read_text()


def test_standin_keeps_device_memory_apart_and_refuses_bad_plans(bundle, gpu):
    cudart, err = gpu.cudart, gpu.cudart.cudaError_t
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    host, back = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    _, ptr = cudart.cudaMalloc(host.nbytes)
    _, stream = cudart.cudaStreamCreate()
    assert cudart.cudaMemcpyAsync(back.ctypes.data, ptr, 16, d2h, stream) == (err.cudaSuccess,)
    assert np.isnan(back).all()  # uninitialised device memory
    for args in [(host.ctypes.data, ptr, 16, h2d), (ptr, host.ctypes.data, 16, d2h),  # direction vs pointers
                 (ptr, host.ctypes.data, 20, h2d)]:  # past the allocation
        assert cudart.cudaMemcpyAsync(*args, stream) == (err.cudaErrorInvalidValue,)
    assert cudart.cudaMemcpyAsync(ptr, host.ctypes.data, 16, h2d, stream) == (err.cudaSuccess,)
    assert cudart.cudaMemcpyAsync(back.ctypes.data, ptr, 16, d2h, stream) == (err.cudaSuccess,)
    assert (back == host).all() and cudart.cudaFree(ptr) == (err.cudaSuccess,) and not gpu.device.allocations
    logger = gpu.tensorrt.Logger()
    plan = bytearray((bundle("lstm") / "engine.plan").read_bytes())
    assert gpu.tensorrt.Runtime(logger).deserialize_cuda_engine(bytes(plan)).num_io_tensors == 10
    plan[len(plan) // 2] ^= 1
    for bad in (b"not an engine", bytes(plan)):
        assert gpu.tensorrt.Runtime(logger).deserialize_cuda_engine(bad) is None
    assert len(logger.messages) == 2 and "corrupted" in logger.messages[1]


def test_engines_are_recorded_and_tied_to_their_graphs(bundle):
    path = bundle("lstm")
    b = load_bundle(path)
    files = b.manifest.files
    for graph, onnx_file in (("step", "step.onnx"), ("prefill", "prefill.onnx")):
        art = b.artifact(graph)
        assert art is not None and art.bundle_id == b.bundle_id and art.kind == "tensorrt-engine"
        assert art.info["tensorrt_version"] == ts.TRT_VERSION and art.info["device_memory_bytes"] > 0
        head = ts.plan_header(b.read_artifact(art))  # the plan holds exactly this bundle's graph
        assert head["onnx"]["sha256"] == files[onnx_file]
        assert [(w["name"], w["sha256"]) for w in head["weights"]] == [("weights.bin", files["weights.bin"])]
        assert head["profile"]["byte_ids"][2][0] == b.max_streams == 512 and head["strongly_typed"]
        assert head["optimization_level"] == b.manifest.target["builder_optimization_level"]
    cache = ts.TimingCache.parse((path / "timing.cache").read_bytes())
    assert cache is not None and cache.device == ts.GPU and len(cache.entries) == 2


# Every generation with a scenario of streams, sampling and snapshots (the 8.x runs feed int64
# bundles through INT32 bindings); tests/test_trt_generations.py runs each on its own Jetson's bundle.
@pytest.mark.parametrize("arch, api", [("lstm", "10"), ("mamba", "10"), ("mamba", "8.5"), ("lstm", "8.2")])
def test_tensorrt_equals_onnxruntime(bundle_on, reference, arch, api):
    path = bundle_on(arch, api)
    with ts.installed(api=api) as gpu, Session.open(path, backend="tensorrt", max_streams=STREAMS) as sess:
        assert sess.describe() == f"tensorrt {ts.API_VERSIONS[api]}"
        got = scenario(sess)
        assert_same(got, reference(arch))
        # snapshots cross backends both ways
        with Session.open(path, backend="onnxruntime", max_streams=STREAMS) as ort:
            for src, dst in ((sess, ort), (ort, sess)):
                with src.stream(Sampling(temperature=0.8, seed=5), prompt=PROMPTS["unaligned"]) as s:
                    blob = s.snapshot()
                    cont = b"".join(s.generate(12))
                with dst.restore(blob) as s:
                    assert b"".join(s.generate(12)) == cont
    dev = gpu.device
    assert dev.graph_launches > 0 and dev.kernel_runs == dev.graph_launches + dev.captures  # graphs replayed
    assert not dev.allocations and dev.sticky is None  # closing freed every device buffer
    enqueue, other = ("execute_async_v2", "execute_async_v3")[::1 if api == "8.2" else -1]
    assert dev.calls[enqueue] == 2 * dev.captures and not dev.calls[other]  # per (engine, batch): direct + captured


def test_auto_picks_tensorrt_with_the_bundles_streams(bundle, gpu):
    with pytest.raises(EdgelmError, match=r"^max_streams 513 exceeds the bundle's 512 \(the tensorrt engine's batch "
                                          r"limit\); re-export with a larger profile$"):
        Session.open(bundle("lstm"), max_streams=513)
    assert not gpu.device.allocations  # the refused backend was closed
    with Session.open(bundle("lstm")) as sess:  # engines built and TensorRT importable: auto = tensorrt
        assert sess.describe().startswith("tensorrt") and sess.max_streams == 512
        with sess.stream(Sampling(temperature=0), prompt=PROMPTS["unaligned"]) as s:
            assert len(b"".join(s.generate(8))) == 8
    assert not gpu.device.allocations


def test_the_tensorrt_backend_profiles_with_its_engine_memory(bundle, gpu):
    from edgelm.runtime.profile_report import ProfileOptions, profile_bundle

    opts = ProfileOptions(backend="tensorrt", streams=(1, 2), n_bytes=32, prompt_bytes=16)
    r = profile_bundle(bundle("lstm"), opts)
    assert r["backend"].startswith("tensorrt") and 0 < r["latency_us"]["backend_mean"] < r["latency_us"]["mean"]
    plans = [bundle("lstm") / f for f in ("engine.plan", "engine.prefill.plan")]
    assert all(p.is_file() for p in plans)
    assert r["engine_device_memory_bytes"] > 2 * 2 * 256 * 4  # two engines' logits buffers at least
    assert not gpu.device.allocations


@pytest.mark.parametrize("api", ["10", "8.2"])
@pytest.mark.parametrize("capture", ["refuse", "invalidate"])
def test_engines_that_cannot_be_captured_run_directly(bundle_on, reference, capture, api):
    with ts.installed(capture=capture, api=api) as gpu, \
            Session.open(bundle_on("lstm", api), backend="tensorrt", max_streams=STREAMS) as sess:
        assert_same(scenario(sess), reference("lstm"))
        assert gpu.device.graph_launches == 0 and gpu.device.captures == 4  # once per (engine, batch)


@pytest.mark.parametrize("device, why", [({"tensorrt_version": "10.14.1.48"}, "TensorRT version"),
                                         ({"api": "8.5"}, "TensorRT version"), ({"api": "8.2"}, "TensorRT version"),
                                         ({"compute_capability": "8.7"}, "GPU")])
def test_engine_from_another_tensorrt_or_gpu_is_refused(bundle, device, why):
    with ts.installed(**device):
        with pytest.raises(EdgelmError, match=r"cannot be deserialized here .*run `edgelm build` again"):
            Session.open(bundle("lstm"), backend="tensorrt", max_streams=STREAMS)


def test_timing_cache_from_another_gpu_is_not_used(bundle, tmp_path):
    """set_timing_cache(ignore_mismatch=False) refuses another GPU's cache: the build starts a fresh
    one, and the next build reuses it."""
    path = shutil.copytree(bundle("lstm"), tmp_path / "b")
    check_timing_cache(path, ts.build_engines)


def check_timing_cache(path: Path, build) -> None:
    (path / "timing.cache").write_bytes(ts.timing_cache_bytes(device="NVIDIA A100-SXM4-80GB"))
    build(path)
    cache = ts.TimingCache.parse((path / "timing.cache").read_bytes())
    assert cache is not None and cache.device == ts.GPU and "foreign:tactic" not in cache.entries
    first = dict(cache.entries)
    (path / "timing.cache").write_bytes(bytes(ts.TimingCache(ts.GPU, ts.TRT_VERSION, {**first, "ours": 2.0}).serialize()))
    build(path)
    assert ts.TimingCache.parse((path / "timing.cache").read_bytes()).entries == {**first, "ours": 2.0}


# ---------------------------------------------------------------- planted bugs are caught

def plant(monkeypatch, module: str, old: str, new: str):
    """A copy of `module` with `old` replaced by `new`, in sys.modules for this test only."""
    real = importlib.import_module(module)
    src = Path(real.__file__).read_text()
    assert src.count(old) == 1, f"{old!r} is not (once) in {real.__file__}"
    mod = types.ModuleType(module)
    mod.__file__, mod.__package__ = real.__file__, real.__package__
    monkeypatch.setitem(sys.modules, module, mod)
    exec(compile(src.replace(old, new), f"{real.__file__} (planted)", "exec"), mod.__dict__)
    return mod


TRT = "edgelm.runtime.backends.trt"
BUGS = {
    "none": ("BACKEND = TrtBackend", "BACKEND = TrtBackend"),  # the copy itself runs right
    "h2d kind reversed": ("cudaMemcpyKind.cudaMemcpyHostToDevice", "cudaMemcpyKind.cudaMemcpyDeviceToHost"),
    "h2d pointers reversed": ("cudaMemcpyAsync(dst, src.ctypes.data,", "cudaMemcpyAsync(src.ctypes.data, dst,"),
    "h2d copies device to host": (
        "kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice\n"
        "        _ck(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data,",
        "kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost\n"
        "        _ck(self.cudart.cudaMemcpyAsync(src.ctypes.data, dst,"),
    "state in/out addresses swapped": ("io.bind(s.input, src, (batch, *s.shape))\n            io.bind(s.output, dst)",
                                       "io.bind(s.input, dst, (batch, *s.shape))\n            io.bind(s.output, src)"),
    "ids/logits addresses swapped": (
        'io.bind("byte_ids", self.d_ids, (batch, *self.ids_shape))\n        io.bind("logits", self.d_logits)',
        'io.bind("byte_ids", self.d_logits, (batch, *self.ids_shape))\n        io.bind("logits", self.d_ids)'),
    "state shape batch 1": ("io.bind(s.input, src, (batch, *s.shape))", "io.bind(s.input, src, (1, *s.shape))"),
    "ids shape batch 1": ('io.bind("byte_ids", self.d_ids, (batch, *self.ids_shape))',
                          'io.bind("byte_ids", self.d_ids, (1, *self.ids_shape))'),
    "ids shape without the chunk": ('io.bind("byte_ids", self.d_ids, (batch, *self.ids_shape))',
                                    'io.bind("byte_ids", self.d_ids, (batch,))'),
    "state shape reversed": ("io.bind(s.input, src, (batch, *s.shape))", "io.bind(s.input, src, (*s.shape, batch))"),
    "prefill runs the step engine": ("self.engines[graph].run(", 'self.engines["step"].run('),
    "prefill engine from the step plan": ("_Engine(runtime, plan, self, g)", '_Engine(runtime, plans["step"], self, g)'),
    "prefill reads the step ids": ('ids = backend.ids_prefill if graph == "prefill" else backend.ids_step',
                                   'ids = backend.ids_step'),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_backend_bug_is_caught(bundle, reference, gpu, monkeypatch, bug):
    plant(monkeypatch, TRT, *BUGS[bug])

    def run() -> None:
        with Session.open(bundle("lstm"), backend="tensorrt", max_streams=STREAMS) as sess:
            assert_same(scenario(sess), reference("lstm"))
    if bug == "none":
        run()
    else:
        with pytest.raises((AssertionError, EdgelmError)):
            run()


BUILD_BUGS = {
    "none": ("ignore_mismatch=False):", "ignore_mismatch=False):"),
    "ignore_mismatch float": ("set_timing_cache(cache, ignore_mismatch=False)", "set_timing_cache(cache, ignore_mismatch=0.5)"),
    "ignore_mismatch float in the fallback": ('create_timing_cache(b""), ignore_mismatch=False)',
                                              'create_timing_cache(b""), ignore_mismatch=0.0)'),
    "ignore_mismatch true": ("set_timing_cache(cache, ignore_mismatch=False)", "set_timing_cache(cache, ignore_mismatch=True)"),
}


@pytest.mark.parametrize("bug", list(BUILD_BUGS))
def test_planted_build_bug_is_caught(bundle, tmp_path, monkeypatch, bug):
    trt_build = plant(monkeypatch, "edgelm.export.trt_build", *BUILD_BUGS[bug])
    path = shutil.copytree(bundle("lstm"), tmp_path / "b")

    def build(p: Path) -> None:
        with ts.installed():
            trt_build.build_engine(p)
    if bug == "none":
        check_timing_cache(path, build)
    else:
        with pytest.raises((AssertionError, TypeError)):
            check_timing_cache(path, build)
