"""Export-time validation: ONNX checker, then ONNX Runtime vs PyTorch eager parity.

The step graph streams 256 real text bytes for 2 streams (different text per stream) from the
zero state, feeding each side its own state back; the prefill graph runs one chunk from the
state the stream reached, against the model's `forward`. Any miss beyond the precision's atol
is an EdgelmError carrying the measured numbers.
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgelmError
from ..models import ByteLM
from ..precision import Precision
from ..runtime.manifest import state_io

STEPS = 256

TEXT = (b"The quick brown fox jumps over the lazy dog. Edge devices run small recurrent "
        b"language models one byte at a time: the state is a fixed size, whatever the length "
        b"of the stream, so memory never grows. It was the best of times, it was the worst of "
        b"times, it was the age of wisdom, it was the age of foolishness; 0123456789 {}[]()<>\n"
        b"def step(byte_ids, state):\n    return logits, state  # (B, 256)\n"
        b"Jetson Orin Nano, 8 GB, TensorRT 10.3 \xe2\x80\x94 caf\xc3\xa9, na\xc3\xafve, \xe6\x97\xa5\xe6\x9c\xac.\n")


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # the latter: full_check
        first = str(exc).strip().splitlines()[0][:200]
        raise EdgelmError(f"{Path(path).name} fails the ONNX checker: {first}") from None


def text_streams(steps: int = STEPS, batch: int = 2) -> np.ndarray:
    """(batch, steps) int64 bytes of real text (TEXT repeated); stream b starts at byte 97 * b."""
    return np.array([[TEXT[(97 * b + t) % len(TEXT)] for t in range(steps)] for b in range(batch)], np.int64)


def session(path: str | Path, threads: int = 0, precision: str = "fp32", graph: str = "step"):
    """An ONNX Runtime CPU session configured as the runtime's backend configures it."""
    import onnxruntime as ort

    from ..runtime.backends.ort import disabled_optimizers, session_config

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    for key, value in session_config(precision, graph).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(precision))


def _feeds(sess, names: list[str], byte_ids: np.ndarray, state) -> dict:
    """The graph's inputs: byte ids in the graph's own type (int32 for TensorRT 8 targets)."""
    ids_type = next(i.type for i in sess.get_inputs() if i.name == "byte_ids")
    ids = byte_ids.astype(np.int32 if ids_type == "tensor(int32)" else np.int64)
    return {"byte_ids": ids, **{state_io(n)[0]: s for n, s in zip(names, state)}}  # float32 arrays


def _maxdiff(a, b) -> float:
    """Largest |a - b| over paired arrays; shapes must agree exactly (no broadcasting)."""
    for x, y in zip(a, b):
        if x.shape != tuple(y.shape):
            raise EdgelmError(f"an ONNX output has shape {x.shape}, PyTorch's {tuple(y.shape)}")
    return float(max(np.max(np.abs(x - y.double().numpy())) for x, y in zip(a, b)))  # float64


@torch.no_grad()
def stream_parity(model: ByteLM, step_path: str | Path, steps: int = STEPS, stats: dict | None = None,
                  precision: str = "fp32"):
    """Max |dlogit| and max |dstate| over `steps` streamed bytes; returns (dl, ds, torch state).
    `stats`, if given, receives the mean |dlogit| over every logit of every step."""
    sess, names = session(step_path, threads=1, precision=precision), model.state_names()
    data = text_streams(steps)
    state_t = model.init_state(data.shape[0])
    state_o = [s.numpy() for s in state_t]
    dl = ds = total = 0.0
    for t in range(steps):
        out = sess.run(None, _feeds(sess, names, data[:, t], state_o))
        logits_t, state_t = model.step(torch.from_numpy(data[:, t]), state_t)
        dl = max(dl, _maxdiff(out[:1], [logits_t]))
        ds = max(ds, _maxdiff(out[1:], state_t))
        total += float(np.abs(out[0] - logits_t.double().numpy()).mean())
        state_o = out[1:]
    if stats is not None:
        stats["mean_abs_logit_diff"] = total / steps
    return dl, ds, state_t


@torch.no_grad()
def prefill_parity(model: ByteLM, prefill_path: str | Path, chunk: int, state,
                   precision: str = "fp32") -> tuple[float, float]:
    """One chunk from `state`: ORT prefill vs model.forward (last logits, final states)."""
    sess, names = session(prefill_path, threads=1, precision=precision, graph="prefill"), model.state_names()
    data = text_streams(chunk + 11)[:, 11:]  # (2, C)
    out = sess.run(None, _feeds(sess, names, data, [s.numpy() for s in state]))
    logits, new_state = model(torch.from_numpy(data), tuple(state))
    return _maxdiff(out[:1], [logits[:, -1]]), _maxdiff(out[1:], new_state)


class FormReference:
    """A single-step form (a quantized checkpoint's fused form: export/quant/) behind the model
    interface the parity checks use: init_state, state_names, step, and forward over a chunk."""

    def __init__(self, form, model: ByteLM):
        self.form, self.model = form.eval(), model

    def init_state(self, batch: int):
        return self.model.init_state(batch)

    def state_names(self) -> list[str]:
        return self.model.state_names()

    def step(self, byte_ids, state):
        logits, *state = self.form(byte_ids, *state)
        return logits, tuple(state)

    def __call__(self, byte_ids, state):
        out = []
        for t in range(byte_ids.shape[1]):
            logits, state = self.step(byte_ids[:, t], state)
            out.append(logits)
        return torch.stack(out, dim=1), state  # (B, T, 256)


@contextlib.contextmanager
def one_thread():
    """torch eager at batch 2 is dispatch-bound: extra threads only spin (measured 35 s vs 1 s
    for 256 Mamba steps on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def validate(model: ByteLM, step_path: Path, prefill_path: Path, precision: Precision, chunk: int,
             reference: FormReference | None = None) -> dict:
    """Checker + parity against `reference` (default: the model itself); the manifest's
    `validation` section. Raises EdgelmError on a miss."""
    ref = reference or model
    check_onnx(step_path)
    check_onnx(prefill_path)
    atol, state_atol = precision.atol, precision.state_atol
    with one_thread():
        stats: dict = {}
        dl, ds, state = stream_parity(ref, step_path, stats=stats, precision=precision.name)
        pl, ps = prefill_parity(ref, prefill_path, chunk, state, precision.name)
    res = {"atol": atol, "state_atol": state_atol, "steps": STEPS, "batch": 2,
           "max_abs_logit_diff": dl, "max_abs_state_diff": ds, "prefill_max_abs_diff": pl,
           "prefill_max_abs_state_diff": ps}
    limits = [("max_abs_logit_diff", atol), ("prefill_max_abs_diff", atol),
              ("max_abs_state_diff", state_atol), ("prefill_max_abs_state_diff", state_atol)]
    if reference is not None:  # quantized: isolated rounding flips move the max, not the mean
        res.update(reference="quantized checkpoint (fake quantization)", mean_atol=precision.mean_atol,
                   mean_abs_logit_diff=stats["mean_abs_logit_diff"])
        limits.append(("mean_abs_logit_diff", precision.mean_atol))
    bad = [f"{k} {res[k]:.2e}" for k, lim in limits if lim is not None and not res[k] <= lim]
    if bad:
        raise EdgelmError(f"{precision.name} ONNX graphs disagree with PyTorch ({', '.join(bad)}; atol {atol:.0e} "
                          f"on logits, {state_atol:.0e} on states): not writing the bundle")
    return res
