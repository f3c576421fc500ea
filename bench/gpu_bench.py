"""GPU check for a lent machine: detection, torch-backend parity and latency, batch throughput.

Run on the GPU machine (torch with CUDA, onnxruntime, onnx present):
    python bench/gpu_bench.py --out $OUT/gpu_bench.json
Measures, per architecture, in one run:
  - parity of the CUDA backend (CUDA-graph replay) against the CPU ONNX Runtime session (max |dlogit|
    over 256 greedy bytes);
  - per-byte latency at batch 1 (median, p99): PyTorch eager on CUDA, raw CUDA-graph replay with
    state kept on the GPU (the ceiling), and the edgelm Session with the torch backend on CUDA;
  - end-to-end bytes/s with the Scheduler at 1, 8, 64, 256 streams.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from edgelm.checkpoint import load_model, save_model
from edgelm.devices import detect
from edgelm.export import export_bundle
from edgelm.models import ARCHS, build_model
from edgelm.runtime import GREEDY, Session


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of this script off the GPU


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def model_path(arch: str, tmp: Path) -> Path:
    p = Path("models") / f"{arch}-tiny.pt"
    if p.is_file():
        return p
    torch.manual_seed(0)
    p = tmp / f"{arch}-random.pt"
    save_model(build_model(arch, preset="tiny"), p)
    return p


def time_eager(model, n=500):
    ids = torch.zeros(1, dtype=torch.long, device=DEV)
    state = model.init_state(1, device=DEV)
    times = []
    with torch.inference_mode():
        for i in range(n + 50):
            sync()
            t0 = time.perf_counter()
            logits, state = model.step(ids, state)
            ids = logits.argmax(-1)
            sync()
            times.append(time.perf_counter() - t0)
    return times[50:]


def time_graph_ceiling(model, n=2000):
    """CUDA graph of one step; state copied device-to-device: nothing crosses PCIe."""
    ids = torch.zeros(1, dtype=torch.long, device=DEV)
    state = model.init_state(1, device=DEV)
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                model.step(ids, state)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            logits, new = model.step(ids, state)
            nxt = logits.argmax(-1)
            ids.copy_(nxt)
            for a, b in zip(state, new):
                a.copy_(b)
        for _ in range(50):
            g.replay()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            g.replay()
            sync()
            times.append(time.perf_counter() - t0)
    return times


def time_session(bundle, n=2000):
    with Session.open(bundle, backend="torch", device=DEV, max_streams=1) as sess:
        st = sess.stream(GREEDY, prompt=b"def ")
        gen = st.generate(n + 100)
        times = []
        t0 = time.perf_counter()
        for _ in gen:
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
    return times[100:]


def parity(bundle, n=256):
    """Greedy bytes and logits from the CUDA torch backend vs the CPU ONNX Runtime session."""
    out = {}
    for name, kw in (("ort_cpu", dict(backend="onnxruntime")), ("torch_cuda", dict(backend="torch", device=DEV))):
        with Session.open(bundle, max_streams=1, **kw) as sess:
            st = sess.stream(GREEDY, prompt=b"import os\n")
            data, logits = [], []
            for b in st.generate(n):
                data.append(b)
                logits.append(st.logits.copy())
            out[name] = (b"".join(data), np.stack(logits))
    (a, la), (b, lb) = out["ort_cpu"], out["torch_cuda"]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    k = min(same, len(la), len(lb))
    return {"identical_greedy_bytes": same, "max_abs_logit_diff_until_divergence":
            float(np.abs(la[:k] - lb[:k]).max()) if k else None}


def throughput(bundle, streams, nbytes=256):
    with Session.open(bundle, backend="torch", device=DEV, max_streams=streams) as sess:
        sched = sess.scheduler()
        ss = [sess.stream(GREEDY, prompt=b"class ") for _ in range(streams)]
        for s in ss:
            sched.add(s, 16)
        for _ in sched.run():  # warm-up and graph capture
            pass
        for s in ss:
            sched.add(s, nbytes)
        sync()
        t0 = time.perf_counter()
        total = sum(len(d) for _, d in sched.run())
        return total / (time.perf_counter() - t0)


def guarded(row, key, fn):
    """Measure one thing; record a failure with its traceback and go on with the rest."""
    try:
        row[key] = fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        row[key] = {"error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=-12)}
        print(row[key]["traceback"], file=sys.stderr, flush=True)


def latency(fn):
    us = 1e6 * np.asarray(fn())
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}


def bench_arch(arch, tmp, prebuilt: Path | None):
    bundle = prebuilt / f"{arch}-bundle" if prebuilt else tmp / f"{arch}-bundle"
    row = {"arch": arch}
    if not prebuilt:
        guarded(row, "export", lambda: export_bundle(model_path(arch, tmp), "h100", "fp32", bundle,
                                                     with_reference=True, force=True).validation)
    model = load_model(bundle / "model.pt").to(DEV).eval()
    row["params"] = model.num_params()
    guarded(row, "parity", lambda: parity(bundle))
    guarded(row, "ort_cuda", lambda: Session.open(bundle, backend="onnxruntime", device="cuda").close() or "ok")
    guarded(row, "eager_cuda", lambda: latency(lambda: time_eager(model)))
    guarded(row, "graph_ceiling", lambda: latency(lambda: time_graph_ceiling(model) if DEV == "cuda" else [0.0]))
    guarded(row, "session_torch_cuda", lambda: latency(lambda: time_session(bundle)))
    guarded(row, "bytes_per_s", lambda: {str(n): throughput(bundle, n) for n in (1, 8, 64, 256)})
    row["max_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20 if DEV == "cuda" else 0
    return row


def build_bundles(out: Path, archs):
    """Export the bundles here (CPU) so the GPU run measures only the runtime."""
    for arch in archs:
        export_bundle(model_path(arch, out), "h100", "fp32", out / f"{arch}-bundle", force=True,
                      with_reference=True)


def cell(row, key, field, fmt):
    v = row.get(key)
    if not isinstance(v, dict) or "error" in v:
        return "err"
    return format(v[field], fmt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/gpu_bench.json")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--bundles", type=Path, help="pre-exported bundles (see --build-bundles)")
    ap.add_argument("--build-bundles", type=Path, help="only export the bundles into this folder")
    args = ap.parse_args()
    if args.build_bundles:
        return build_bundles(args.build_bundles, args.archs.split(","))
    import onnxruntime as ort

    res = {"detect": detect(), "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if DEV == "cuda" else None,
           "ort_providers": ort.get_available_providers(), "rows": []}
    print(json.dumps(res["detect"]), res["ort_providers"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        for arch in args.archs.split(","):
            try:
                row = bench_arch(arch, Path(d), args.bundles)
            except Exception as exc:  # keep measuring the other architectures
                row = {"arch": arch, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                print(row["traceback"], file=sys.stderr, flush=True)
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\n{'arch':7} {'eager us':>9} {'graph us':>9} {'session us':>11} {'p99':>7} {'same bytes':>10}  bytes/s @1/8/64/256")
    for r in res["rows"]:
        if "error" in r:
            print(f"{r['arch']:7} ERROR {r['error']}")
            continue
        b = r["bytes_per_s"]
        tput = "/".join(f"{b[k]:.0f}" for k in ("1", "8", "64", "256")) if "error" not in b else "err"
        print(f"{r['arch']:7} {cell(r, 'eager_cuda', 'median_us', '9.1f'):>9} {cell(r, 'graph_ceiling', 'median_us', '9.1f'):>9} "
              f"{cell(r, 'session_torch_cuda', 'median_us', '11.1f'):>11} {cell(r, 'session_torch_cuda', 'p99_us', '7.1f'):>7} "
              f"{cell(r, 'parity', 'identical_greedy_bytes', 'd'):>10}  {tput}")


if __name__ == "__main__":
    sys.exit(main())
