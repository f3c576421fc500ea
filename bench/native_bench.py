"""Issue 14's benchmark: the native C backend against the ONNX Runtime Session on the same bundles.

For every model (the trained tiny ones, the char-RNN, the random `small` presets) at fp32 and w8a8
(one quantized checkpoint, calibrated on bench_edgelm's calibration text), one cpu bundle is
exported (it carries model.so, built at export) and opened twice: backend="native" and
backend="onnxruntime". Measured in one run, one thread:
  - batch-1 latency: greedy bytes through Session/Stream, the two backends interleaved in ROUNDS
    rounds (median of all rounds' medians), as bench/latency.py
  - 64 streams: bytes/s through a Scheduler (edgelm.runtime.profiler.throughput), median of 3
  - prefill: a 4 KB prompt into fresh streams, bytes/s (profiler.prompt_timing)
  - the GEMM floor: the step's matmul FLOPs at this CPU's single-thread GEMM peak (bench/floor.py),
    and each backend's ratio to it at batch 1 and 64 streams
Writes bench/results/native_bench.json and .md.

    .venv/bin/python bench/native_bench.py [--out bench/results/native_bench.json] [--models lstm-tiny,...]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench import default_models, machine, model_file  # noqa: E402
from bench_edgelm import write_calibration  # noqa: E402
from floor import floor_us, gemm_peak, work_per_byte  # noqa: E402
from latency import EdgelmRunner  # noqa: E402

BACKENDS = ("native", "onnxruntime")
ROUNDS, BYTES, STREAMS = 7, 150, 64


def export(ckpt: Path, out: Path) -> Path:
    from edgelm.export import export_bundle

    export_bundle(ckpt, "cpu", None, out, force=True)
    return out


def bundles(name: str, work: Path, calib: Path) -> dict[str, Path]:
    """precision -> a cpu bundle with its native library."""
    from edgelm.checkpoint import save_model
    from edgelm.export.quant.run import prepare, quantize_calibrated

    fp32 = model_file(name, work)
    model, cal, texts, _ = prepare(fp32, [calib], None)
    entry, _, _ = quantize_calibrated(model, cal, texts, "w8a8", 64)
    save_model(model, work / f"{name}-w8a8.pt", extra={"quant": entry})
    return {"fp32": export(fp32, work / f"{name}-fp32"), "w8a8": export(work / f"{name}-w8a8.pt", work / f"{name}-w8a8")}


def latency(bundle: Path) -> dict[str, float]:
    from edgelm.runtime import Session

    sessions = {b: Session.open(bundle, backend=b) for b in BACKENDS}
    runners = {b: EdgelmRunner(s) for b, s in sessions.items()}
    meds = {b: [] for b in BACKENDS}
    for _ in range(ROUNDS):
        for b, r in runners.items():
            meds[b].append(statistics.median(r.times(BYTES)))
    for s in sessions.values():
        s.close()
    return {b: round(statistics.median(m), 2) for b, m in meds.items()}


def measure(bundle: Path, floor: float) -> dict:
    from edgelm.runtime import Session
    from edgelm.runtime.profiler import prompt_timing, throughput

    row = {"latency_us": latency(bundle), "streams_64_bytes_per_s": {}, "prefill_4k_bytes_per_s": {}}
    for b in BACKENDS:
        with Session.open(bundle, backend=b, max_streams=STREAMS) as sess:
            row["streams_64_bytes_per_s"][b] = round(statistics.median(throughput(sess, STREAMS, 64, 0.0)
                                                                       for _ in range(3)))
            row["prefill_4k_bytes_per_s"][b] = round(prompt_timing(sess, 4096, 0.0)[1])
    lat, s64 = row["latency_us"], row["streams_64_bytes_per_s"]
    row["native_over_onnxruntime_batch1"] = round(lat["native"] / lat["onnxruntime"], 3)
    row["floor_us"] = round(floor, 3)
    row["floor_share_batch1"] = {b: round(floor / lat[b], 3) for b in BACKENDS}
    row["floor_share_64"] = {b: round(floor * s64[b] / 1e6, 3) for b in BACKENDS}
    return row


def markdown(res: dict) -> str:
    lines = [f"# native C vs ONNX Runtime ({res['machine']['cpu']}, {res['date']}, one thread)", "",
             f"GEMM peak {res['gemm_peak']['gflops']} GFLOP/s. Batch 1: µs per greedy byte through Session "
             "(interleaved). 64 streams: total bytes/s. floor: share of the GEMM floor reached.", "",
             "| model | prec | native µs | ORT µs | ratio | floor native / ORT | 64 str native | 64 str ORT "
             "| floor@64 native / ORT | prefill native | prefill ORT |", "|" + "---|" * 11]
    for name, rows in res["models"].items():
        for prec, r in rows.items():
            lat, s, p = r["latency_us"], r["streams_64_bytes_per_s"], r["prefill_4k_bytes_per_s"]
            f1, f64 = r["floor_share_batch1"], r["floor_share_64"]
            lines.append(f"| {name} | {prec} | {lat['native']} | {lat['onnxruntime']} | "
                         f"{r['native_over_onnxruntime_batch1']} | {f1['native']} / {f1['onnxruntime']} | "
                         f"{s['native']:,} | {s['onnxruntime']:,} | {f64['native']} / {f64['onnxruntime']} | "
                         f"{p['native']:,} | {p['onnxruntime']:,} |")
    return "\n".join(lines) + "\n"


def _compiler() -> str:
    import subprocess

    from edgelm.export.native.build import compiler

    return subprocess.run([compiler() or "cc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def main(argv=None) -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "native_bench.json"))
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-native"))
    ap.add_argument("--models", default=",".join(default_models()))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calib, peak = write_calibration(work), gemm_peak()
    res = {"date": time.strftime("%Y-%m-%d"), "gemm_peak": peak, "models": {}, "machine": machine(),
           "compiler": _compiler()}
    t0 = time.time()
    for name in args.models.split(","):
        from edgelm.checkpoint import load_model

        floor = floor_us(work_per_byte(load_model(model_file(name, work))), peak)
        try:
            res["models"][name] = {prec: measure(b, floor) for prec, b in bundles(name, work, calib).items()}
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, not the run's end
            res.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            print(name, "failed:", exc, flush=True)
            continue
        print(name, json.dumps({p: r["latency_us"] for p, r in res["models"][name].items()}), flush=True)
    res["minutes"] = round((time.time() - t0) / 60, 1)
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res))


if __name__ == "__main__":
    main()
