"""The native C target: the generated C against the ONNX graphs it is generated from, the C ABI as
a C program uses it (examples/c/stream.c), the native backend under the runtime API, the same C
cross-compiled for aarch64 and run under qemu-user, and the build and trust errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bundle_tools import cli, copy_bundle, edit_manifest, one_line_error
from runtime_fixtures import ARCHS, bundle_dir  # noqa: F401

from edgelm.errors import EdgelmError
from edgelm.precision import QUANT_MEAN_ATOL
from edgelm.runtime import GREEDY, Session
from edgelm.runtime.backends import open_backend
from edgelm.runtime.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c" / "stream.c"
FP32_ATOL = 1e-4
PROMPT = b"def f(x):\n    return"


def _both(bundle, streams=4):
    return open_backend("native", bundle, "cpu", streams), open_backend("onnxruntime", bundle, "cpu", streams)


def _run(be, ids, states):
    for buf, s in zip(be.input_views(ids.shape[0]), states):
        buf[...] = s
    logits = be.run_resident(ids).copy()
    return logits, [v.copy() for v in be.input_views(ids.shape[0])]


@pytest.mark.parametrize("arch", ARCHS)
def test_native_computes_what_the_onnx_graphs_compute(bundle_dir, arch):
    """Steps at batch 1 and 4 from random states, carried 16 steps, then a prefill chunk."""
    bundle = load_bundle(bundle_dir(arch))
    assert bundle.manifest.validation["native"]["status"] == "ok" and bundle.native_library() is not None
    native, ort = _both(bundle)
    rng = np.random.default_rng(1)
    for batch in (1, 4):
        start = [rng.standard_normal((batch, *s.shape)).astype(np.float32) * 0.5 for s in bundle.state]
        sn, so = start, start
        for ids in rng.integers(0, 256, (16, batch)):
            (ln, sn), (lo, so) = _run(native, ids, sn), _run(ort, ids, so)
            assert np.abs(ln - lo).max() <= FP32_ATOL
            assert max(np.abs(a - b).max() for a, b in zip(sn, so)) <= 10 * FP32_ATOL
        chunk = rng.integers(0, 256, (batch, bundle.prefill_chunk))
        (ln, sn), (lo, so) = _run(native, chunk, start), _run(ort, chunk, start)
        assert np.abs(ln - lo).max() <= FP32_ATOL
        assert max(np.abs(a - b).max() for a, b in zip(sn, so)) <= 10 * FP32_ATOL
    native.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_bytes_equal_onnxruntime_and_snapshots_cross_backends(bundle_dir, arch):
    d = bundle_dir(arch)
    with Session.open(d, backend="native") as nat, Session.open(d, backend="onnxruntime") as ort:
        a, b = nat.stream(GREEDY, PROMPT), ort.stream(GREEDY, PROMPT)
        assert b"".join(a.generate(150)) == b"".join(b.generate(150))
        blob = a.snapshot()  # taken on native, restored on onnxruntime: the same state format
        assert b"".join(a.generate(40)) == b"".join(ort.restore(blob).generate(40))


def test_auto_prefers_native_only_for_its_own_bundle_and_cpu(bundle_dir, tmp_path):
    b = copy_bundle(bundle_dir("gru"), tmp_path / "b")
    timing = json.loads((b / "manifest.json").read_text())["built"]["model.so"]["info"]["timing"]
    with Session.open(b) as sess:  # what export measured decides
        want = "native C" if timing["native_us"] < timing["onnxruntime_us"] else "onnxruntime"
        assert sess.describe().startswith(want)
    edit_manifest(b, lambda m: m["built"]["model.so"]["info"].update(host="x86_64 another CPU 000000000000"),
                  reseal=False)
    with Session.open(b) as sess:  # a library for another CPU may not run here: never picked
        assert sess.describe().startswith("onnxruntime")
    with pytest.raises(EdgelmError, match="compiled for another CPU"):
        Session.open(b, backend="native")


def test_a_signed_bundle_loads_native_code_only_when_asked(bundle_dir, tmp_path, capsys):
    """The library is built on the device, outside the signature: with trusted keys, auto stays on
    onnxruntime; backend='native' is the explicit opt-in (its hash is still checked)."""
    b = copy_bundle(bundle_dir("gru"), tmp_path / "b")
    assert cli(capsys, "keygen", "-o", tmp_path / "key")[0] == 0
    assert cli(capsys, "sign", b, "--key", tmp_path / "key")[0] == 0
    keys = [tmp_path / "key.pub"]
    with Session.open(b, trusted_keys=keys) as sess:
        assert sess.describe().startswith("onnxruntime")
    with Session.open(b, trusted_keys=keys, backend="native") as sess:
        assert sess.describe().startswith("native C")


def test_a_tampered_library_is_refused(bundle_dir, tmp_path):
    b = copy_bundle(bundle_dir("lstm"), tmp_path / "b")
    lib = (b / "model.so").read_bytes()
    (b / "model.so").write_bytes(lib[:1000] + bytes([lib[1000] ^ 1]) + lib[1001:])
    with pytest.raises(EdgelmError, match="model.so is corrupted"):
        Session.open(b, backend="native")


def test_no_library_and_no_compiler_are_one_line_errors(bundle_dir, tmp_path, capsys, monkeypatch):
    b = copy_bundle(bundle_dir("lstm"), tmp_path / "b")
    edit_manifest(b, lambda m: m["built"].clear(), reseal=False)
    (b / "model.so").unlink()
    with pytest.raises(EdgelmError, match="has no native library; run `edgelm build"):
        Session.open(b, backend="native")
    assert Session.open(b).describe().startswith("onnxruntime")  # auto: nothing built, nothing lost
    monkeypatch.setenv("CC", "/nonexistent/cc")
    code, _, err = cli(capsys, "build", b)
    assert one_line_error(code, err, "no C compiler found"), err
    monkeypatch.delenv("CC")
    code, out, err = cli(capsys, "build", b)
    assert code == 0 and "model.so" in out and "native library" in out, err
    assert Session.open(b, backend="native").describe().startswith("native C")


@pytest.mark.parametrize("arch, recipe", [("lstm", "w8a8"), ("gru", "w8")])
def test_int8_native_matches_its_quantized_graphs(tmp_path, arch, recipe):
    """w8a8: int8 activations x int8 weights (integer dot products; VNNI where the CPU has it);
    w8: float activations x int8 weights. Both against the bundle's own Q/DQ graphs."""
    from quant_fixtures import calibration_bytes

    from edgelm.checkpoint import save_model
    from edgelm.export import export_bundle
    from edgelm.export.quant.run import prepare, quantize_calibrated

    calib = tmp_path / "calib.txt"
    calib.write_bytes(calibration_bytes())
    model, cal, texts, _ = prepare(ROOT / "models" / f"{arch}-tiny.pt", [calib], None)
    entry, _, _ = quantize_calibrated(model, cal, texts, recipe, 64)
    save_model(model, tmp_path / "q.pt", extra={"quant": entry})
    m = export_bundle(tmp_path / "q.pt", "cpu", None, tmp_path / "b")
    native = m.validation["native"]
    # w8a8: the same integers on both sides. w8: ONNX Runtime's MatMulNBits quantizes the
    # activations per block at run time (accuracy level 4) where C multiplies them in float
    tol = 1e-3 if recipe == "w8a8" else QUANT_MEAN_ATOL
    assert m.precision == "int8" and native["status"] == "ok" and native["mean_abs_logit_diff"] < tol
    bundle = load_bundle(tmp_path / "b")
    nat, ort = _both(bundle, 1)
    ids = np.frombuffer(PROMPT, np.uint8).astype(np.int64)
    sn = so = [np.zeros((1, *s.shape), np.float32) for s in bundle.state]
    for i in ids:
        (ln, sn), (lo, so) = _run(nat, np.array([i]), sn), _run(ort, np.array([i]), so)
    assert np.abs(ln - lo).mean() < tol
    states = [np.zeros((5, *s.shape), np.float32) for s in bundle.state]  # a 4-row tile and a row
    nat, ort = _both(bundle, 5)
    ln, _ = _run(nat, np.arange(5) * 40, states)
    lo, _ = _run(ort, np.arange(5) * 40, states)
    assert np.abs(ln - lo).mean() < tol
    if recipe == "w8a8":
        with Session.open(tmp_path / "b", backend="native") as a, Session.open(tmp_path / "b", backend="onnxruntime") as b:
            assert b"".join(a.stream(GREEDY, PROMPT).generate(100)) == b"".join(b.stream(GREEDY, PROMPT).generate(100))


def test_an_fp16_bundle_carries_no_c_and_build_says_why(tmp_path, capsys):
    from edgelm.export import export_bundle

    m = export_bundle(ROOT / "models" / "lstm-tiny.pt", "cpu", "fp16", tmp_path / "b")
    assert "model.c" not in m.files and "fp32 and int8" in m.validation["native"]["status"]
    code, _, err = cli(capsys, "build", tmp_path / "b")
    assert one_line_error(code, err, "has nothing to build here"), err


# -- the C ABI from C: examples/c/stream.c ----------------------------------------------------
def _example(bundle: Path, out: Path, cc: str = "cc", flags: tuple = ()) -> Path:
    cmd = [cc, "-std=c99", "-O2", *flags, "-I", str(bundle), str(EXAMPLE), str(bundle / "model.c"), "-o", str(out), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("arch", ["lstm", "mamba"])
def test_the_c_example_streams_what_the_session_streams(bundle_dir, tmp_path, arch):
    d = bundle_dir(arch)
    exe = _example(d, tmp_path / "stream")
    weights = str(d / "weights.bin")
    got = subprocess.run([exe, weights, PROMPT, "120"], capture_output=True, timeout=60).stdout
    with Session.open(d, backend="native") as sess:
        want = b"".join(sess.stream(GREEDY, PROMPT).generate(120))
    assert got == want
    sampled = subprocess.run([exe, weights, PROMPT, "50", "0.8", "7"], capture_output=True, timeout=60)
    assert sampled.returncode == 0 and len(sampled.stdout) == 50
    bad = subprocess.run([exe, str(d / "step.onnx"), PROMPT, "5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not this model's weights.bin" in bad.stderr


def _logits(cmd: list[str]) -> np.ndarray:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return np.array([float(x) for x in out.stdout.split()])


AARCH64 = ("aarch64-linux-gnu-gcc", "qemu-aarch64")


@pytest.mark.skipif(not all(shutil.which(t) for t in AARCH64),
                    reason="no aarch64 cross tools; `make test` installs gcc-aarch64-linux-gnu and qemu-user")
# The Nano's flags (and its int32 ids) run in tests/test_jetson_targets.py
@pytest.mark.parametrize("arch, target", [("rglru", "jetson-agx-orin")])
def test_the_same_c_runs_on_aarch64_under_qemu(bundle_dir, tmp_path, arch, target):
    """Cross-compiled with the Jetson profile's flags, run under qemu-user: the prompt's logits
    match this machine's within the fp32 parity atol, and the greedy bytes are the same."""
    from edgelm.devices import get_profile

    d = bundle_dir(arch)
    flags = get_profile(target).native_cflags
    x86 = _example(d, tmp_path / "x86")
    arm = _example(d, tmp_path / "arm", "aarch64-linux-gnu-gcc", ("-static", *flags))
    assert subprocess.run(["file", arm], capture_output=True, text=True).stdout.count("aarch64") >= 1 \
        if shutil.which("file") else True
    args = [str(d / "weights.bin"), PROMPT.decode(), "0", "logits"]
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(arm)]
    assert np.abs(_logits(qemu + args) - _logits([str(x86), *args])).max() <= FP32_ATOL
    greedy = [str(d / "weights.bin"), PROMPT.decode(), "64"]
    assert subprocess.run(qemu + greedy, capture_output=True, timeout=300).stdout == \
        subprocess.run([str(x86), *greedy], capture_output=True, timeout=60).stdout


def test_a_jetson_bundle_carries_c_and_a_compiler_only_build_script(tmp_path):
    """fp32 for a Jetson: model.c beside the engines' script, and build_native.sh, which needs
    only sh and a C compiler (a JetPack 4.6 Nano cannot run edgelm's Python)."""
    from edgelm.export import export_bundle

    out = tmp_path / "b"
    m = export_bundle(ROOT / "models" / "gru-tiny.pt", "jetson-nano", "fp32", out)
    assert {"model.c", "model.h", "build_native.sh", "build_engine.sh"} <= set(m.files) and not m.built
    assert m.validation["native"]["status"] == "ok"  # checked with this machine's build
    script = (out / "build_native.sh").read_text()
    commands = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert "-mcpu=cortex-a57" in script and not any("python" in c or "edgelm" in c for c in commands)
    work = copy_bundle(out, tmp_path / "w")
    env = {**os.environ, "CFLAGS": "-O2"}  # x86 here: the Nano's -mcpu flags are not for this cc
    res = subprocess.run(["sh", str(work / "build_native.sh")], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and (work / "model.so").stat().st_size > 0, res.stderr


# -- the plan: scratch reuse and unsupported ops ----------------------------------------------
@pytest.mark.parametrize("arch", ["lstm", "mamba", "rglru"])
def test_live_scratch_tensors_never_overlap(bundle_dir, arch):
    import onnx

    from edgelm.export.native.plan import build_plan, reads

    d = bundle_dir(arch)
    bundle = load_bundle(d)
    state = [(s.input, s.output) for s in bundle.state]
    for graph in ("step", "prefill"):
        plan = build_plan(onnx.load(str(d / f"{graph}.onnx"), load_external_data=False), d / "weights.bin",
                          graph, state)
        first, last = {}, {}
        for i, n in enumerate(plan.nodes):
            for x in [*reads(plan, n), *n.output]:
                if x in plan.tensors and plan.root(x).home == "scratch":
                    first.setdefault(plan.root(x).name, i)
                    last[plan.root(x).name] = i
        for tmp, _ in plan.copies:
            last[tmp] = len(plan.nodes)
        spans = sorted((plan.tensors[t].offset, plan.tensors[t].nbytes, first[t], last[t], t) for t in first)
        assert spans and max(o + n for o, n, *_ in spans) <= plan.scratch_per_stream
        for i, (o1, n1, f1, l1, a) in enumerate(spans):
            for o2, n2, f2, l2, b in spans[i + 1:]:
                if o2 >= o1 + n1:
                    break
                assert l1 < f2 or l2 < f1, f"{a} and {b} share scratch while both live"


def test_a_graph_the_c_cannot_express_still_exports_without_c(tmp_path, monkeypatch, capsys):
    from edgelm.export import export_bundle
    from edgelm.export.native import ops

    def no_gemm(self, node):
        raise EdgelmError("the native C target has no Gemm kernel (step graph)")

    monkeypatch.setattr(ops.Emitter, "op_Gemm", no_gemm)
    m = export_bundle(ROOT / "models" / "lstm-tiny.pt", "cpu", None, tmp_path / "b")
    assert m.validation["native"]["status"].startswith("none: the native C target has no Gemm kernel")
    assert not {"model.c", "model.h", "build_native.sh"} & set(m.files) and not m.built
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted([*m.files, "manifest.json"])
    code, _, err = cli(capsys, "build", tmp_path / "b")
    assert one_line_error(code, err, "has nothing to build here"), err


def test_an_op_without_a_kernel_is_named():
    from onnx import helper

    from edgelm.export.native.ops import Emitter
    from edgelm.export.native.plan import Plan, Tensor

    plan = Plan("step", [], {"x": Tensor("x", "float32", (4,), True), "y": Tensor("y", "float32", (4,), True)}, [], [])
    with pytest.raises(EdgelmError, match="no Hardmax kernel"):
        Emitter(plan, "step").emit(helper.make_node("Hardmax", ["x"], ["y"]))
