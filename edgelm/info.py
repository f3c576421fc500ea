"""Model facts for `edgelm info`: architecture, parameters, weight bytes, per-stream state."""

from __future__ import annotations

from .python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

from pathlib import Path

from .checkpoint import load_checkpoint
from .models import ByteLM


def weight_bytes(model: ByteLM) -> dict:
    """Bytes of weights per precision. int8 = 1 byte per value + one fp32 scale per row."""
    params = model.num_params()
    rows = sum(p.shape[0] if p.dim() >= 2 else 1 for p in model.parameters())
    return {"fp32": 4 * params, "fp16": 2 * params, "int8": params + 4 * rows}


def model_info(path: str | Path) -> dict:
    """Architecture, config, parameter count, weight bytes and per-stream state of a checkpoint."""
    model, meta = load_checkpoint(path)
    info = {"arch": model.arch, "config": model.config_dict(), "params": model.num_params(),
            "weight_bytes": weight_bytes(model),
            "state_bytes_per_stream": model.state_bytes_per_stream(4),
            "state": [{"name": n, "shape": list(s)} for n, s in model.state_spec()],
            "source": meta.get("source", "edgelm")}
    if meta.get("quant") is not None:
        from .export.quant.stored import quant_of

        q = quant_of(meta, str(path))
        info["quantization"] = {"recipe": q["recipe"], "precision": q["precision"], "group": q["group"],
                                "sites": len(q["records"]), **q.get("summary", {})}
    if "imported" in meta:
        info["imported"] = meta["imported"]
    if "train" in meta:
        info["train"] = {k: meta["train"][k] for k in ("steps", "seed", "val_bpb") if k in meta["train"]}
    return info


def device_estimate(path: str | Path, device: str) -> dict:
    """The roofline estimate (runtime/roofline.py) of the model's bundle on `device`: its step graph
    is exported to a temporary file for its node count, in the precision the bundle would have."""
    import tempfile

    import onnx

    from .devices import get_profile
    from .export.onnx_export import export_step
    from .export.quant.stored import load_quantized, quantized_form
    from .runtime.roofline import StepFacts, estimate

    profile = get_profile(device)
    model, quant, _ = load_quantized(path)
    precision = quant["precision"] if quant is not None else profile.default_precision
    form = quantized_form(model, quant, str(path)) if quant is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        export_step(model, Path(tmp) / "step.onnx", precision, form=form)
        nodes = len(onnx.load(str(Path(tmp) / "step.onnx"), load_external_data=False).graph.node)
    facts = StepFacts(model.arch, model.num_params(), precision, model.state_bytes_per_stream(4), nodes)
    return estimate(facts, profile)


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


def _provenance_lines(info: dict) -> list[str]:
    """The `trained` and `source` lines, where the checkpoint says."""
    lines = []
    if "train" in info and "val_bpb" in info["train"]:
        t = info["train"]
        lines.append(f"trained     {t.get('steps')} steps, seed {t.get('seed')}, "
                     f"held-out {t['val_bpb']:.3f} bits/byte")
    if info.get("source") != "edgelm":
        lines.append(f"source      {info['source']}")
    elif "imported" in info:
        lines.append(f"source      edgelm checkpoint, imported from a {info['imported'].get('layout')}")
    lines += _vocab_lines(info.get("imported", {}))
    q = info.get("quantization")
    if q:
        delta = f", held-out {q['bpb_fp32']:.4f} -> {q['bpb_quant']:.4f} bits/byte" if "bpb_quant" in q else ""
        lines.append(f"quantized   {q['recipe']} ({q['precision']}, {q['sites']} sites){delta}")
    return lines


def _vocab_lines(imported: dict) -> list[str]:
    """What an import changed: padded vocabulary rows dropped, a tied head, the fp32 residual."""
    lines = []
    dropped = imported.get("padding_rows_dropped", 0)
    if dropped:
        lines.append(f"vocab       {imported['vocab_rows']} rows in the file: the {dropped} padding rows "
                     "past the 256 bytes are dropped")
    if imported.get("tied_embeddings"):
        lines.append("head        tied to the embedding in the file (stored as its own copy)")
    return lines


def format_info(info: dict) -> str:
    """Human-readable `edgelm info`."""
    cfg = ", ".join(f"{k}={v}" for k, v in info["config"].items())
    wb = info["weight_bytes"]
    lines = [f"arch        {info['arch']}  ({cfg})",
             f"params      {info['params']:,}",
             f"weights     fp32 {_kb(wb['fp32'])}  fp16 {_kb(wb['fp16'])}  int8 ~{_kb(wb['int8'])}",
             f"state       {info['state_bytes_per_stream']:,} bytes/stream (fp32): "
             + ", ".join(f"{s['name']}{tuple(s['shape'])}" for s in info["state"])]
    lines += _provenance_lines(info)
    if "estimate" in info:
        from .runtime.profile_report import format_estimate

        lines.append(format_estimate(info["estimate"]))
    return "\n".join(lines)
