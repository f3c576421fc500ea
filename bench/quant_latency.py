"""Per-byte step latency of the quantized bundles, interleaved: the latency half of
bench/quant_bench.py re-measured on its outputs so that every variant of a model sees the same
machine state (round-robin, ROUNDS rounds of STEPS real-text steps each, median of the rounds).

    .venv/bin/python bench/quant_latency.py --workdir DIR [--out bench/results/quant_latency.json]

DIR is quant_bench.py's --workdir (DIR/<model>/bundle-<recipe>/, DIR/<model>/baselines/*.onnx).
Each edgelm bundle's step.onnx runs in ONNX Runtime configured as edgelm's runtime configures it
(one thread, the optimizers it disables for quantized graphs); the stock tools' graphs run plainly.
"""

from __future__ import annotations

import argparse
import json
import platform
import textwrap
import time
from pathlib import Path

import numpy as np

ROUNDS, STEPS = 15, 500
VARIANTS = ("bundle-fp32", "bundle-w8", "bundle-w8a8-naive", "bundle-w8a8", "bundle-w4",
            "baselines/plain_fp32.onnx", "baselines/ort_dynamic.onnx")


def session(path: Path, disabled: list[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def open_variant(model_dir: Path, name: str):
    from edgelm.runtime.backends.ort import disabled_optimizers
    from edgelm.runtime.bundle import load_bundle

    path = model_dir / name
    if name.startswith("bundle-"):
        return session(path / "step.onnx", disabled_optimizers(load_bundle(path).manifest.precision))
    return session(path, [])


class Stepper:
    """One graph streaming real text at batch 1, its state fed back."""

    def __init__(self, sess, text: bytes):
        self.sess, self.text, self.pos = sess, text, 0
        self.inputs = [i.name for i in sess.get_inputs()]
        self.state = [np.zeros([1, *i.shape[1:]], np.float32) for i in sess.get_inputs()[1:]]

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            ids = np.array([self.text[self.pos % len(self.text)]], np.int64)
            out = self.sess.run(None, dict(zip(self.inputs, [ids, *self.state])))
            self.state, self.pos = out[1:], self.pos + 1
        return (time.perf_counter() - t0) / steps * 1e6


def measure_model(model_dir: Path, text: bytes) -> dict:
    steppers = {v: Stepper(open_variant(model_dir, v), text) for v in VARIANTS if (model_dir / v).exists()}
    for s in steppers.values():
        s.run(50)  # warm-up
    rounds: dict[str, list[float]] = {v: [] for v in steppers}
    for _ in range(ROUNDS):
        for v, s in steppers.items():
            rounds[v].append(s.run(STEPS))
    return {v.replace("bundle-", "").replace("baselines/", "").replace(".onnx", ""): round(float(np.median(r)), 1)
            for v, r in rounds.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results/quant_latency.json"))
    args = ap.parse_args()
    text = Path(textwrap.__file__).read_bytes()
    models = sorted(p.name for p in args.workdir.iterdir() if (p / "bundle-fp32").is_dir())
    res = {m: measure_model(args.workdir / m, text) for m in models}
    for m, row in res.items():
        print(m, row)
    import onnxruntime

    meta = {"machine": platform.processor() or platform.machine(), "onnxruntime": onnxruntime.__version__,
            "rounds": ROUNDS, "steps_per_round": STEPS, "unit": "median us per byte, batch 1, 1 thread"}
    args.out.write_text(json.dumps({"meta": meta, "us_per_byte": res}, indent=2) + "\n")


if __name__ == "__main__":
    main()
