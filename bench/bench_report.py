"""bench/results/bench.md from bench.json: the machine, the targets of issue 13 checked against
this run's numbers, and one table per model."""

from __future__ import annotations

TRAINED_DELTA = 0.01  # ΔBPB a quantized bundle may lose and still count


def _f(v, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _rate(row: dict) -> float | None:
    """bytes/s of one stream at batch 1, from the median latency."""
    return None if "error" in row else 1e6 / row["latency"]["median_us"]


def checks(m: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, limit, ok) for one model."""
    s, out = m["systems"], []
    w8, fp = s.get("edgelm-w8a8", {}), s.get("edgelm-fp32", {})
    plain, eager = s.get("ort-plain-fp32", {}), [s.get(k, {}) for k in ("torch-eager", "torch-eager-no-onednn")]
    if "latency" in w8 and "latency" in plain:
        r = w8["latency"]["median_us"] / plain["latency"]["median_us"]
        out.append(("w8a8 batch-1 µs / plain-export ORT fp32", f"{r:.2f}", "<= 0.5", r <= 0.5))
    best_eager = min((e["latency"]["median_us"] for e in eager if "latency" in e), default=None)
    if "latency" in w8 and best_eager:
        r = w8["latency"]["median_us"] / best_eager
        out.append(("w8a8 batch-1 µs / best PyTorch eager", f"{r:.2f}", "<= 0.2", r <= 0.2))
    if "delta_bpb" in w8:
        out.append(("w8a8 ΔBPB", f"{w8['delta_bpb']:+.4f}", f"<= {TRAINED_DELTA}", w8["delta_bpb"] <= TRAINED_DELTA))
    if "latency" in fp:
        arch = m["model"].split("-")[0]
        if arch in ("lstm", "gru", "charrnn"):
            r = fp["prefill_bytes_per_s"] / _rate(fp)
            out.append(("fp32 prefill / batch-1 step rate", f"{r:.2f}", ">= 2", r >= 2))
        else:
            r = fp["prefill_bytes_per_s"] / fp["bytes_per_s"]["64"]
            out.append(("fp32 prefill / 64-stream decode", f"{r:.2f}", ">= 0.7", r >= 0.7))
        floor_bps = 1e6 / m["gemm_floor_us"]
        r = fp["bytes_per_s"]["64"] / floor_bps
        out.append(("fp32 64 streams / GEMM floor", f"{r:.0%}", ">= 60%", r >= 0.6))
        r = fp["latency"]["median_us"] / m["gemm_floor_us"]
        out.append(("fp32 batch-1 µs / GEMM floor µs", f"{r:.0f}x", "-", None))
    return out


def model_table(m: dict) -> list[str]:
    lines = [f"### {m['model']} ({m['params']:,} parameters, {m['weights']})", "",
             f"{m['flops_per_byte']:,} matmul FLOP and {m['weight_bytes']:,} weight bytes per byte (fused fp32 "
             f"step); GEMM floor {m['gemm_floor_us']:.2f} µs per byte ({1e6 / m['gemm_floor_us']:,.0f} B/s); "
             f"{m['state_values_per_stream']:,} state values per stream; fp32 BPB {_f(m['fp32_bpb'], '.4f')}", "",
             "| system | µs/byte p50 | p99 | B/s @1 | @8 | @64 | @256 | prefill B/s | TTFB ms (4 KB) | "
             "peak RSS MB | size KB | ΔBPB |", "|" + "---|" * 12]
    for name, r in m["systems"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error'][:90]} |" + " |" * 10)
            continue
        b = r["bytes_per_s"]
        lines.append(f"| {name} | {r['latency']['median_us']:.1f} | {r['latency']['p99_us']:.1f} | "
                     f"{b['1']:,.0f} | {b['8']:,.0f} | {b['64']:,.0f} | {b['256']:,.0f} | "
                     f"{r['prefill_bytes_per_s']:,.0f} | {r['ttfb_ms']:.1f} | {_f(r['peak_rss_mb'], '.0f')} | "
                     f"{r['size_bytes'] / 1024:,.0f} | {_f(r.get('delta_bpb'), '+.4f')} |")
    return lines + [""]


PEERS = ("ort-plain-fp32", "ort-quantize-dynamic", "torch-eager", "torch-eager-no-onednn", "torch-ao-int8")


def _get(row: dict, *keys):
    for k in keys:
        if not isinstance(row, dict) or k not in row:
            return None
        row = row[k]
    return row


def _best_peer(m: dict, *keys, low: bool) -> tuple[str, float] | tuple[None, None]:
    vals = [(n, _get(m["systems"].get(n, {}), *keys)) for n in PEERS]
    vals = [(n, v) for n, v in vals if v is not None]
    return (min if low else max)(vals, key=lambda nv: nv[1]) if vals else (None, None)


def summary(result: dict) -> list[str]:
    """One line per model: edgelm's fp32 and w8a8 bundles against the best of the peers."""
    lines = ["| model | µs/byte @1: edgelm fp32 / w8a8 | best peer | B/s @64: edgelm fp32 | best peer | "
             "prefill B/s: edgelm fp32 | best peer | w8a8 ΔBPB |", "|" + "---|" * 8]
    for m in result["models"]:
        s = m["systems"]
        fp, w8 = s.get("edgelm-fp32", {}), s.get("edgelm-w8a8", {})
        pl, plv = _best_peer(m, "latency", "median_us", low=True)
        pt, ptv = _best_peer(m, "bytes_per_s", "64", low=False)
        pp, ppv = _best_peer(m, "prefill_bytes_per_s", low=False)
        lines.append(f"| {m['model']} | {_f(_get(fp, 'latency', 'median_us'), '.1f')} / "
                     f"{_f(_get(w8, 'latency', 'median_us'), '.1f')} | {_f(plv, '.1f')} ({pl}) | "
                     f"{_f(_get(fp, 'bytes_per_s', '64'))} | {_f(ptv)} ({pt}) | "
                     f"{_f(fp.get('prefill_bytes_per_s'))} | {_f(ppv)} ({pp}) | {_f(w8.get('delta_bpb'), '+.4f')} |")
    return lines + [""]


def markdown(result: dict) -> str:
    mc, fl = result["machine"], result["floor"]
    lines = ["# edgelm benchmark (`make bench`)", "",
             f"One run, {mc['date']}: {mc['cpu']}, {mc['cores']} cores, one thread per system; Python "
             f"{mc['python']}, torch {mc['torch']}, onnxruntime {mc['onnxruntime']}; {result.get('seconds', '?')} s.",
             f"Single-thread fp32 GEMM peak: {fl['gflops']} GFLOP/s ({fl['by']}).", "",
             "## Targets (issue 13)", "", "| model | target | measured | limit | |", "|---|---|---|---|---|"]
    for m in result["models"]:
        for target, measured, limit, ok in checks(m):
            verdict = "info" if ok is None else "PASS" if ok else "MISS"
            lines.append(f"| {m['model']} | {target} | {measured} | {limit} | {verdict} |")
    lines += ["", "## Summary", ""] + summary(result) + ["## Per model", ""]
    for m in result["models"]:
        lines += model_table(m)
    return "\n".join(lines) + "\n"
