"""Issue 12's checks of `edgelm profile`, on this machine, for each reference model (one run):

    .venv/bin/python bench/profile_bench.py [--out bench/results/profile_bench.json] [--rounds 5]

  profile_p50      `edgelm profile --temperature 0`'s latency_us.p50 (runtime/profile_report.profile_bundle);
                   the default temperature 0.8 adds its sampling (profile_t08_p50, last round)
  independent_p50  a plain greedy loop over the public Session API, written separately from the
                   profiler (no backend timer): next(Stream.generate(n, greedy)) timed per byte
  feed_loop_p50    the same greedy bytes through Stream.logits + Stream.feed (the per-call API
                   an app that samples itself would use: a copy of the logits and the prefill path)
  estimate         the roofline estimate for the detected CPU profile (runtime/roofline.py)
Rounds alternate the two measurements per model (medians of the rounds); the estimate must be
within 2x of the measured p50 and the two measurements should agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("lstm", "gru", "mingru", "mamba", "rglru")
N = 1000


def independent_p50(bundle: Path, n: int = N) -> tuple[float, float]:
    """(greedy generate loop p50, logits + feed loop p50) in µs per byte."""
    from edgelm.runtime import Sampling, Session

    with Session.open(bundle) as session, session.stream(Sampling(temperature=0.0), b"def ") as stream:
        gen, times = stream.generate(n + 64), []
        for _ in range(n + 64):
            t0 = time.perf_counter()
            next(gen)
            times.append(time.perf_counter() - t0)
        fed = []
        for _ in range(n + 64):
            t0 = time.perf_counter()
            stream.feed(bytes([int(np.argmax(stream.logits))]))
            fed.append(time.perf_counter() - t0)
    return statistics.median(times[64:]) * 1e6, statistics.median(fed[64:]) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile_bench.json")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from edgelm.devices import detect
    from edgelm.export import export_bundle
    from edgelm.runtime.profile_report import ProfileOptions, profile_bundle

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {a: export_bundle(ROOT / "models" / f"{a}-tiny.pt", "cpu", None, Path(tmp) / a) and Path(tmp) / a
                   for a in ARCHS}
        runs = {a: {"profile": [], "independent": [], "feed_loop": []} for a in ARCHS}
        reports = {}
        for r in range(args.rounds):
            for a in ARCHS:
                rep = profile_bundle(bundles[a], ProfileOptions(streams=(1, 8, 64), n_bytes=N, temperature=0.0))
                reports[a] = rep
                runs[a]["profile"].append(rep["latency_us"]["p50"])
                greedy, fed = independent_p50(bundles[a])
                runs[a]["independent"].append(greedy)
                runs[a]["feed_loop"].append(fed)
                print(f"round {r + 1} {a}: profile {runs[a]['profile'][-1]:.1f} µs, "
                      f"independent {runs[a]['independent'][-1]:.1f} µs", file=sys.stderr)
        for a in ARCHS:
            p, i = statistics.median(runs[a]["profile"]), statistics.median(runs[a]["independent"])
            e = reports[a]["estimate"]
            rows[a] = {"profile_p50_us": round(p, 1), "independent_p50_us": round(i, 1),
                       "feed_loop_p50_us": round(statistics.median(runs[a]["feed_loop"]), 1),
                       "profile_over_independent": round(p / i, 3), "estimate_us": e["latency_us"],
                       "estimate_over_measured": round(e["latency_us"] / p, 3), "bound": e["bound"],
                       "within_2x": 0.5 <= e["latency_us"] / p <= 2.0,
                       "throughput_measured": reports[a]["throughput_bytes_per_s"],
                       "throughput_estimate": e["throughput_bytes_per_s"],
                       "profile_t08_p50_us": profile_bundle(bundles[a], ProfileOptions(streams=(1,), n_bytes=N))[
                           "latency_us"]["p50"],
                       "last_report": {k: v for k, v in reports[a].items() if k != "samples_us"},
                       "rounds": runs[a]}
    out = {"machine": detect(), "command": "python bench/profile_bench.py", "bytes_per_measurement": N,
           "models": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'model':8} {'profile p50':>12} {'independent':>12} {'ratio':>7} {'feed loop':>10} {'estimate':>9} "
          f"{'est/meas':>9}  bound")
    for a, r in rows.items():
        print(f"{a:8} {r['profile_p50_us']:>10.1f}µs {r['independent_p50_us']:>10.1f}µs {r['profile_over_independent']:>7.2f}"
              f" {r['feed_loop_p50_us']:>8.1f}µs"
              f" {r['estimate_us']:>7.1f}µs {r['estimate_over_measured']:>9.2f}  {r['bound']}; bytes/s measured/estimated "
              + ", ".join(f"{k}: {r['throughput_measured'][k]:,.0f}/{r['throughput_estimate'][k]:,}" for k in r['throughput_measured']))


if __name__ == "__main__":
    main()
