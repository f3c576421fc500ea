"""`make bench`'s second pass: batch-1 latency with every system of a model interleaved.

bench/bench.py measures one system after another, so a slow spell of this shared machine can
land on one system and flip a ratio (rglru-tiny's fp32 Session read 104 µs there and 63 µs
alone a few minutes later). This pass reopens what bench.py built under build/bench/<model>/ and
times greedy bytes at batch 1 in ROUNDS rounds, each round every system in turn, and writes the
medians over all rounds into bench.json's "latency" rows ("method": "interleaved"), then
regenerates bench.md.

    .venv/bin/python bench/latency.py [--results bench/results/bench.json] [--work build/bench]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import peers  # noqa: E402
from bench_report import markdown  # noqa: E402

ROUNDS, BYTES = 7, 150


class EdgelmRunner:
    """A stream of an open Session generating greedily; `times(n)`: n per-byte wall times in µs."""

    def __init__(self, sess):
        from edgelm.runtime import GREEDY

        self.stream = sess.stream(GREEDY, b"def ")
        self.gen = self.stream.generate(10**9)

    def times(self, n: int) -> np.ndarray:
        us = np.zeros(n)
        for i in range(n):
            t0 = time.perf_counter_ns()
            next(self.gen)
            us[i] = (time.perf_counter_ns() - t0) / 1e3
        return us


class PeerRunner:
    """A peer (bench/peers.py) greedy-decoding one stream; `times(n)` as EdgelmRunner's."""

    def __init__(self, peer):
        self.peer = peer
        self.ids, self.state = peer.start_ids(1), peer.init_state(1)

    def times(self, n: int) -> np.ndarray:
        us = np.zeros(n)
        for i in range(n):
            t0 = time.perf_counter_ns()
            self.ids, self.state = self.peer.greedy(self.ids, self.state)
            us[i] = (time.perf_counter_ns() - t0) / 1e3
        return us


def runners(m: dict, work: Path) -> dict:
    from edgelm.checkpoint import load_model
    from edgelm.runtime import Session

    mdir = work / m["model"]
    out = {name: EdgelmRunner(Session.open(mdir / name, max_streams=1)) for name in m["systems"]
           if name.startswith("edgelm-") and "error" not in m["systems"][name]}
    path = ROOT / "models" / f"{m['model']}.pt"
    model = load_model(path if path.is_file() else mdir / f"{m['model']}.pt")
    for peer in peers.build(model, mdir / "peers"):
        if "error" not in m["systems"].get(peer.name, {"error": 1}):
            out[peer.name] = PeerRunner(peer)
    return out


def stats(us: np.ndarray) -> dict:
    return {"median_us": round(float(np.median(us)), 2), "p99_us": round(float(np.percentile(us, 99)), 2)}


def measure(runner, n: int) -> dict:
    """One system alone: n per-byte times after 50 warm-up bytes (bench.py's first pass)."""
    runner.times(50)
    return stats(runner.times(n))


def interleaved(m: dict, work: Path) -> dict:
    rs = runners(m, work)
    samples = {name: [] for name in rs}
    for r in rs.values():
        r.times(50)  # warm-up
    for _ in range(ROUNDS):
        for name, r in rs.items():
            samples[name].append(r.times(BYTES))
    return {name: {**stats(np.concatenate(parts)), "method": f"interleaved, {ROUNDS} rounds x {BYTES} bytes"}
            for name, parts in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "bench.json")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = json.loads(args.results.read_text())
    for m in result["models"]:
        for name, lat in interleaved(m, args.work).items():
            m["systems"][name]["latency_sequential"] = m["systems"][name]["latency"]
            m["systems"][name]["latency"] = lat
        print(m["model"], {k: v["latency"]["median_us"] for k, v in m["systems"].items() if "latency" in v}, flush=True)
    from edgelm.fileio import atomic_write_text

    atomic_write_text(args.results, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.results.with_suffix(".md"), markdown(result))


if __name__ == "__main__":
    main()
