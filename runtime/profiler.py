"""`edgelm profile BUNDLE`: latency, throughput and memory where the bundle runs (numpy +
onnxruntime; never torch at import). Everything is measured through the public Session API with
time.perf_counter_ns (monotonic); the backend is wrapped in a timer so that time inside it and
time outside it (sampling, bookkeeping) are told apart. GPU backends return host arrays each
step, so a step's time includes its synchronisation.

    decode     batch 1, `n_bytes` sampled bytes (`temperature`, seed 0; 0 = greedy) after a warm-up:
               p50/p90/p99/max µs per byte, mean µs inside and outside the backend
    prompt     a fresh stream fed `prompt_bytes` then one byte generated: time to first byte (ms)
               and prefill bytes/s (median of PROMPT_RUNS)
    streams    for each stream count k, k streams generating in one Scheduler: total bytes/s
    memory     resident peak (VmHWM) and growth after the warm-up; NVML GPU memory; on a Jetson the
               unified memory in use from /proc/meminfo; state bytes per stream; bundle bytes on disk
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from .sampling import Sampling

WARMUP_BYTES = 64
THROUGHPUT_WARMUP = 8  # steps of each batch before its clock starts
PROMPT_RUNS = 5
PROMPT_TEXT = b"The streaming runtime keeps one fixed state per stream, whatever the length. " * 64


class BackendTimer:
    """Forwards to a backend and adds up the nanoseconds spent inside its step methods."""

    def __init__(self, backend):
        self._backend, self.ns = backend, 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def _timed(self, name, *args):
        t0 = time.perf_counter_ns()
        try:
            return getattr(self._backend, name)(*args)
        finally:
            self.ns += time.perf_counter_ns() - t0

    def step_one(self, byte):
        return self._timed("step_one", byte)

    def run_resident(self, byte_ids):
        return self._timed("run_resident", byte_ids)

    def step(self, byte_ids, states):
        return self._timed("step", byte_ids, states)


def rss_mb(field: str = "VmRSS") -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return None


def _percentiles(us: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(us.max()), 2), "mean": round(float(us.mean()), 2)}


def decode_latency(session, timer: BackendTimer, n_bytes: int, temperature: float,
                   tick=None) -> tuple[dict, np.ndarray]:
    """Batch-1 per-byte latency of Stream.generate, split into inside/outside the backend."""
    with session.stream(Sampling(temperature=temperature, seed=0), b"def ") as stream:
        for _ in stream.generate(WARMUP_BYTES):
            pass
        gen, total = stream.generate(n_bytes), np.zeros(n_bytes)
        inside0, start = timer.ns, time.perf_counter_ns()
        for i in range(n_bytes):
            t0 = time.perf_counter_ns()
            next(gen)
            total[i] = (time.perf_counter_ns() - t0) / 1e3
            if tick:
                tick()
        wall = (time.perf_counter_ns() - start) / 1e3
    stats = _percentiles(total)
    stats["backend_mean"] = round((timer.ns - inside0) / 1e3 / n_bytes, 2)
    stats["outside_backend_mean"] = round(wall / n_bytes - stats["backend_mean"], 2)
    return stats, total


def prompt_timing(session, prompt_bytes: int, temperature: float) -> tuple[float, float]:
    """(time to first byte in ms, prefill bytes/s): medians over PROMPT_RUNS fresh streams."""
    prompt = (PROMPT_TEXT * (prompt_bytes // len(PROMPT_TEXT) + 1))[:prompt_bytes]
    ttfb, rate = [], []
    for _ in range(PROMPT_RUNS):
        with session.stream(Sampling(temperature=temperature, seed=0)) as stream:
            t0 = time.perf_counter_ns()
            stream.feed(prompt)
            t1 = time.perf_counter_ns()
            next(stream.generate(1))
            t2 = time.perf_counter_ns()
        ttfb.append((t2 - t0) / 1e6)
        rate.append(prompt_bytes / max((t1 - t0) / 1e9, 1e-9))
    return round(float(np.median(ttfb)), 3), round(float(np.median(rate)), 1)


def throughput(session, streams: int, n_bytes: int, temperature: float) -> float:
    """Total bytes/s of `streams` streams generating `n_bytes` each in one Scheduler."""
    sched = session.scheduler()
    opened = [session.stream(Sampling(temperature=temperature, seed=i), b"def ") for i in range(streams)]
    try:
        for s in opened:
            sched.add(s, n_bytes + THROUGHPUT_WARMUP)
        for _ in range(THROUGHPUT_WARMUP):  # the first batched steps gather the state: not counted
            sched.step()
        t0 = time.perf_counter_ns()
        while sched.active:
            sched.step()
        secs = (time.perf_counter_ns() - t0) / 1e9
        return round(streams * n_bytes / max(secs, 1e-9), 1)
    finally:
        for s in opened:
            s.close()


def gpu_memory_mb() -> float | None:
    """Memory in use on GPU 0 through NVML (pynvml), where NVML works; None otherwise."""
    try:
        import pynvml

        pynvml.nvmlInit()
        used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
        pynvml.nvmlShutdown()
        return round(used / 2**20, 1)
    except Exception:  # noqa: BLE001 - no pynvml, no driver, or a Jetson (NVML reports nothing)
        return None


def unified_memory_mb() -> float | None:
    """A Jetson's memory in use (MemTotal - MemAvailable): CPU and GPU share it."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return round((int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024, 1)
    except (OSError, KeyError, ValueError):
        return None


def bundle_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def environment(session, device: dict) -> dict:
    import onnxruntime

    return {"profile": device.get("profile"), "evidence": device.get("evidence"),
            "backend": session.describe(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "ort_threads": int(os.environ.get("EDGELM_ORT_THREADS", "1")), "cpus": os.cpu_count()}
