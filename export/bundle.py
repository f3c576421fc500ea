"""`edgelm export`: checkpoint -> validated deployment bundle (docs/bundle-format.md).

    profile   = get_profile(target)             precision: the target's rule (edgelm.precision)
    checks    output dir, precision, memory budget (before any work)
    tmp dir   step.onnx, prefill.onnx -> TensorRT op check -> weights.bin (stored once) -> ORT
              parity -> [model.pt] -> build_engine.sh -> manifest.json (runtime/manifest.py)
    swap      atomic_dir renames the finished directory into place; load_bundle verifies it
Nothing is written at the destination unless every check passed; a failed write (a full disk)
is a one-line error and leaves nothing behind (atomic_dir removes its temporary directory).
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .. import precision as precisions
from ..devices import get_profile
from ..errors import EdgelmError
from ..fileio import atomic_dir, atomic_write_text, check_writable
from ..runtime import manifest as fmt
from ..runtime.bundle import load_bundle, sha256_file
from ..runtime.manifest import Artifact, GraphSpec, Manifest, StateTensor, TensorSpec, graph_io, state_io
from .native import PER_POSITION_GRAPH
from .native import unsupported as native_unsupported
from .onnx_export import OPSET
from .trt_ops import check_tensorrt_compat, target_opset

if TYPE_CHECKING:  # torch and onnx load only once the cheap checks passed: bad input fails fast
    from ..models import ByteLM
    from ..precision import Precision

MIB = 1 << 20
INT4_EXPORT_OPSET = 20  # the legacy exporter's newest; lower_blocked_dq lifts int4 graphs to 21
ACT_FACTOR = 16  # live activation tensors per position (gates, norms, MLP), a rough upper bound


def check_output_dir(out: Path, force: bool) -> Path:
    """Refuse, before any work, an output the bundle may not or cannot replace; returns the path
    to write (`out`, or its resolved form where its name is `.` or `..`)."""
    where = out.resolve()
    here = Path.cwd().resolve()
    if where == here or where in here.parents:
        raise EdgelmError(f"output {out} is the current directory or contains it, which export would "
                          "replace; choose another --output (or run from another directory)")
    if out.exists() and not out.is_dir():
        raise EdgelmError(f"output {out} is a file; pass a directory path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EdgelmError(f"output directory {out} is not empty; pass --force to replace it")
    check_writable(out)  # for real: os.access says yes to root on /proc or a read-only mount
    return out if out.name not in ("", "..") else where


def memory_estimate(model: ByteLM, precision: Precision, max_streams: int, chunk: int) -> dict:
    """Rough run-time bytes: weights, ping-pong state for every stream, prefill activations."""
    weights = precision.weight_bytes(model.num_params())
    state = 2 * model.state_bytes_per_stream() * max_streams  # in + out buffers, fp32
    widest = max(max(p.shape) for p in model.parameters())
    act = precision.weight_bytes(max_streams * chunk * widest * ACT_FACTOR)
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


def _graph(path: Path, chunk: int | None, profile, state: tuple[StateTensor, ...]) -> GraphSpec:
    """The manifest's entry for one graph, after the TensorRT and interface checks."""
    import onnx

    from .onnx_export import io_spec

    model = onnx.load(str(path), load_external_data=False)
    problems = check_tensorrt_compat(model, profile, base_dir=str(path.parent))  # values in weights.bin too
    if problems:
        raise EdgelmError(f"{path.name} will not build with TensorRT on {profile.name}: {problems[0]}"
                          + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    spec = io_spec(model)
    inputs, outputs = ([TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in spec[k]]
                       for k in ("inputs", "outputs"))
    if (tuple(inputs), tuple(outputs)) != graph_io(state, chunk, profile.byte_ids_dtype):  # the exporter's contract
        raise RuntimeError(f"{path.name} was exported with an unexpected interface: {spec}")
    return GraphSpec(path.name, len(model.graph.node), tuple(inputs), tuple(outputs), chunk, (fmt.WEIGHTS,))


def _graph_opset(path: Path) -> int:
    import onnx

    from .trt_ops import graph_opset

    return graph_opset(onnx.load(str(path), load_external_data=False))


def _state(model: ByteLM) -> tuple[StateTensor, ...]:
    return tuple(StateTensor(n, *state_io(n), tuple(shape)) for n, shape in model.state_spec())


def _build_script(manifest: Manifest, profile) -> str:
    """trtexec commands for TensorRT targets; for CPU targets a script that says there is none."""
    if not profile.tensorrt_versions:
        return ("#!/usr/bin/env bash\n# Written by edgelm export.\n"
                f"echo 'error: target {profile.name} has no TensorRT: this bundle runs with ONNX Runtime "
                "(edgelm run); re-export with a GPU or Jetson --target for an engine' >&2\nexit 2\n")
    from .trt_build import build_engine_script

    return build_engine_script(manifest, profile)


def _graphs(tmp: Path, model: ByteLM, profile, precision: Precision, chunk: int, opset: int,
            quant: dict | None) -> tuple[dict, dict]:
    """Write, check and validate step.onnx + prefill.onnx sharing weights.bin: (graphs, validation).
    A quantized checkpoint's graphs are its fused form with Q/DQ, checked against that form."""
    from .graph_passes import share_weights
    from .onnx_export import export_prefill, export_step
    from .validate import FormReference, validate

    form = reference = None
    if quant is not None:
        from .quant.stored import quantized_form

        # TensorRT's Gather takes no INT8: its graphs dequantize tables before the Gather
        form = quantized_form(model, quant, "quantized checkpoint", dq_first=bool(profile.tensorrt_versions))
        reference = FormReference(form, model)
    step, prefill = tmp / fmt.STEP_GRAPH, tmp / fmt.PREFILL_GRAPH
    export_step(model, step, precision.name, opset, form, profile.byte_ids_dtype)
    export_prefill(model, prefill, precision.name, chunk, opset, form, profile.byte_ids_dtype)
    state = _state(model)
    graphs = {"step": _graph(step, None, profile, state), "prefill": _graph(prefill, chunk, profile, state)}
    extra = []  # the C target's own prefill form: compiled, checked, never shipped (see _native)
    if _native_prefill(model.arch) == "per_position" and native_unsupported(precision.name) is None:
        extra = [tmp / PER_POSITION_GRAPH]
        export_prefill(model, extra[0], precision.name, chunk, opset, form, profile.byte_ids_dtype, per_position=True)
    share_weights([step, prefill, *extra], tmp / fmt.WEIGHTS)
    validation = validate(model, step, prefill, precision, chunk, reference)
    validation["tensorrt_ops"] = "ok" if profile.tensorrt_versions else "n/a (no TensorRT on this target)"
    return graphs, validation


def _quantization(quant: dict | None) -> dict:
    """The manifest's record of a quantized checkpoint's recipe (empty for float bundles)."""
    if quant is None:
        return {}
    summary = quant.get("summary", {})
    return {"recipe": quant["recipe"], "group": quant["group"], "sites": len(quant["records"]),
            "methods": sorted({r.get("method", "int8 per column") for r in quant["records"].values()}),
            "calibration": quant["calibration"],
            **{k: summary[k] for k in ("bpb_fp32", "bpb_quant", "delta_bpb") if k in summary}}


def _native(tmp: Path, manifest: Manifest, profile, native: bool) -> tuple[list[str], dict, Artifact | None]:
    """The native C target: model.h, model.c and build_native.sh; the compiled C's parity with the
    ONNX graphs where a C compiler is present; and, where the target is this machine (its flags
    say -march=native), the library itself as a device-built artifact.
    Returns (files written, the manifest's validation["native"], the artifact or None)."""
    from .native import build as nb
    from .native import generate, unsupported
    from .native.check import parity

    reason = unsupported(manifest.precision)
    if reason:
        return [], {"status": f"none: {reason}"}, None
    mode = _native_prefill(manifest.arch)
    prefill = {"step": None, "graph": manifest.graphs["prefill"].file, "per_position": PER_POSITION_GRAPH}[mode]
    try:  # the C is an addition: a graph it cannot express still exports, without C
        names = generate(tmp, manifest, prefill)
    except EdgelmError as exc:
        for name in fmt.NATIVE_SOURCES:
            (tmp / name).unlink(missing_ok=True)
        return [], {"status": f"none: {exc}"}, None
    finally:
        (tmp / PER_POSITION_GRAPH).unlink(missing_ok=True)  # its weights are in weights.bin
    atomic_write_text(tmp / fmt.NATIVE_SCRIPT, nb.build_script(profile))
    cc = nb.compiler()
    if not native or cc is None:
        why = "skipped (--no-native)" if not native else "not compiled: no C compiler on the exporting machine"
        return [*names, fmt.NATIVE_SCRIPT], {"status": why}, None
    host = "-march=native" in profile.native_cflags  # the target is this machine: keep the library
    flags = nb.cflags(profile) if host else []
    version = nb.compile_library(tmp, tmp / fmt.NATIVE_LIBRARY, flags, cc)  # a failure is a bug: loud
    result = {"status": "ok", "compiler": version, **parity(tmp, tmp / fmt.NATIVE_LIBRARY, manifest)}
    if not host:
        (tmp / fmt.NATIVE_LIBRARY).unlink()
        return [*names, fmt.NATIVE_SCRIPT], {**result, "checked_with": "this machine's build (no -march)"}, None
    data = (tmp / fmt.NATIVE_LIBRARY).read_bytes()
    return [*names, fmt.NATIVE_SCRIPT], result, nb.library_artifact("", data, version, flags)


def _native_prefill(arch: str) -> str:
    """How the C target runs a prefill chunk: "step", "graph" or "per_position" (see NATIVE_PREFILL)."""
    from .fused import fused_form

    return fused_form(arch).NATIVE_PREFILL


def _write_bundle(tmp: Path, model: ByteLM, profile, precision: Precision, chunk: int, est: dict,
                  with_reference: bool, quant: dict | None = None, native: bool = True) -> Manifest:
    opset = target_opset(profile, OPSET if precision.name != "int4" else INT4_EXPORT_OPSET)
    graphs, validation = _graphs(tmp, model, profile, precision, chunk, opset, quant)
    opset = max(opset, *(_graph_opset(tmp / g.file) for g in graphs.values()))
    if with_reference:
        from ..checkpoint import save_model

        save_model(model, tmp / fmt.REFERENCE)
    manifest = Manifest(
        arch=model.arch, config=model.config_dict(), params=model.num_params(), precision=precision.name,
        opset=opset, max_streams=profile.default_max_streams,
        target=profile.to_dict(), state=_state(model), graphs=graphs, files={}, validation=validation,
        memory=est, edgelm_version=__version__, quantization=_quantization(quant))
    atomic_write_text(tmp / fmt.BUILD_SCRIPT, _build_script(manifest, profile))
    c_files, c_check, library = _native(tmp, manifest, profile, native)
    names = [fmt.STEP_GRAPH, fmt.PREFILL_GRAPH, fmt.WEIGHTS, fmt.BUILD_SCRIPT, *c_files]
    names += [fmt.REFERENCE] if with_reference else []
    manifest = dataclasses.replace(manifest, validation={**validation, "native": c_check},
                                   files={f: sha256_file(tmp / f) for f in names})
    manifest = fmt.write(tmp, manifest)
    if library is not None:  # built here for here: recorded like an engine built on the device
        from .native.build import record_timing

        manifest = fmt.write(tmp, manifest.with_built([dataclasses.replace(library, bundle_id=manifest.bundle_id)]))
        manifest = manifest.with_built([record_timing(tmp)])
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be copied and shared
    for f in (*manifest.files, *manifest.built, fmt.MANIFEST):
        os.chmod(tmp / f, 0o755 if f in (fmt.BUILD_SCRIPT, fmt.NATIVE_SCRIPT, fmt.NATIVE_LIBRARY) else 0o644)
    return manifest


def export_bundle(model_path: str | Path, target: str = "cpu", precision: str | None = None,
                  out_dir: str | Path = "bundle", force: bool = False, chunk: int | None = None,
                  with_reference: bool = False, native: bool = True) -> Manifest:
    """Export a checkpoint into a verified bundle directory for a target; returns its manifest.

    chunk: bytes per prefill call (default: the architecture's fused form's PREFILL_CHUNK).
    with_reference also stores the fp32 checkpoint (model.pt) for the torch reference backend.
    native: compile the C target where a compiler is present (a check, and for `cpu` the library);
    False still writes the C sources.
    """
    out = Path(out_dir)
    profile = get_profile(target)
    prec = precisions.for_target(profile, precision) if precision is not None else None
    if chunk is not None and not 1 <= chunk <= fmt.MAX_CHUNK:
        raise EdgelmError(f"prefill chunk must be 1..{fmt.MAX_CHUNK} bytes, not {chunk}")
    out = check_output_dir(out, force)
    from .fused import fused_form
    from .quant.stored import load_quantized

    model, quant, _ = load_quantized(model_path)
    chunk = fused_form(model.arch).PREFILL_CHUNK if chunk is None else chunk
    prec = _precision(profile, prec, quant, model_path)
    if quant is not None and with_reference:
        raise EdgelmError("--with-reference stores a float model for the torch backend; a quantized "
                          "checkpoint's bundle has none: export without --with-reference")
    est = memory_estimate(model, prec, profile.default_max_streams, chunk)
    check_memory(est, profile, profile.default_max_streams)
    with atomic_dir(out) as tmp:
        _write_bundle(tmp, model, profile, prec, chunk, est, with_reference, quant, native)
    return load_bundle(out).manifest


def _precision(profile, requested: Precision | None, quant: dict | None, model_path) -> Precision:
    """A float checkpoint: --precision or the target's default. A quantized one: its own
    precision, if the target runs it (--precision is then refused: the checkpoint decides)."""
    if quant is None:
        return requested or precisions.for_target(profile, None)
    if requested is not None:
        raise EdgelmError(f"{model_path} is quantized ({quant['recipe']}, {quant['precision']}): it exports "
                          "in its own precision; drop --precision")
    precisions.check_quantized_target(profile, quant["precision"])
    return precisions.get(quant["precision"])
