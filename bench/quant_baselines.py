"""What a user would run instead of edgelm's quantization: stock tools on the model's own step.

The competitor side of the issue-10 benchmark (the main bench imports `baselines`):
    fp32_plain_ort           torch.onnx.export of model.step (export_naive_step, fp32), ONNX Runtime
    ort_quantize_dynamic     onnxruntime.quantization.quantize_dynamic(per_channel=True, QInt8 weights)
    ort_quantize_static_qdq  onnxruntime.quantization.quantize_static with ORT's defaults as they are
                             (QDQ format, activations QInt8, weights QInt8 per-tensor, MinMax
                             calibration, no quant_pre_process), calibrated on streamed text
    torch_ao_dynamic         torch.ao.quantization.quantize_dynamic({Linear, LSTM, GRU}, qint8), eager
    torch_eager_fp32         model.step in PyTorch eager
Each entry: bpb, delta_bpb (vs edgelm.evaluate.bits_per_byte of the fp32 model on the same text),
size_bytes and us_per_byte (median time of one step call at batch 1 on 1 thread, measured over
the whole held-out run; bookkeeping and the float64 log-softmax are outside the timed call).
A baseline that fails is {"error": "<one line>"}; the others still run.

    .venv/bin/python bench/quant_baselines.py models/lstm-tiny.pt [--heldout-cap 8192] [-o out.json]
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgelm.evaluate import bits_per_byte
from edgelm.export.onnx_export import export_naive_step, io_names
from edgelm.vocab import PRIME_BYTE

ROOT = Path(__file__).resolve().parent.parent
CALIB_STEPS, CALIB_STREAMS = 512, 4


def _session(path: str | Path, disabled_optimizers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers or [])


def _nll64(logits: np.ndarray, target: int) -> float:
    """-log softmax(logits)[target] in float64 (nats)."""
    x = logits.astype(np.float64).ravel()
    m = x.max()
    return float(m + math.log(np.exp(x - m).sum()) - x[target])


def plain_export(model, path: str | Path) -> Path:
    """A plain torch.onnx.export of the model's own step (fp32, legacy exporter, opset 17)."""
    export_naive_step(model, path)
    return Path(path)


def ort_dynamic(fp32_onnx: str | Path, out: str | Path) -> Path:
    """ORT dynamic quantization: int8 per-channel weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_dynamic(str(fp32_onnx), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return Path(out)


def calib_feeds(fp32_onnx: str | Path, calib: bytes, steps: int = CALIB_STEPS,
                streams: int = CALIB_STREAMS, seed: int = 0) -> list[dict]:
    """Per-step inputs (byte_ids + state) of `streams` streams of `steps` bytes each, taken at
    random offsets of `calib`, primed with PRIME_BYTE from the zero state, the state fed back
    from the fp32 plain graph. One batch-`streams` feed per step."""
    sess = _session(fp32_onnx)
    ins = [i for i in sess.get_inputs() if i.name != "byte_ids"]
    outs = [o.name for o in sess.get_outputs()][1:]  # state_out.* in state_in.* order (io_names)
    state = [np.zeros((streams, *i.shape[1:]), np.float32) for i in ins]
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, max(1, len(calib) - steps), streams)
    text = np.array([[PRIME_BYTE, *calib[s:s + steps - 1]] for s in starts], np.int64)  # (S, T)
    feeds = []
    for t in range(text.shape[1]):
        feed = {"byte_ids": text[:, t].copy(), **{i.name: s for i, s in zip(ins, state)}}
        feeds.append(feed)
        state = sess.run(outs, feed)
    return feeds


def ort_static(fp32_onnx: str | Path, out: str | Path, calib_bytes: bytes) -> Path:
    """ORT static quantization with its defaults as they are: quant_format=QDQ,
    activation_type=QInt8, weight_type=QInt8, per_channel=False, calibrate_method=MinMax (the
    graph is not run through quant_pre_process first). Calibration: `calib_feeds`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds, self.it = feeds, iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(self.feeds)

    reader = Reader(calib_feeds(fp32_onnx, calib_bytes))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(str(fp32_onnx), str(out), reader, quant_format=QuantFormat.QDQ)
    return Path(out)


def onnx_stepper_bpb(onnx_path: str | Path, model, data: bytes,
                     disabled_optimizers: list[str] | None = None) -> tuple[float, float]:
    """(bits per byte, median us per sess.run) streaming `data` one byte at a time at batch 1 on
    1 thread, scored as edgelm.evaluate does: byte 0 predicted after PRIME_BYTE from the zero state.
    disabled_optimizers: ONNX Runtime optimizers to leave out (an edgelm bundle: the runtime's)."""
    sess = _session(onnx_path, disabled_optimizers)
    inputs, outputs = io_names(model)
    state = [np.zeros((1, *shape), np.float32) for _, shape in model.state_spec()]
    prev, nats, times = PRIME_BYTE, 0.0, []
    for b in data:
        feeds = {"byte_ids": np.array([prev], np.int64), **dict(zip(inputs[1:], state))}
        t0 = time.perf_counter()
        out = sess.run(outputs, feeds)
        times.append(time.perf_counter() - t0)
        nats += _nll64(out[0], b)
        state, prev = out[1:], b
    return nats / len(data) / math.log(2), float(np.median(times)) * 1e6


def torch_ao_dynamic(model):
    """torch.ao dynamic int8 (qint8 weights, activations quantized per call) of a deepcopy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)


def _step_fn(model):
    """(step(ids, state) -> (logits (1, 256), state), how). torch.ao swaps nn.LSTM/nn.GRU for a
    quantized module without weight_ih_l*, which edgelm's spelled-out `step` reads; such a model
    steps through its fused `forward` on one byte (T=1), as a user's own char-RNN would."""
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase as QuantRNN

    if any(isinstance(m, QuantRNN) for m in model.modules()):
        def fwd(ids, state):
            logits, state = model(ids[:, None], state)
            return logits[:, -1], state
        return fwd, "forward(T=1), quantized fused RNN"
    return model.step, "model.step"


def torch_stepper_bpb(model, data: bytes) -> tuple[float, float]:
    """(bits per byte, median us per step call): batch 1, 1 thread, no_grad, oneDNN off."""
    step, _ = _step_fn(model)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    state, prev, nats, times = model.init_state(1), PRIME_BYTE, 0.0, []
    try:
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            for b in data:
                ids = torch.tensor([prev])
                t0 = time.perf_counter()
                logits, state = step(ids, state)
                times.append(time.perf_counter() - t0)
                nats -= logits[0].double().log_softmax(-1)[b].item()
                prev = b
    finally:
        torch.set_num_threads(saved)
    return nats / len(data) / math.log(2), float(np.median(times)) * 1e6


def size_bytes(obj) -> int:
    """Bytes on disk: an ONNX file plus any external-data files it names; an nn.Module's
    state_dict as torch.save writes it (to a BytesIO)."""
    if isinstance(obj, nn.Module):
        buf = io.BytesIO()
        torch.save(obj.state_dict(), buf)
        return buf.getbuffer().nbytes
    import onnx

    path = Path(obj)
    m = onnx.load(str(path), load_external_data=False)
    ext = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in ext)


def _guard(fn) -> dict:
    """fn() -> dict, or {"error": "<one line>"} if it raises."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 -- one baseline failing must not end the run
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"error": f"{type(exc).__name__}: {first}"}


def _row(bpb: float, fp32_bpb: float, size: int, us: float, **extra) -> dict:
    return {"bpb": round(bpb, 5), "delta_bpb": round(bpb - fp32_bpb, 5) + 0.0, "size_bytes": size,
            "us_per_byte": round(us, 1), **extra}


def baselines(model, calib: bytes, heldout: bytes, workdir: str | Path) -> dict:
    """Every baseline on `heldout` (calibrated on `calib` where it calibrates), keyed by name."""
    import onnx

    work, model = Path(workdir), model.eval()
    fp32_bpb = bits_per_byte(model, heldout)
    plain = work / "plain_fp32.onnx"

    def onnx_row(make):
        def run():
            path = make()
            bpb, us = onnx_stepper_bpb(path, model, heldout)
            return _row(bpb, fp32_bpb, size_bytes(path), us, nodes=len(onnx.load(str(path)).graph.node))
        return run

    def torch_row(m):
        def run():
            bpb, us = torch_stepper_bpb(m, heldout)
            return _row(bpb, fp32_bpb, size_bytes(m), us, via=_step_fn(m)[1])
        return run

    res = {"fp32_bpb": round(fp32_bpb, 5), "heldout_bytes": len(heldout), "calib_bytes": len(calib),
           "fp32_plain_ort": _guard(onnx_row(lambda: plain_export(model, plain)))}
    res["ort_quantize_dynamic"] = _guard(onnx_row(lambda: ort_dynamic(plain, work / "ort_dynamic.onnx")))
    res["ort_quantize_static_qdq"] = _guard(onnx_row(lambda: ort_static(plain, work / "ort_static.onnx", calib)))
    res["torch_ao_dynamic"] = _guard(lambda: torch_row(torch_ao_dynamic(model))())
    res["torch_eager_fp32"] = _guard(torch_row(model))
    return res


def repo_text() -> tuple[bytes, list[str]]:
    """README.md, docs/*.md and the package's .py sources, concatenated in sorted order."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for pkg in ("edgelm", "export", "runtime"):
        files += sorted((ROOT / pkg).rglob("*.py"))
    files = [f for f in files if f.is_file()]
    return b"".join(f.read_bytes() for f in files), [str(f.relative_to(ROOT)) for f in files]


def split(text: bytes, heldout_cap: int) -> tuple[bytes, bytes]:
    """(first 90% as calibration, the next up-to-`heldout_cap` bytes of the last 10% held out)."""
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:cut + heldout_cap]


def main(argv: list[str] | None = None) -> None:
    import argparse
    import hashlib

    from edgelm.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an edgelm checkpoint or a plain char-RNN state_dict")
    ap.add_argument("--heldout-cap", type=int, default=8192)
    ap.add_argument("-o", "--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    text, files = repo_text()
    calib, heldout = split(text, args.heldout_cap)
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        res = baselines(model, calib, heldout, tmp)
    res.update(model=args.model, arch=model.arch, params=model.num_params(), files=len(files),
               text_sha256=hashlib.sha256(text).hexdigest()[:16], wall_s=round(time.perf_counter() - t0, 1))
    out = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(out + "\n")
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
