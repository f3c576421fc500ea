"""Step latency at batch 1: edgelm's fused step graph vs a plain torch.onnx.export vs eager.

For each architecture (models/{arch}-tiny.pt if present, else a seeded random `tiny` model):
    fused   edgelm's step.onnx (export/fused/), ONNX Runtime CPU
    naive   torch.onnx.export(model.step) (legacy exporter, same IO), ONNX Runtime CPU
    eager   model.step in PyTorch (lstm/gru also with oneDNN disabled)
ONNX Runtime runs single-threaded and with default threads; the per-byte time is the median over
--steps steps after warm-up, feeding the state back as a device loop does. The variants run
interleaved in rounds, so background load on a shared machine hits them alike.

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


def ort_runner(path: Path, names: list[str], shapes: list, threads: int):
    """A closure that runs one batch-1 step and keeps the state it returns."""
    sess = session(path, threads)
    state = [np.zeros((1, *s), np.float32) for s in shapes]
    rng = np.random.default_rng(0)

    def step():
        nonlocal state
        feeds = {"byte_ids": rng.integers(0, 256, 1), **{f"state_in.{n}": s for n, s in zip(names, state)}}
        state = sess.run(None, feeds)[1:]
    return step


def eager_runner(model, threads: int, onednn: bool = True):
    state = model.init_state(1)
    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def step():
        nonlocal state
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        with torch.backends.mkldnn.flags(enabled=onednn):
            ids = torch.randint(0, 256, (1,), generator=gen)
            t0 = time.perf_counter()
            _, state = model.step(ids, state)
            dt = time.perf_counter() - t0
        torch.set_num_threads(saved)
        return dt
    return step


def median_us(runners: dict, steps: int, rounds: int = 10) -> dict:
    """Median per-step microseconds of each runner, interleaved in rounds so that background
    load on the machine hits every variant alike. Warm-up steps are discarded."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for k, run in runners.items():
        for _ in range(WARMUP):
            run()
    block = max(1, steps // rounds)
    for _ in range(rounds):
        for k, run in runners.items():
            for _ in range(block):
                t0 = time.perf_counter()
                inner = run()
                times[k].append(inner if inner is not None else time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def bench_arch(arch: str, steps: int, tmp: Path) -> dict:
    model, source = get_model(arch)
    names, shapes = model.state_names(), [s for _, s in model.state_spec()]
    fused, naive = tmp / f"{arch}-fused.onnx", tmp / f"{arch}-naive.onnx"
    export_step(model, fused)
    export_naive_step(model, naive)
    row = {"arch": arch, "model": source, "params": model.num_params(),
           "nodes_fused": len(onnx.load(str(fused)).graph.node),
           "nodes_naive": len(onnx.load(str(naive)).graph.node)}
    threads = torch.get_num_threads()
    runners = {f"ort_{label}_{tn}_us": ort_runner(path, names, shapes, t)
               for label, path in (("fused", fused), ("naive", naive)) for tn, t in (("1t", 1), ("default", 0))}
    runners["eager_us"] = eager_runner(model, threads)
    runners["eager_1t_us"] = eager_runner(model, 1)
    if arch in ("lstm", "gru"):
        runners["eager_no_onednn_us"] = eager_runner(model, threads, onednn=False)
    row.update(median_us(runners, steps))
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
