"""Step latency at batch 1: edgelm's fused step graph vs a plain torch.onnx.export vs eager.

For each architecture (models/{arch}-tiny.pt if present, else a seeded random `tiny` model):
    fused   edgelm's step.onnx (export/fuse.py), ONNX Runtime CPU
    naive   torch.onnx.export(model.step) (legacy exporter, same IO), ONNX Runtime CPU
    eager   model.step in PyTorch (lstm/gru also with oneDNN disabled)
ONNX Runtime runs single-threaded and with default threads; the per-byte time is the median over
--steps steps after warm-up, feeding the state back as a device loop does.

    .venv/bin/python bench/export_bench.py [--steps 2000] [--archs lstm,gru,...]
Writes bench/out/export_bench.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgelm.checkpoint import load_model
from edgelm.export.onnx_export import export_naive_step, export_step
from edgelm.export.validate import session
from edgelm.models import ARCHS, build_model

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 200


def get_model(arch: str):
    path = ROOT / "models" / f"{arch}-tiny.pt"
    if path.is_file():
        return load_model(path), str(path.relative_to(ROOT))
    torch.manual_seed(0)
    return build_model(arch, preset="tiny").eval(), "random init (tiny preset)"


def time_ort(path: Path, names: list[str], shapes: list, steps: int, threads: int) -> float:
    """Median microseconds per step at batch 1."""
    sess = session(path, threads)
    state = [np.zeros((1, *s), np.float32) for s in shapes]
    ids = np.random.default_rng(0).integers(0, 256, steps + WARMUP).astype(np.int64)
    times = []
    for t in range(steps + WARMUP):
        feeds = {"byte_ids": ids[t:t + 1], **{f"state_in.{n}": s for n, s in zip(names, state)}}
        t0 = time.perf_counter()
        out = sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
        state = out[1:]
    return statistics.median(times[WARMUP:]) * 1e6


@torch.no_grad()
def time_eager(model, steps: int) -> float:
    state = model.init_state(1)
    ids = torch.randint(0, 256, (steps + WARMUP, 1), generator=torch.Generator().manual_seed(0))
    times = []
    for t in range(steps + WARMUP):
        t0 = time.perf_counter()
        _, state = model.step(ids[t], state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[WARMUP:]) * 1e6


def bench_arch(arch: str, steps: int, tmp: Path) -> dict:
    model, source = get_model(arch)
    names, shapes = model.state_names(), [s for _, s in model.state_spec()]
    fused, naive = tmp / f"{arch}-fused.onnx", tmp / f"{arch}-naive.onnx"
    export_step(model, fused)
    export_naive_step(model, naive)
    row = {"arch": arch, "model": source, "params": model.num_params(),
           "nodes_fused": len(onnx.load(str(fused)).graph.node),
           "nodes_naive": len(onnx.load(str(naive)).graph.node)}
    for label, path in (("fused", fused), ("naive", naive)):
        row[f"ort_{label}_1t_us"] = time_ort(path, names, shapes, steps, 1)
        row[f"ort_{label}_default_us"] = time_ort(path, names, shapes, steps, 0)
    threads = torch.get_num_threads()
    row["eager_us"] = time_eager(model, steps)
    if arch in ("lstm", "gru"):
        with torch.backends.mkldnn.flags(enabled=False):
            row["eager_no_onednn_us"] = time_eager(model, steps)
    torch.set_num_threads(1)
    row["eager_1t_us"] = time_eager(model, steps)
    torch.set_num_threads(threads)
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'arch':7} {'nodes fused/naive':>17} {'ORT fused 1t':>13} {'ORT naive 1t':>13} "
            f"{'ORT fused dflt':>15} {'ORT naive dflt':>15} {'eager':>9} {'eager 1t':>9} {'eager no-oneDNN':>16}")
    lines = [head, "-" * len(head)]
    for r in rows:
        nod = r.get("eager_no_onednn_us")
        lines.append(f"{r['arch']:7} {r['nodes_fused']:>8}/{r['nodes_naive']:<8} "
                     f"{r['ort_fused_1t_us']:>10.1f} us {r['ort_naive_1t_us']:>10.1f} us "
                     f"{r['ort_fused_default_us']:>12.1f} us {r['ort_naive_default_us']:>12.1f} us "
                     f"{r['eager_us']:>6.0f} us {r['eager_1t_us']:>6.0f} us "
                     f"{(f'{nod:.0f} us' if nod else '-'):>16}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            rows.append(bench_arch(arch, args.steps, Path(tmp)))
            print(f"done {arch}", flush=True)
    out = {"steps": args.steps, "warmup": WARMUP, "batch": 1, "onnxruntime": ort.__version__,
           "torch": torch.__version__, "machine": platform.machine(), "cpu_count": torch.get_num_threads(),
           "note": "per-byte median latency in microseconds", "rows": rows}
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "export_bench.json").write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
