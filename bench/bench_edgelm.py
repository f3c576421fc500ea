"""edgelm's side of `make bench`: the bundles it measures and how (bench/bench.py drives it).

    edgelm-fp32   export_bundle(model, "cpu")                      what `edgelm export --target cpu` writes
    edgelm-fp16   the same with precision fp16                     ONNX Runtime's CPU provider runs it
    edgelm-w8a8   quantize(recipe w8a8) -> export                  outlier-aware int8 weights and activations
    edgelm-w4     quantize(recipe w4, group 64) -> export          int4 weights

Each is opened with the default `Session.open(bundle)` and measured with the profiler's own
functions (edgelm.runtime.profiler), greedy: the code `edgelm profile` runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CALIB_OFFSET, CALIB_BYTES = 120_000, 64 * 1024  # pydoc topics past what the reference models trained on
RECIPES = ("w8a8", "w4")


def write_calibration(work: Path) -> Path:
    import pydoc_data.topics as topics

    data = Path(topics.__file__).read_bytes()[CALIB_OFFSET:CALIB_OFFSET + CALIB_BYTES]
    path = work / "calib.txt"
    path.write_bytes(data)
    return path


def quantized(model_path: Path, out_dir: Path, calib: Path) -> dict[str, Path]:
    """recipe -> quantized checkpoint, calibrated once."""
    from edgelm.checkpoint import save_model
    from edgelm.export.quant.run import prepare, quantize_calibrated

    model, cal, texts, _ = prepare(model_path, [calib], None)
    out = {}
    for recipe in RECIPES:
        entry, _, _ = quantize_calibrated(model, cal, texts, recipe, 64)
        out[recipe] = out_dir / f"{recipe}.pt"
        save_model(model, out[recipe], extra={"quant": entry})
    return out


def edgelm_systems(model_path: Path, work: Path, calib: Path, quick: bool) -> dict[str, Path]:
    """system name -> a freshly exported cpu bundle."""
    from edgelm.export import export_bundle

    plans = {"edgelm-fp32": (model_path, None)}
    if not quick:
        plans["edgelm-fp16"] = (model_path, "fp16")
        for recipe, ckpt in quantized(model_path, work, calib).items():
            plans[f"edgelm-{recipe}"] = (ckpt, None)
    bundles = {}
    for name, (ckpt, precision) in plans.items():
        bundles[name] = work / name
        try:
            export_bundle(ckpt, "cpu", precision, bundles[name], force=True)
        except Exception as exc:  # noqa: BLE001 -- reported in the row
            bundles[name] = exc
    return bundles


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure_edgelm(bundle, trained: bool, data: bytes, ref_bpb: float | None, memory, plan) -> dict:
    """The bench row of one bundle (bench/bench.py's peers get the same fields); `plan` carries
    bench.py's sizes: latency_bytes, prompt_bytes, streams, steps_for(streams)."""
    import numpy as np

    from edgelm.runtime import Session
    from edgelm.runtime.evaluate import bundle_bits_per_byte
    from edgelm.runtime.profiler import prompt_timing, throughput

    import latency

    if isinstance(bundle, Exception):
        raise bundle
    with Session.open(bundle, max_streams=1) as sess:
        backend = sess.describe()
        runner = latency.EdgelmRunner(sess)
        lat = latency.measure(runner, plan.latency_bytes)
        runner.stream.close()  # its slot: prompt_timing opens its own streams
        ttfb, rate = prompt_timing(sess, plan.prompt_bytes, 0.0)
    with Session.open(bundle, max_streams=max(plan.streams)) as sess:
        bps = {str(s): float(np.median([throughput(sess, s, plan.steps_for(s), 0.0) for _ in range(3)]))
               for s in plan.streams}  # median of 3: the machine is shared
    row = {"backend": backend, "latency": lat, "bytes_per_s": bps, "ttfb_ms": ttfb, "prefill_bytes_per_s": rate,
           "size_bytes": dir_bytes(bundle), "peak_rss_mb": memory(bundle)}
    if trained:
        path = bundle.parent / "heldout.txt"  # not inside: a bundle holds only its own files
        path.write_bytes(data)
        row["delta_bpb"] = round(bundle_bits_per_byte(bundle, path)["bits_per_byte"] - ref_bpb, 5)
        path.unlink()
    return row
