"""Export-time validation (export/validate.py) against a recomputation written here.

The four parity figures the manifest records are recomputed with plain onnxruntime and the
PyTorch model on the committed trained models, and each limit is shown to refuse on its own.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from runtime_fixtures import MODELS, bundle_dir  # noqa: F401
from edgelm.checkpoint import load_model
from edgelm.errors import EdgelmError
from edgelm.export.validate import STEPS, TEXT, check_onnx, one_thread, text_streams, validate
from edgelm.precision import PRECISIONS
from edgelm.runtime import load_bundle

FIGURES = ["max_abs_logit_diff", "prefill_max_abs_diff", "max_abs_state_diff", "prefill_max_abs_state_diff"]


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def _recompute(model, bundle):
    """The four figures, by the protocol docs/bundle-format.md states: 256 bytes of the
    validation text for 2 streams from the zero state, then one prefill chunk from there."""
    names = [s.input for s in bundle.state]
    data = text_streams(STEPS)  # (2, 256)
    assert data.shape == (2, STEPS) and data.dtype == np.int64
    step = _ort(bundle.path / "step.onnx")
    st_t = model.init_state(2)
    st_o = [s.numpy() for s in st_t]
    dl = ds = 0.0
    for t in range(STEPS):
        out = step.run(None, {"byte_ids": data[:, t], **dict(zip(names, st_o))})
        lt, st_t = model.step(torch.from_numpy(data[:, t]), st_t)
        dl = max(dl, float(np.abs(out[0] - lt.numpy()).max()))
        ds = max(ds, max(float(np.abs(a - b.numpy()).max()) for a, b in zip(out[1:], st_t)))
        st_o = out[1:]
    chunk = bundle.manifest.graphs["prefill"].chunk
    ids = text_streams(chunk + 11)[:, 11:]
    out = _ort(bundle.path / "prefill.onnx").run(None, {"byte_ids": ids, **{n: s.numpy() for n, s in zip(names, st_t)}})
    lr, sr = model(torch.from_numpy(ids), tuple(st_t))
    pl = float(np.abs(out[0] - lr[:, -1].numpy()).max())
    ps = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(out[1:], sr))
    return dict(zip(FIGURES, (dl, pl, ds, ps)))


@pytest.fixture(scope="module")
def measured(bundle_dir):  # noqa: F811
    arch = "lstm"  # the fastest to run in eager PyTorch; test_parity.py covers every architecture
    bundle, model = load_bundle(bundle_dir(arch)), load_model(MODELS / f"{arch}-tiny.pt")
    chunk = bundle.manifest.graphs["prefill"].chunk
    run = lambda precision: validate(model, bundle.path / "step.onnx", bundle.path / "prefill.onnx",  # noqa: E731
                                     precision, chunk)
    return run, run(PRECISIONS["fp32"]), _recompute(model, bundle)


def test_the_figures_are_measured_not_assumed(measured):
    _, res, ref = measured
    fp32 = PRECISIONS["fp32"]
    assert res["atol"] == fp32.atol and res["state_atol"] == fp32.state_atol
    assert res["steps"] == STEPS == 256 and res["batch"] == 2
    assert set(res) == set(FIGURES) | {"atol", "state_atol", "steps", "batch"}
    for k in FIGURES:
        assert 0 < ref[k] and res[k] == pytest.approx(ref[k], rel=1e-3, abs=1e-9), k


@pytest.mark.parametrize("k", FIGURES)
def test_each_limit_refuses_on_its_own(measured, k):
    """Limits above every figure pass; a limit below figure k fails naming exactly the figures
    above their limits (k alone when it is the larger of its pair) with their measured values."""
    run, res, _ = measured
    logit = ["max_abs_logit_diff", "prefill_max_abs_diff"]
    pair = logit if k in logit else [f for f in FIGURES if f not in logit]
    other = next(f for f in pair if f != k)
    below = (res[k] + res[other]) / 2 if res[k] > res[other] else res[k] / 2
    atol = below if k in logit else 2 * max(res[f] for f in logit)
    state = below if k not in logit else 2 * max(res[f] for f in FIGURES if f not in logit)
    limit = {f: atol if f in logit else state for f in FIGURES}
    expected = {f for f in FIGURES if res[f] > limit[f]}
    assert k in expected
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgelm.precision.STATE_ATOL_FACTOR", state / atol)
        prec = dataclasses.replace(PRECISIONS["fp32"], atol=atol)
        assert prec.state_atol == pytest.approx(state)
        with pytest.raises(EdgelmError) as err:
            run(prec)
    msg = str(err.value)
    assert msg.startswith("fp32 ONNX graphs disagree with PyTorch (") and msg.endswith("not writing the bundle")
    named = dict(re.findall(r"(\w+_diff) (\S+?)[,;]", msg))
    assert set(named) == expected, msg
    for f in expected:
        assert named[f] == f"{res[f]:.2e}", msg
    assert f"atol {atol:.0e} on logits, {state:.0e} on states" in msg


def test_a_limit_equal_to_the_figure_passes(measured):
    run, res, _ = measured
    atol = max(res["max_abs_logit_diff"], res["prefill_max_abs_diff"])
    state = max(res["max_abs_state_diff"], res["prefill_max_abs_state_diff"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgelm.precision.STATE_ATOL_FACTOR", state / atol)
        prec = dataclasses.replace(PRECISIONS["fp32"], atol=atol)
        if prec.state_atol < state:  # float rounding of state / atol * atol
            mp.setattr("edgelm.precision.STATE_ATOL_FACTOR", np.nextafter(state / atol, np.inf))
        run(prec)


def _refused_by_checker(path) -> str:
    with pytest.raises(EdgelmError) as err:
        check_onnx(path)
    msg = str(err.value)
    head = f"{path.name} fails the ONNX checker: "
    assert msg.startswith(head) and "\n" not in msg, msg
    return msg[len(head):]


def test_a_graph_the_checker_refuses_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])],
                              "twice", [x], [y])  # y assigned twice: not SSA
    onnx.save(helper.make_model(graph), tmp_path / "bad.onnx")
    assert "y" in _refused_by_checker(tmp_path / "bad.onnx")
    # shapes that only the full check's strict shape inference refuses: (2,) + (3,) declared (2,)
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [d]) for n, d in (("a", 2), ("b", 3)))
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])
    shapes = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "bad_shapes", [a, b], [c])
    onnx.save(helper.make_model(shapes, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "shapes.onnx")
    onnx.checker.check_model(str(tmp_path / "shapes.onnx"))  # the plain check passes
    assert "ncompatible" in _refused_by_checker(tmp_path / "shapes.onnx")
    # a long checker message is cut to 200 characters
    long = helper.make_graph([helper.make_node("Relu", [], ["y"], name="n" * 400)], "long", [x], [y])
    onnx.save(helper.make_model(long, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "long.onnx")
    assert len(_refused_by_checker(tmp_path / "long.onnx")) == 200
    good = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "once", [x], [y])
    onnx.save(helper.make_model(good, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "good.onnx")
    check_onnx(tmp_path / "good.onnx")


def test_text_streams_are_real_text_at_different_offsets():
    data = text_streams(300, batch=3)
    assert data.shape == (3, 300) and data.dtype == np.int64
    flat = np.frombuffer(TEXT * 3, dtype=np.uint8)
    for b in range(3):
        assert np.array_equal(data[b], flat[97 * b: 97 * b + 300])
    assert not np.array_equal(data[0], data[1])
    assert text_streams().shape == (2, STEPS)


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_validation_sessions_run_quietly_on_the_cpu_threads_asked_for(bundle_dir):  # noqa: F811
    """Parity is measured on the CPU provider, one thread (eager torch at batch 2 only spins with
    more), logging errors only: an export prints no ONNX Runtime warnings."""
    from edgelm.export.validate import session

    for threads in (1, 2):
        sess = session(bundle_dir("lstm") / "step.onnx", threads=threads)
        opts = sess.get_session_options()
        assert sess.get_providers() == ["CPUExecutionProvider"]
        assert (opts.intra_op_num_threads, opts.log_severity_level) == (threads, 3)
