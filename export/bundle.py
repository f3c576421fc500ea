"""`edgelm export`: checkpoint -> validated deployment bundle (docs/bundle-format.md).

    profile   = get_profile(target)             precision defaults to the target's
    checks    output dir, precision, memory budget (before any work)
    tmp dir   step.onnx, prefill.onnx -> TensorRT op check -> ORT parity -> model.pt,
              build_engine.sh, manifest.json (sha256 of every file)
    swap      atomic_dir renames the finished directory into place; load_bundle verifies it
Nothing is written at the destination unless every check passed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

from .. import __version__
from ..devices import get_profile
from ..errors import EdgelmError
from ..vocab import VOCAB
from ..fileio import atomic_dir, atomic_write_text
from ..runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, load_bundle, sha256_file, state_io
from .trt_ops import check_tensorrt_compat, target_opset

if TYPE_CHECKING:  # torch and onnx load only once the cheap checks passed: bad input fails fast
    from ..models import ByteLM

OPSET = 17
DEFAULT_CHUNK = 32
EXPORT_PRECISIONS = ("fp32", "fp16")
MIB = 1 << 20
BYTES = {"fp32": 4, "fp16": 2}
ACT_FACTOR = 16  # live activation tensors per position (gates, norms, MLP), a rough upper bound


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgelmError(f"output {out} is a file; pass a directory path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EdgelmError(f"output directory {out} is not empty; pass --force to replace it")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent if parent != out else out.parent, os.W_OK):
        raise EdgelmError(f"cannot write to {parent}: permission denied; choose another --output")


def resolve_precision(profile, precision: str | None) -> str:
    precision = precision or profile.default_precision
    if not profile.supports(precision):
        raise EdgelmError(f"target {profile.name} does not support {precision} (it supports "
                          f"{', '.join(profile.precisions)}); pass --precision "
                          f"{profile.default_precision} or pick another --target")
    if precision not in EXPORT_PRECISIONS:
        raise EdgelmError(f"edgelm export writes {' or '.join(EXPORT_PRECISIONS)} graphs, not {precision}; "
                          f"pass --precision {'fp16' if profile.supports('fp16') else 'fp32'}")
    return precision


def memory_estimate(model: ByteLM, precision: str, max_streams: int, chunk: int) -> dict:
    """Rough run-time bytes: weights, ping-pong state for every stream, prefill activations."""
    weights = model.num_params() * BYTES[precision]
    state = 2 * model.state_bytes_per_stream() * max_streams  # in + out buffers, fp32
    widest = max(max(p.shape) for p in model.parameters())
    act = max_streams * chunk * widest * ACT_FACTOR * BYTES[precision]
    return {"weights_bytes": weights, "state_bytes": state, "activation_bytes": act,
            "total_bytes": weights + state + act}


def check_memory(est: dict, profile, max_streams: int) -> None:
    budget = profile.app_memory_bytes
    if est["total_bytes"] > budget:
        over = (est["total_bytes"] - budget) / MIB
        raise EdgelmError(
            f"model needs ~{est['total_bytes'] / MIB:.1f} MiB at {max_streams} streams (weights "
            f"{est['weights_bytes'] / MIB:.1f}, state {est['state_bytes'] / MIB:.1f}, activations "
            f"{est['activation_bytes'] / MIB:.1f}) but {profile.name} allows {budget / MIB:.0f} MiB "
            f"for the app: over by {over:.1f} MiB; use a smaller model or fp16")


def _graph(path: Path, chunk: int | None, profile) -> dict:
    """The manifest's entry for one graph, after the TensorRT compatibility check."""
    import onnx

    from .onnx_export import io_spec

    model = onnx.load(str(path))
    problems = check_tensorrt_compat(model, profile)
    if problems:
        raise EdgelmError(f"{path.name} will not build with TensorRT on {profile.name}: {problems[0]}"
                          + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    return {"file": path.name, **({"chunk": chunk} if chunk else {}), "nodes": len(model.graph.node),
            **io_spec(model)}


def _state(model: ByteLM) -> list[dict]:
    return [{"name": n, "input": state_io(n)[0], "output": state_io(n)[1], "shape": list(shape),
             "dtype": "float32"} for n, shape in model.state_spec()]


def _build_script(manifest: dict, profile) -> str:
    """trtexec command for TensorRT targets; for CPU targets a script that says there is none."""
    if not profile.tensorrt_versions:
        return ("#!/usr/bin/env bash\n# Written by edgelm export.\n"
                f"echo 'error: target {profile.name} has no TensorRT: this bundle runs with ONNX Runtime "
                "(edgelm run); re-export with a GPU or Jetson --target for an engine' >&2\nexit 2\n")
    from .trt_build import build_engine_script

    return build_engine_script(manifest, profile)


def _write_bundle(tmp: Path, model: ByteLM, profile, precision: str, chunk: int, est: dict) -> dict:
    from ..checkpoint import save_model
    from .onnx_export import export_prefill, export_step
    from .validate import validate

    opset = target_opset(profile, OPSET)
    export_step(model, tmp / "step.onnx", precision, opset)
    export_prefill(model, tmp / "prefill.onnx", precision, chunk, opset)
    graphs = {"step": _graph(tmp / "step.onnx", None, profile),
              "prefill": _graph(tmp / "prefill.onnx", chunk, profile)}
    validation = validate(model, tmp / "step.onnx", tmp / "prefill.onnx", precision, chunk)
    validation["tensorrt_ops"] = "ok" if profile.tensorrt_versions else "n/a (no TensorRT on this target)"
    save_model(model, tmp / "model.pt")
    graph_ids = sha256_file(tmp / "step.onnx") + sha256_file(tmp / "prefill.onnx")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "edgelm_version": __version__,
        "bundle_id": hashlib.sha256(graph_ids.encode("ascii")).hexdigest(),
        "arch": model.arch, "config": model.config_dict(), "params": model.num_params(), "vocab": VOCAB,
        "precision": precision, "opset": opset, "max_streams": profile.default_max_streams,
        "target": profile.to_dict(), "state": _state(model), "graphs": graphs,
        "validation": validation, "memory": est}
    atomic_write_text(tmp / "build_engine.sh", _build_script(manifest, profile))
    os.chmod(tmp / "build_engine.sh", 0o755)
    manifest["files"] = {f: sha256_file(tmp / f) for f in ("step.onnx", "prefill.onnx", "build_engine.sh", "model.pt")}
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be copied and shared
    for f in (*manifest["files"], MANIFEST):
        os.chmod(tmp / f, 0o755 if f.endswith(".sh") else 0o644)
    return manifest


def export_bundle(model_path: str | Path, target: str = "cpu", precision: str | None = None,
                  out_dir: str | Path = "bundle", force: bool = False, chunk: int = DEFAULT_CHUNK) -> dict:
    """Export a checkpoint into a verified bundle directory for a target; returns the manifest."""
    out = Path(out_dir)
    profile = get_profile(target)
    precision = resolve_precision(profile, precision)
    if not 1 <= chunk <= 256:
        raise EdgelmError(f"prefill chunk must be 1..256 bytes, not {chunk}")
    check_output_dir(out, force)
    from ..checkpoint import load_model

    model = load_model(model_path)
    est = memory_estimate(model, precision, profile.default_max_streams, chunk)
    check_memory(est, profile, profile.default_max_streams)
    with atomic_dir(out) as tmp:
        manifest = _write_bundle(tmp, model, profile, precision, chunk, est)
    load_bundle(out)
    return manifest
