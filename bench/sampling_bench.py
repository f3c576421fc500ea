"""Cost of sampling one byte at batch 1, per configuration, in one run (medians of ROUNDS):

    .venv/bin/python bench/sampling_bench.py [--out bench/results/sampling_bench.json]

  solo    Sampler.sample: the one-row fast path a stream's generate() uses
  batch1  BatchSampler's vectorised pass over one row: what a Scheduler ran per group before
          (it now samples batches of up to SOLO_ROWS rows through each row's solo path)
Both draw the same bytes (tests/test_sampling_reference.py checks it exactly).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, CALLS = 7, 5000
CONFIGS = {"greedy": dict(temperature=0.0), "temperature 0.8": dict(temperature=0.8),
           "top-k 40": dict(temperature=0.8, top_k=40), "top-p 0.9": dict(temperature=0.8, top_p=0.9),
           "top-k 40 + top-p 0.9": dict(temperature=0.8, top_k=40, top_p=0.9)}


def per_call_us(fn) -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - t0) / CALLS * 1e6


def main() -> None:
    from edgelm.runtime import BatchSampler, Sampler, Sampling

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sampling_bench.json")
    args = ap.parse_args()
    logits = (np.random.default_rng(0).standard_normal(256) * 3).astype(np.float32)
    rows, out = logits[None], np.zeros(1, np.int64)
    results = {}
    for name, cfg in CONFIGS.items():
        solo, other, batch = Sampler(Sampling(seed=0, **cfg)), Sampler(Sampling(seed=0, **cfg)), BatchSampler(1)
        times = {"solo": [], "batch1": []}
        for _ in range(ROUNDS):
            times["solo"].append(per_call_us(lambda: solo.sample(logits)))
            times["batch1"].append(per_call_us(lambda: batch.sample_vectorised(rows, [other], out)))
        results[name] = {k: round(statistics.median(v), 2) for k, v in times.items()}
        print(f"{name:22} solo {results[name]['solo']:6.2f} µs   batch of one {results[name]['batch1']:6.2f} µs")
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "numpy": np.__version__,
                                    "command": "python bench/sampling_bench.py", "us_per_byte": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
