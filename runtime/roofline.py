"""Roofline estimate of a bundle's per-byte latency and peak throughput on any device profile.

Runs nothing: it reads the manifest (parameters, precision, state, the step graph's node count)
and the profile (memory bandwidth, peak compute) and adds a per-node dispatch cost:

    t(B) = fixed + nodes * per_node + max(FLOPs(B) / peak, bytes(B) / bandwidth) + (B - 1) * per_stream
    FLOPs(B) = 2 * params * B                  every weight is used once per byte per stream
    bytes(B) = params * bytes_per_weight + 2 * state_bytes * B      weights once, state in + out
    per_stream = sampling and bookkeeping of one more stream + (on a CPU) the elementwise work on
                 its state values: the part of a batched step that grows with B besides the matmuls
    throughput(B) = B / t(B),  latency per byte at batch 1 = t(1)

FLOPs count the embedding table as if it were a matmul (an overestimate of 256/vocab-row reads),
and bytes assume the weights come from DRAM: on a CPU whose cache holds a 0.3M-parameter model
the real memory term is smaller. Each constant below says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}

# Dispatch costs per backend kind: (fixed µs per step, µs per ONNX node of the step graph).
DISPATCH = {
    # Measured on the 2-core x86 development machine (onnxruntime 1.32, one thread, greedy
    # Stream.generate on the five reference bundles: 23-164 nodes, 31-147 µs per byte;
    # bench/results/profile_bench.json): the fixed part is the Python runtime and the ORT call.
    "onnxruntime-cpu": (10.0, 0.5),
    # The native C backend, measured on the same machine (bench/results/native_bench.json and perf
    # of the C step): ~4 µs of Python per byte around the ctypes call (lstm-tiny: 13.7 µs through
    # the Session, 9.4 µs in C), and ~0.06 µs per graph node of elementwise C (mamba-tiny's 184).
    "native-cpu": (4.0, 0.06),
    # Measured on an H200 (bench/results/gpu_bench-h200.json): CUDA-graph replay of the step costs
    # 1.3-2.5 µs per ONNX node; the Session adds ~75-300 µs of host<->device state copies and sync.
    "torch-cuda": (100.0, 1.3),
    # Assumed, not measured (no TensorRT here): TensorRT fuses elementwise chains into about one
    # kernel per two ONNX nodes, each costing what a node costs in the CUDA-graph replay above
    # (TensorRT replays its engine without Python); 30 µs of enqueue, sync and logits copy per step.
    "tensorrt": (30.0, 0.65),
}
# Assumed: a Jetson's ARM host (Cortex-A78AE) issues work about twice as slowly as a desktop's.
JETSON_DISPATCH_FACTOR = 2.0
# Each stream past the first, measured on the same CPU (bench/results/profile_bench.json: bytes/s at
# 1 and 8 streams): ~5 µs of batched sampling and bookkeeping, and ~4 ns per state value of
# elementwise work on one thread (mamba-tiny: 14.6k values, +66 µs per stream; lstm: 512, +13 µs).
# On a GPU the elementwise work runs in parallel and is left to the bandwidth term.
PER_STREAM_US = 5.0
CPU_NS_PER_STATE_VALUE = 4.0
# Precisions each backend kind runs fast: ONNX Runtime's x86/arm CPU kernels compute fp16 through
# fp32 with casts (devices/profiles/cpu.toml), the torch backend runs the fp32/fp16 reference model
# (runtime/backends/torch_ref.py), TensorRT every precision its device has. None = the profile's.
FAST_PRECISIONS = {"onnxruntime-cpu": ("fp32", "int8", "int4"), "native-cpu": ("fp32", "int8"),
                   "torch-cuda": ("fp32", "fp16"), "tensorrt": None}
# Peak fp32 compute for one CPU thread (the runtime runs one intra-op thread at batch 1): x86 with
# two 256-bit FMA units at ~3 GHz = 2 * 8 * 2 * 3e9 = 96 GFLOP/s; Cortex-A76 (Raspberry Pi 5):
# two 128-bit FMA units at 2.4 GHz = 38 GFLOP/s (Arm Cortex-A76 software optimization guide).
CPU_GFLOPS = {"cpu-x86": 96.0, "cpu-arm64": 38.0}
CPU_GFLOPS_DEFAULT = 50.0
# GPU fp32 (no tensor cores) taken as a quarter of the profile's fp16 tensor-core peak.
FP32_OF_FP16 = 0.25


@dataclass(frozen=True)
class StepFacts:
    """What the estimate needs from a bundle (or a model about to become one)."""

    arch: str
    params: int
    precision: str
    state_bytes: int  # per stream, fp32
    nodes: int  # the step graph's

    @classmethod
    def of_manifest(cls, manifest) -> "StepFacts":
        return cls(manifest.arch, manifest.params, manifest.precision, manifest.state_bytes_per_stream(),
                   manifest.graphs["step"].nodes)


def backends_for(profile) -> list[str]:
    """The backend kinds a profile can run (the first: the default estimate's)."""
    return ["onnxruntime-cpu", "native-cpu"] if profile.family == "cpu" else ["tensorrt", "torch-cuda"]


def peak_flops(profile, precision: str) -> float:
    """FLOP/s the step's matmuls can reach on `profile` in `precision`."""
    if profile.family == "cpu":
        return CPU_GFLOPS.get(profile.name, CPU_GFLOPS_DEFAULT) * 1e9
    if precision in ("int8", "int4", "fp8") and profile.peak_int8_tops:
        return profile.peak_int8_tops * 1e12
    fp16 = profile.peak_fp16_tflops * 1e12
    return fp16 if precision in ("fp16", "bf16") else fp16 * FP32_OF_FP16


def step_time_us(facts: StepFacts, profile, backend: str, batch: int, precision: str | None = None) -> dict:
    """The modelled time of one step of `batch` streams, with its parts (µs)."""
    precision = precision or facts.precision
    fixed, per_node = DISPATCH[backend]
    if profile.family == "jetson":
        fixed, per_node = fixed * JETSON_DISPATCH_FACTOR, per_node * JETSON_DISPATCH_FACTOR
    flops = 2.0 * facts.params * batch
    moved = facts.params * BYTES_PER_WEIGHT[precision] + 2.0 * facts.state_bytes * batch
    compute = flops / peak_flops(profile, precision) * 1e6
    memory = moved / (profile.memory_bandwidth_gbs * 1e9) * 1e6
    dispatch = fixed + facts.nodes * per_node
    per_stream = PER_STREAM_US + (CPU_NS_PER_STATE_VALUE * facts.state_bytes / 4 / 1e3 if profile.family == "cpu" else 0)
    streams = (batch - 1) * per_stream
    parts = {"dispatch": dispatch, "compute": compute, "memory": memory, "streams": streams}
    return {"total_us": dispatch + max(compute, memory) + streams, "bound": max(parts, key=parts.get),
            **{f"{k}_us": v for k, v in parts.items()}}


def estimate(facts: StepFacts, profile, streams: tuple[int, ...] = (1, 8, 64), backend: str | None = None) -> dict:
    """Latency per byte at batch 1, throughput per stream count, the bound, and the fastest
    backend/precision at batch 1 and at the profile's stream limit. `backend`: the kind to model
    (default: the profile's first)."""
    backend = backend or backends_for(profile)[0]
    one = step_time_us(facts, profile, backend, 1)
    through = {str(b): round(b / step_time_us(facts, profile, backend, b)["total_us"] * 1e6)
               for b in streams}
    many = profile.default_max_streams
    return {"device": profile.name, "backend": backend, "precision": facts.precision,
            "latency_us": round(one["total_us"], 1), "bound": one["bound"],
            "parts_us": {k: round(v, 2) for k, v in one.items() if k.endswith("_us") and k != "total_us"},
            "throughput_bytes_per_s": through,
            "peak_throughput_bytes_per_s": round(many / step_time_us(facts, profile, backend, many)["total_us"] * 1e6),
            "best_at_batch_1": _best(facts, profile, 1), f"best_at_{many}_streams": _best(facts, profile, many),
            "assumptions": "runtime/roofline.py: DISPATCH, JETSON_DISPATCH_FACTOR, CPU_GFLOPS, FP32_OF_FP16; "
                           "the profile's bandwidth and peaks; "
                           "int8/int4 need `edgelm quantize` and their Q/DQ nodes are not modelled"}


def _best(facts: StepFacts, profile, batch: int) -> dict:
    """The (backend, precision) with the lowest modelled step time at `batch`."""
    options = [(step_time_us(facts, profile, be, batch, p)["total_us"], be, p)
               for be in backends_for(profile) for p in FAST_PRECISIONS[be] or profile.precisions
               if p in BYTES_PER_WEIGHT and profile.supports(p)]
    t, be, p = min(options)
    return {"backend": be, "precision": p, "bytes_per_s": round(batch / t * 1e6)}
