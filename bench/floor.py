"""The floor a byte cannot go below on this CPU: its single-thread GEMM peak, and each model's
matmul FLOPs and weight bytes per byte.

    gemm_peak()        best single-thread fp32 GFLOP/s over a few square-ish GEMMs, with PyTorch
                       (oneDNN/MKL) and numpy (OpenBLAS); the larger wins
    work_per_byte(m)   FLOPs of the fused step's matmuls (2 * in * out each; gathers are free) and
                       the bytes of every weight the step reads, per byte generated

The GEMM floor for a model at any batch is flops_per_byte / peak: a byte needs at least that long
even when every matmul runs at peak. Elementwise work (gates, Mamba's selective-scan update) is
not in it: the note beside each model says how much there is.
"""

from __future__ import annotations

import time

import numpy as np
import torch

SHAPES = ((256, 512, 512), (512, 1024, 1024), (1024, 1024, 1024))


def _best_gflops(mm, shape, rounds: int = 7) -> float:
    m, k, n = shape
    a, b = np.random.rand(m, k).astype(np.float32), np.random.rand(k, n).astype(np.float32)
    a, b = mm.prepare(a), mm.prepare(b)
    mm(a, b)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / min(times) / 1e9


class _Torch:
    prepare = staticmethod(torch.from_numpy)

    def __call__(self, a, b):
        return a @ b


class _Numpy:
    prepare = staticmethod(lambda x: x)

    def __call__(self, a, b):
        return a @ b


def gemm_peak() -> dict:
    """{"gflops": best, "by": {"torch": ..., "numpy": ...}} on one thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        by = {name: round(max(_best_gflops(mm, s) for s in SHAPES), 1)
              for name, mm in (("torch", _Torch()), ("numpy", _Numpy()))}
    finally:
        torch.set_num_threads(saved)
    return {"gflops": max(by.values()), "by": by, "shapes": [list(s) for s in SHAPES],
            "note": "numpy's BLAS may use more than one thread unless OPENBLAS_NUM_THREADS=1"}


def work_per_byte(model) -> dict:
    """Matmul FLOPs and weight bytes of one step of the model's fused form, and the elementwise
    state-update values per byte (Mamba's (N, Di) per layer dominates its batched step)."""
    from edgelm.export.fused import fuse

    form = fuse(model)
    flops = 0
    for module in form.modules():
        for name in getattr(module, "matmuls", ()):
            w = getattr(module, name)  # (in, out)
            flops += 2 * w.shape[0] * w.shape[1]
    weight_bytes = sum(b.numel() * b.element_size() for b in form.buffers())
    state_values = sum(int(np.prod(shape)) for _, shape in model.state_spec())
    return {"flops_per_byte": flops, "weight_bytes": weight_bytes, "state_values_per_stream": state_values,
            "params": sum(p.numel() for p in model.parameters())}


def floor_us(work: dict, peak: dict) -> float:
    """µs per byte if every matmul ran at the GEMM peak."""
    return work["flops_per_byte"] / (peak["gflops"] * 1e3)
