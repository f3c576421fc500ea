"""Train the five tiny reference models with `edgelm train` and report held-out bits/byte.

Corpus (text every Python install has, ~200 KB, written to bench/out/corpus.txt):
    the first 120,000 bytes of pydoc_data/topics.py
    + functools.py, contextlib.py, heapq.py, shlex.py, json/decoder.py, string.py (stdlib sources)
Held-out text: textwrap.py from the standard library (not in the training set).
Also reported: the held-out BPB on the last 5% of the corpus, which `edgelm train` holds out.

Each arch gets a wall-clock budget: the script times a few steps, picks the step count that
fits the budget, then runs `edgelm train` with that fixed step count (so the run is
reproducible from the step count and seed recorded in bench/out/reference.json).

    .venv/bin/python bench/train_reference.py [--budget-s 180] [--archs lstm,gru] [--install]
    # or one process per arch in parallel, then merge the per-arch JSON files and print the table:
    for a in lstm gru mingru rglru mamba; do python bench/train_reference.py --archs $a --threads 3 & done
    wait; python bench/train_reference.py --collect

--install copies each checkpoint, re-saved with fp16 storage, to models/{arch}-tiny.pt.
--threads sets torch's (and the `edgelm train` subprocess's) thread count: on a shared machine
oversubscribed threads make steps 10x slower, so pass cores / parallel runs.
A uniform model scores 8.0 bits/byte.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ARCHS = ["lstm", "gru", "mingru", "rglru", "mamba"]
BATCH = {"mamba": 16}  # mamba's python-level scan is ~5x slower per step on CPU
EXTRA_MODULES = ["functools", "contextlib", "heapq", "shlex", "json.decoder", "string"]
TOPICS_BYTES = 120_000


def build_corpus() -> tuple[Path, Path]:
    import pydoc_data.topics
    import textwrap

    parts = [Path(pydoc_data.topics.__file__).read_bytes()[:TOPICS_BYTES]]
    parts += [Path(importlib.import_module(m).__file__).read_bytes() for m in EXTRA_MODULES]
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = OUT / "corpus.txt"
    corpus.write_bytes(b"".join(parts))
    return corpus, Path(textwrap.__file__)


def seconds_per_step(arch: str, corpus: bytes, batch: int) -> float:
    """Time 3 steps (after 1 warm-up step) of a throwaway model."""
    from edgelm.models import build_model
    from edgelm.train import TrainConfig, train

    model = build_model(arch, preset="tiny")
    train(model, corpus, TrainConfig(steps=1, batch_size=batch, progress=False))
    stats = train(model, corpus, TrainConfig(steps=3, batch_size=batch, progress=False))
    return stats["seconds"] / 3


def edgelm(*args: str) -> str:
    cmd = [sys.executable, "-m", "edgelm.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return res.stdout


def run_arch(arch: str, corpus: Path, heldout: Path, budget_s: float, install: bool) -> dict:
    batch = BATCH.get(arch, 32)
    sps = seconds_per_step(arch, corpus.read_bytes(), batch)
    steps = max(50, int(budget_s / sps))
    out = OUT / f"{arch}-tiny.pt"
    t0 = time.perf_counter()
    edgelm("train", str(corpus), "--arch", arch, "--preset", "tiny", "-o", str(out),
           "--steps", str(steps), "--batch-size", str(batch), "--seed", "0")
    wall = time.perf_counter() - t0
    ev = json.loads(edgelm("eval", str(out), "--data", str(heldout), "--json"))
    ckpt = torch.load(out, weights_only=True)
    row = {"arch": arch, "steps": steps, "batch_size": batch, "seq_len": 128,
           "train_wall_s": round(wall, 1), "heldout_file": heldout.name,
           "heldout_bpb": round(ev["bits_per_byte"], 4), "heldout_bytes": ev["bytes"],
           "val_bpb_last5pct": round(ckpt["train"]["val_bpb"], 4),
           "params": sum(v.numel() for v in ckpt["state_dict"].values())}
    if install:
        row["installed"] = install_fp16(out, ROOT / "models" / f"{arch}-tiny.pt", heldout)
    return row


def install_fp16(src: Path, dest: Path, heldout: Path) -> dict:
    """Re-save with fp16 storage for the repo; report its size and BPB after the rounding."""
    from edgelm.checkpoint import load_checkpoint, save_model
    from edgelm.evaluate import evaluate_file

    model, meta = load_checkpoint(src)
    save_model(model, dest, extra={"train": meta["train"]}, dtype=torch.float16)
    bpb = evaluate_file(dest, heldout)["bits_per_byte"]
    return {"path": str(dest.relative_to(ROOT)), "bytes": dest.stat().st_size, "heldout_bpb": round(bpb, 4)}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'arch':7s} {'params':>8s} {'steps':>6s} {'wall s':>7s} {'textwrap.py bpb':>16s} "
          f"{'fp16 bpb':>9s} {'last-5% bpb':>12s}")
    for r in rows:
        fp16 = r.get("installed", {}).get("heldout_bpb", float("nan"))
        print(f"{r['arch']:7s} {r['params']:8d} {r['steps']:6d} {r['train_wall_s']:7.1f} "
              f"{r['heldout_bpb']:16.3f} {fp16:9.3f} {r['val_bpb_last5pct']:12.3f}")
    print("(uniform model: 8.000)")


def collect() -> None:
    """Merge bench/out/reference-{arch}.json files (from parallel runs) into reference.json."""
    parts = [json.loads(p.read_text()) for p in sorted(OUT.glob("reference-*.json"))]
    if not parts:
        raise SystemExit("no bench/out/reference-*.json to collect")
    rows = sorted((r for p in parts for r in p["results"]), key=lambda r: ARCHS.index(r["arch"]))
    report = {**parts[0], "results": rows}
    (OUT / "reference.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(f"wrote {OUT / 'reference.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=180.0, help="training seconds per arch")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--install", action="store_true", help="write models/{arch}-tiny.pt (fp16)")
    ap.add_argument("--collect", action="store_true", help="merge per-arch JSON files and print")
    args = ap.parse_args()
    if args.collect:
        return collect()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    archs = args.archs.split(",")
    name = "reference.json" if len(archs) > 1 else f"reference-{archs[0]}.json"
    corpus, heldout = build_corpus()
    rows = []
    for arch in archs:
        rows.append(run_arch(arch, corpus, heldout, args.budget_s, args.install))
        print(f"{arch:7s} steps {rows[-1]['steps']:5d}  {rows[-1]['train_wall_s']:7.1f}s  "
              f"held-out bpb {rows[-1]['heldout_bpb']:.3f}", flush=True)
        report = {"corpus_bytes": corpus.stat().st_size, "corpus": f"pydoc_data/topics.py[:{TOPICS_BYTES}] + "
                  + ", ".join(EXTRA_MODULES), "heldout": heldout.name, "uniform_bpb": 8.0,
                  "threads_per_run": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "machine": platform.machine(), "python": platform.python_version(),
                  "torch": torch.__version__, "budget_s": args.budget_s, "results": rows}
        (OUT / name).write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
