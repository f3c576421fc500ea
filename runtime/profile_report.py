"""`edgelm profile`: run the measurements of runtime/profiler.py on one or more bundles, put the
roofline estimate (runtime/roofline.py) for the detected device beside them, and report: a table,
a side-by-side comparison with ratios, JSON, and a plot (matplotlib, optional)."""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgelmError
from . import profiler as prof
from .roofline import StepFacts, estimate


@dataclass(frozen=True)
class ProfileOptions:
    backend: str = "auto"
    streams: tuple[int, ...] = (1, 8, 64)
    n_bytes: int = 512
    prompt_bytes: int = 256
    temperature: float = 0.8  # 0: greedy
    progress: bool = False
    trusted_keys: tuple = ()


def parse_streams(text: str) -> tuple[int, ...]:
    """"1,8,64" -> (1, 8, 64); one-line error for anything else."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1 or max(counts) > 4096:
        raise EdgelmError(f"--streams {text!r}: give stream counts 1..4096 separated by commas, e.g. 1,8,64")
    return counts


def check_options(opts: ProfileOptions, plot: Path | None) -> None:
    if opts.n_bytes < 16 or opts.prompt_bytes < 1:
        raise EdgelmError("--bytes must be at least 16 and --prompt-bytes at least 1")
    if not opts.temperature >= 0:
        raise EdgelmError(f"--temperature must be 0 (greedy) or positive, not {opts.temperature}")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise EdgelmError("--plot needs matplotlib: pip install 'edgelm[plot]'")


def _progress(opts: ProfileOptions):
    """A rich progress bar on a terminal (typer brings rich), else nothing."""
    if not opts.progress:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("profiling"), BarColumn(), TextColumn("{task.completed}/{task.total} bytes"),
                    transient=True)


def profile_bundle(path: str | Path, opts: ProfileOptions) -> dict:
    """Every measurement of one bundle, with the estimate for the detected device beside it."""
    from ..devices import detect, get_profile
    from .session import Session

    path = Path(path)
    session = Session.open(path, backend=opts.backend, max_streams=max(opts.streams),
                           trusted_keys=list(opts.trusted_keys) or None)
    with session:
        timer = session.backend = prof.BackendTimer(session.backend)
        rss_start = prof.rss_mb()
        with _progress(opts) as bar:
            task = bar.add_task("decode", total=opts.n_bytes) if bar else None
            latency, samples = prof.decode_latency(session, timer, opts.n_bytes, opts.temperature,
                                                   (lambda: bar.advance(task)) if bar else None)
        rss_warm = prof.rss_mb()
        ttfb, prefill = prof.prompt_timing(session, opts.prompt_bytes, opts.temperature)
        through = {str(k): prof.throughput(session, k, max(64, opts.n_bytes // k), opts.temperature)
                   for k in opts.streams}
        device = detect()
        result = {
            "bundle": str(path), "device": device.get("profile"), "backend": session.describe(),
            "arch": session.bundle.arch, "precision": session.bundle.manifest.precision,
            "temperature": opts.temperature, "latency_us": latency, "ttfb_ms": ttfb, "prompt_bytes": opts.prompt_bytes,
            "prefill_bytes_per_s": prefill, "throughput_bytes_per_s": through,
            "rss_peak_mb": round(prof.rss_mb("VmHWM"), 1), "rss_start_mb": _r(rss_start),
            "rss_growth_mb": _r(prof.rss_mb() - rss_warm if rss_warm is not None else None),
            "gpu_memory_mb": prof.gpu_memory_mb(),
            "unified_memory_mb": prof.unified_memory_mb() if device.get("family") == "jetson" else None,
            "state_bytes_per_stream": session.state_bytes_per_stream, "bundle_bytes": prof.bundle_bytes(path),
            "engine_device_memory_bytes": getattr(timer._backend, "device_memory_bytes", None),
            "environment": prof.environment(session, device), "samples_us": [round(float(x), 2) for x in samples]}
    kind = "native-cpu" if getattr(timer._backend, "name", "") == "native" else None  # as it ran
    result["estimate"] = estimate(StepFacts.of_manifest(session.bundle.manifest),
                                  get_profile(device.get("profile") or "cpu"), opts.streams, kind)
    return result


def _r(x):
    return None if x is None else round(x, 1)


def estimate_only(path: str | Path, device: str, streams: tuple[int, ...]) -> dict:
    """The roofline estimate of a bundle on `device`: the manifest is read and verified, nothing runs."""
    from ..devices import get_profile
    from .bundle import load_bundle

    bundle = load_bundle(path)
    return {"bundle": str(path), **estimate(StepFacts.of_manifest(bundle.manifest), get_profile(device), streams)}


# -- reports -------------------------------------------------------------------------------
def format_estimate(e: dict) -> str:
    parts = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in e["parts_us"].items())
    through = ", ".join(f"{k}: {v:,}" for k, v in e["throughput_bytes_per_s"].items())
    many = next(k for k in e if k.startswith("best_at_") and k != "best_at_batch_1")
    return "\n".join([
        f"estimate    {e['device']} ({e['backend']}, {e['precision']}): {e['latency_us']:.1f} µs/byte at batch 1, "
        f"{e['bound']}-bound ({parts} µs)",
        f"            bytes/s by streams {through}; peak {e['peak_throughput_bytes_per_s']:,}",
        f"            fastest at batch 1: {_best(e['best_at_batch_1'])}; at {many[8:].replace('_', ' ')}: {_best(e[many])}"])


def _best(b: dict) -> str:
    return f"{b['backend']} {b['precision']} (~{b['bytes_per_s']:,} bytes/s)"


ROWS = [("latency p50 µs", lambda r: r["latency_us"]["p50"]), ("latency p90 µs", lambda r: r["latency_us"]["p90"]),
        ("latency p99 µs", lambda r: r["latency_us"]["p99"]), ("latency max µs", lambda r: r["latency_us"]["max"]),
        ("in backend µs", lambda r: r["latency_us"]["backend_mean"]),
        ("outside backend µs", lambda r: r["latency_us"]["outside_backend_mean"]),
        ("time to first byte ms", lambda r: r["ttfb_ms"]), ("prefill bytes/s", lambda r: r["prefill_bytes_per_s"]),
        ("RSS peak MiB", lambda r: r["rss_peak_mb"]), ("RSS growth MiB", lambda r: r["rss_growth_mb"]),
        ("state bytes/stream", lambda r: r["state_bytes_per_stream"]), ("bundle bytes", lambda r: r["bundle_bytes"]),
        ("estimated µs/byte", lambda r: r["estimate"]["latency_us"])]


def _rows(results: list[dict]) -> list[tuple[str, list]]:
    streams = list(results[0]["throughput_bytes_per_s"])
    rows = ROWS[:8] + [(f"bytes/s @{k} streams", lambda r, k=k: r["throughput_bytes_per_s"].get(k))
                       for k in streams] + ROWS[8:]
    return [(name, [get(r) for r in results]) for name, get in rows]


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"


def format_profile(results: list[dict]) -> str:
    """One column per bundle; with two or more, a ratio column of each against the first."""
    head = [f"{Path(r['bundle']).name} ({r['precision']})" for r in results]
    ratio = len(results) > 1
    lines = [f"{'':24}" + "".join(f"{h:>22}" for h in head) + (f"{'ratio':>10}" * (len(results) - 1) if ratio else "")]
    for name, values in _rows(results):
        cells = "".join(f"{_fmt(v):>22}" for v in values)
        if ratio:
            cells += "".join(f"{(v / values[0]):>9.2f}x" if v and values[0] else f"{'-':>10}" for v in values[1:])
        lines.append(f"{name:24}{cells}")
    env = results[0]["environment"]
    lines.append(f"device {results[0]['device']} ({env['evidence']}); backend {results[0]['backend']}; "
                 f"onnxruntime {env['onnxruntime']}, {env['ort_threads']} thread(s)")
    return "\n".join(lines + [format_estimate(results[0]["estimate"])])


def plot_profile(results: list[dict], out: Path) -> None:
    """Per-byte latency distribution and throughput against stream count, one series per bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = f"{Path(r['bundle']).name} ({r['precision']})"
        ax1.hist(r["samples_us"], bins=60, alpha=0.6, label=label)
        counts = [int(k) for k in r["throughput_bytes_per_s"]]
        ax2.plot(counts, list(r["throughput_bytes_per_s"].values()), marker="o", label=label)
    ax1.set(xlabel="µs per byte (batch 1)", ylabel="bytes", title="decode latency")
    ax2.set(xlabel="streams", ylabel="bytes/s", xscale="log", title="throughput")
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_profile(bundles: list[Path], opts: ProfileOptions, device: str | None = None,
                json_out: Path | None = None, plot: Path | None = None) -> str:
    """`edgelm profile`: estimate only (device given), or measure every bundle; write JSON/plot."""
    import json

    from ..fileio import atomic_write_text, check_output_file

    check_options(opts, plot)
    for out in (json_out, plot):
        if out is not None:
            check_output_file(out)
    if device is not None:
        results = [estimate_only(b, device, opts.streams) for b in bundles]
        text = "\n".join(f"{b}\n{format_estimate(e)}" for b, e in zip(bundles, results))
    else:
        results = [profile_bundle(b, opts) for b in bundles]
        text = format_profile(results)
    if json_out is not None:
        report = results[0] if len(results) == 1 else {"bundles": results}
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
    if plot is not None and device is None:
        plot_profile(results, plot)
    return text
