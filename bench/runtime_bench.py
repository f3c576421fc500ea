"""Runtime benchmark: per-byte latency of a Session vs PyTorch eager, Python overhead, throughput.

    python bench/runtime_bench.py [--archs lstm,gru,mamba] [--bytes 2000]

Per arch: a cpu bundle of models/{arch}-tiny.pt (random init if absent), then at batch 1 the
per-byte latency (median, p99) of Session.generate and of PyTorch eager `model.step` (no_grad;
for lstm/gru also with oneDNN/mkldnn disabled), the runtime's time per byte outside the backend
run call, and total bytes/s at 1, 8 and 64 streams (the session is opened with max_streams=64:
ONNX Runtime graphs have a dynamic batch). Prints a table; writes bench/out/runtime_bench.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def _bundle(arch: str) -> tuple[Path, str]:
    import torch

    from edgelm.checkpoint import save_model
    from edgelm.export import export_bundle
    from edgelm.models import build_model

    model_path, source = ROOT / "models" / f"{arch}-tiny.pt", "trained"
    if not model_path.is_file():
        torch.manual_seed(0)
        model_path, source = OUT / f"{arch}-tiny-random.pt", "random init"
        save_model(build_model(arch, preset="tiny"), model_path)
    out = OUT / "bundles" / arch
    export_bundle(model_path, "cpu", None, out, force=True, with_reference=True)
    return out, source


def _stats(seconds: list[float]) -> dict:
    us = np.array(seconds) * 1e6
    return {"median_us": round(float(np.median(us)), 1), "p99_us": round(float(np.percentile(us, 99)), 1)}


def session_latency(bundle: Path, n: int) -> dict:
    from edgelm.runtime import Sampling, Session

    with Session.open(bundle, max_streams=1) as sess:
        inner = [0.0]
        real = sess.backend._run

        def timed(graph, batch):
            t = time.perf_counter()
            real(graph, batch)
            inner[0] += time.perf_counter() - t
        sess.backend._run = timed
        stream = sess.stream(Sampling(seed=0, temperature=0.8), prompt=b"The ")
        list(stream.generate(200))  # warm-up
        inner[0], times, gen = 0.0, [], stream.generate(n)
        t0 = time.perf_counter()
        for _ in gen:
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
        res = _stats(times)
        res["python_overhead_us"] = round((sum(times) - inner[0]) / len(times) * 1e6, 1)
        res["backend"] = sess.describe()
        return res


def torch_latency(bundle: Path, n: int, mkldnn: bool = True) -> dict:
    import torch

    from edgelm.checkpoint import load_model

    torch.set_num_threads(1)
    model = load_model(bundle / "model.pt")
    state, ids, times = model.init_state(1), torch.tensor([32]), []
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=mkldnn):
        for i in range(200 + n):
            t0 = time.perf_counter()
            logits, state = model.step(ids, state)
            probs = torch.softmax(logits[0] / 0.8, -1)
            ids = torch.multinomial(probs, 1)
            if i >= 200:
                times.append(time.perf_counter() - t0)
    return _stats(times)


def throughput(bundle: Path, streams: int, steps: int) -> float:
    from edgelm.runtime import Sampling, Session

    with Session.open(bundle, max_streams=max(streams, 1)) as sess:
        sched = sess.scheduler()
        for i in range(streams):
            sched.add(sess.stream(Sampling(seed=i, temperature=0.8), prompt=b"The "), steps + 20)
        for _ in range(20):
            sched.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            sched.step()
        return streams * steps / (time.perf_counter() - t0)


def bench_arch(arch: str, n: int) -> dict:
    bundle, source = _bundle(arch)
    res = {"arch": arch, "model": source, "session": session_latency(bundle, n),
           "torch_eager": torch_latency(bundle, n)}
    if arch in ("lstm", "gru"):
        res["torch_eager_no_mkldnn"] = torch_latency(bundle, n, mkldnn=False)
    res["bytes_per_s"] = {str(s): round(throughput(bundle, s, max(200, n // s)), 0) for s in (1, 8, 64)}
    return res


def table(results: list[dict]) -> str:
    head = (f"{'arch':7} {'model':11} {'session med/p99 us':>19} {'py ovh us':>9} {'torch med/p99 us':>17} "
            f"{'no-mkldnn med/p99':>18} {'B/s @1':>8} {'B/s @8':>8} {'B/s @64':>9}")
    rows = [head, "-" * len(head)]
    for r in results:
        s, t, nm = r["session"], r["torch_eager"], r.get("torch_eager_no_mkldnn")
        nmt = f"{nm['median_us']:.0f}/{nm['p99_us']:.0f}" if nm else "-"
        bps = r["bytes_per_s"]
        rows.append(f"{r['arch']:7} {r['model']:11} {s['median_us']:>9.0f}/{s['p99_us']:<9.0f} "
                    f"{s['python_overhead_us']:>9.1f} {t['median_us']:>8.0f}/{t['p99_us']:<8.0f} {nmt:>18} "
                    f"{bps['1']:>8,.0f} {bps['8']:>8,.0f} {bps['64']:>9,.0f}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="lstm,gru,mamba")
    ap.add_argument("--bytes", type=int, default=2000, help="bytes per latency measurement")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = [bench_arch(a, args.bytes) for a in args.archs.split(",")]
    from edgelm.fileio import atomic_write_text

    atomic_write_text(OUT / "runtime_bench.json", json.dumps({"results": results}, indent=2))
    print(table(results))
    print(f"\nbackend: {results[0]['session']['backend']}; wrote {OUT / 'runtime_bench.json'}")


if __name__ == "__main__":
    main()
