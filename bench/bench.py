"""`make bench`: edgelm against what a user would otherwise run, every number from one run on one
machine, one thread. Writes bench/results/bench.json and bench/results/bench.md.

    .venv/bin/python bench/bench.py [--models lstm-tiny,...] [--quick] [--out bench/results/bench.json]

Models: the committed trained tiny models of every architecture and the plain char-RNN (their ΔBPB
rows mean something), and the `small` preset of every architecture with random weights (2-5M
parameters: speed only). Systems per model (bench/peers.py for the peers):

    edgelm-fp32 / -fp16 / -w8a8 / -w4   a fresh cpu bundle through the default Session.open
    torch-eager, torch-eager-no-onednn, torch-ao-int8, ort-plain-fp32, ort-quantize-dynamic

Per system: greedy latency per byte at batch 1 (median, p99), total bytes/s at 1, 8, 64 and 256
streams (edgelm: its Scheduler), prefill bytes/s of a 4 KB prompt and the time to the first byte
after it, peak resident memory of a fresh process that prefills 4 KB and decodes 256 bytes, size
on disk, and ΔBPB on held-out text (textwrap.py, which no reference model saw) against the fp32
PyTorch model. Also the floor (bench/floor.py): the CPU's single-thread GEMM peak and each
model's FLOPs per byte.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread everywhere, before numpy loads a BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import floor  # noqa: E402
import latency  # noqa: E402
import peers  # noqa: E402
from quant_baselines import _guard as guarded  # noqa: E402  fn() -> dict, or {"error": one line}
from bench_edgelm import edgelm_systems, measure_edgelm  # noqa: E402
from bench_report import markdown  # noqa: E402

ARCHS = ("lstm", "gru", "mingru", "mamba", "rglru")
STREAMS = (1, 8, 64, 256)
PROMPT_BYTES, LATENCY_BYTES, HELDOUT_BYTES, PROBE_BYTES = 4096, 1000, 8192, 256
PROMPT = (Path(textwrap.__file__).read_bytes() * 2)[:PROMPT_BYTES]


def heldout() -> bytes:
    return Path(textwrap.__file__).read_bytes()[:HELDOUT_BYTES]


def default_models() -> list[str]:
    return [f"{a}-tiny" for a in ARCHS] + ["charrnn-lstm"] + [f"{a}-small" for a in ARCHS]


def model_file(name: str, work: Path) -> Path:
    """Committed models as they are; `<arch>-small` built here with random weights (seed 0)."""
    if (ROOT / "models" / f"{name}.pt").is_file():
        return ROOT / "models" / f"{name}.pt"
    from edgelm.checkpoint import save_model
    from edgelm.models import build_model

    arch, preset = name.rsplit("-", 1)
    torch.manual_seed(0)
    path = work / f"{name}.pt"
    save_model(build_model(arch, preset=preset), path)
    return path


# -- peers ------------------------------------------------------------------------------------
def peer_throughput(peer, streams: int, steps: int) -> float:
    """Total bytes/s of `streams` greedy streams in lockstep: the median of 3 timed runs."""
    ids, state = peer.start_ids(streams), peer.init_state(streams)
    for _ in range(3):
        ids, state = peer.greedy(ids, state)
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            ids, state = peer.greedy(ids, state)
        rates.append(streams * steps / (time.perf_counter() - t0))
    return round(float(np.median(rates)), 1)


def peer_prompt(peer) -> dict:
    ttfb, rate = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ids, state = peer.prefill(PROMPT, peer.init_state(1))
        t1 = time.perf_counter()
        peer.greedy(ids, state)
        t2 = time.perf_counter()
        ttfb.append((t2 - t0) * 1e3)
        rate.append(len(PROMPT) / (t1 - t0))
    return {"ttfb_ms": round(float(np.median(ttfb)), 2), "prefill_bytes_per_s": round(float(np.median(rate)), 1)}


def peer_bpb(peer, model, data: bytes) -> float | None:
    from quant_baselines import onnx_stepper_bpb, torch_stepper_bpb

    if peer.name == "torch-eager-no-onednn":
        return None  # same numbers as torch-eager
    if isinstance(peer, peers.OrtPeer):
        return onnx_stepper_bpb(peer.probe_path, model, data)[0]
    return torch_stepper_bpb(peer.model, data)[0]


def steps_for(streams: int) -> int:
    return max(16, 4096 // streams)


PLAN = SimpleNamespace(latency_bytes=LATENCY_BYTES, prompt_bytes=PROMPT_BYTES, streams=STREAMS,
                       steps_for=steps_for)  # the sizes bench_edgelm measures with


def measure_peer(peer, model, trained: bool, data: bytes, ref_bpb: float, memory) -> dict:
    row = {"latency": latency.measure(latency.PeerRunner(peer), LATENCY_BYTES),
           "bytes_per_s": {str(s): peer_throughput(peer, s, steps_for(s)) for s in STREAMS},
           **peer_prompt(peer), "size_bytes": peer.size_bytes, "peak_rss_mb": memory(peer)}
    if trained:
        bpb = peer_bpb(peer, model, data)
        row["delta_bpb"] = None if bpb is None else round(bpb - ref_bpb, 5)
    return row


def probe_memory(kind: str, path: str, model_path: Path, work: Path) -> float | None:
    prompt = work / "prompt.txt"
    prompt.write_bytes(PROMPT)
    cmd = [sys.executable, str(ROOT / "bench" / "memprobe.py"), kind, path, str(model_path), str(prompt),
           str(PROBE_BYTES)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=False)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


# -- one model --------------------------------------------------------------------------------
def bench_model(name: str, work: Path, peak: dict, calib: Path, quick: bool) -> dict:
    from edgelm.checkpoint import load_model
    from edgelm.evaluate import bits_per_byte

    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    path = model_file(name, mdir)
    model = load_model(path)
    trained = not name.endswith("-small")
    data = heldout()
    ref = bits_per_byte(model, data) if trained else None
    work_b = floor.work_per_byte(model)
    res = {"model": name, "weights": "trained" if trained else "random (speed only)", **work_b,
           "gemm_floor_us": round(floor.floor_us(work_b, peak), 3), "fp32_bpb": ref, "systems": {}}
    print(f"== {name}: {work_b['params']:,} params, {work_b['flops_per_byte']:,} FLOP/byte", flush=True)
    for sysname, bundle in edgelm_systems(path, mdir, calib, quick).items():
        res["systems"][sysname] = guarded(lambda: measure_edgelm(
            bundle, trained, data, ref, lambda b: probe_memory("edgelm", str(b), path, mdir), PLAN))
        print(f"   {sysname}: {short(res['systems'][sysname])}", flush=True)
    for peer in peers.build(model, mdir / "peers"):
        res["systems"][peer.name] = guarded(lambda: measure_peer(
            peer, model, trained, data, ref, lambda p: probe_memory(p.name, p.probe_path, path, mdir)))
        print(f"   {peer.name}: {short(res['systems'][peer.name])}", flush=True)
    return res


def short(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return (f"{row['latency']['median_us']} us/byte, {row['bytes_per_s']['64']:,.0f} B/s @64, "
            f"prefill {row['prefill_bytes_per_s']:,.0f} B/s")


def machine() -> dict:
    import platform

    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": 1, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(default_models()))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench.json")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    ap.add_argument("--quick", action="store_true", help="edgelm fp32 only (no fp16 / quantized bundles)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    from bench_edgelm import write_calibration

    calib = write_calibration(args.work)
    t0 = time.time()
    result = {"machine": machine(), "floor": floor.gemm_peak(), "models": []}
    print(f"GEMM peak: {result['floor']}", flush=True)
    for name in args.models.split(","):
        result["models"].append(bench_model(name, args.work, result["floor"], calib, args.quick))
    result["seconds"] = round(time.time() - t0)
    from edgelm.fileio import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {result['seconds']} s")


if __name__ == "__main__":
    main()
