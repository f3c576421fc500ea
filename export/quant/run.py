"""`edgelm quantize`: checkpoint + calibration text -> quantized checkpoint and report.

    refuse        an already-quantized model, too little text, a bad group (before any work)
    calibrate     the fp32 fused form over the calibration text (progress bar on stderr)
    plan          the recipe decides every site (recipes.py), each decision's error measured
    measure       BPB of the fp32 model and of the quantized fused form on the held-out text
    write         OUT.pt (atomic), REPORT.json, PLOT.png: nothing is written unless all worked
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ...errors import EdgelmError
from ...fileio import atomic_write_text, check_writable
from .calibrate import calibrate, calibration_texts
from .recipes import get_recipe, plan
from .stored import load_quantized


def _check_args(model_path: Path, recipe: str, out: Path, report, plot, group: int) -> None:
    from . import GROUPS

    get_recipe(recipe)
    if group not in GROUPS:
        raise EdgelmError(f"--group must be one of {', '.join(map(str, GROUPS))}, not {group}")
    for path in (out, report, plot):
        if path is not None and path.resolve() == model_path.resolve():
            raise EdgelmError(f"output {path} is the input model; choose another path")
        if path is not None:
            check_writable(path.parent if path.parent != Path("") else Path("."))
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise EdgelmError("--plot needs matplotlib: pip install 'edgelm[plot]'")


def quantize(model_path: Path, recipe_name: str, calib: list[Path], out: Path, data: Path | None,
             report_path: Path | None, plot_path: Path | None, group: int, progress: bool) -> dict:
    from ...checkpoint import save_model
    from .report import plot_channels, summary_line

    _check_args(model_path, recipe_name, out, report_path, plot_path, group)
    model, cal, texts, meta = prepare(model_path, calib, data, progress)
    entry, report, rows = quantize_calibrated(model, cal, texts, recipe_name, group)
    kept = {k: meta[k] for k in ("train", "imported") if k in meta}  # where the float model came from
    save_model(model, out, extra={**kept, "quant": entry})
    if report_path is not None:
        import json

        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    if plot_path is not None:
        plot_channels(cal, rows, plot_path)
    report["summary_line"] = summary_line(report)
    return report


def prepare(model_path: Path, calib: list[Path], data: Path | None, progress: bool = False):
    """(fp32 model, its Calibration, the Texts, the checkpoint's metadata): the recipe-independent
    part, done once."""
    from ..fused import fuse

    model, quant, meta = load_quantized(model_path)
    if quant is not None:
        raise EdgelmError(f"{model_path} is already quantized ({quant['recipe']}); quantize the float "
                          "checkpoint it came from")
    texts = calibration_texts(calib, data)
    for w in texts.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return model, calibrate(model, fuse(model), texts.calib, progress=progress), texts, meta


def quantize_calibrated(model, cal, texts, recipe_name: str, group: int) -> tuple[dict, dict, list]:
    """(the checkpoint's "quant" entry, the report, the per-site rows) of one recipe."""
    from ..fused import fuse
    from .report import build_report

    recipe = get_recipe(recipe_name)
    records, rows = plan(recipe, fuse(model), cal, group)
    entry = {"recipe": recipe.name, "precision": recipe.precision, "group": group, "records": records,
             "calibration": {"bytes": cal.bytes, "sha256": cal.sha256, "files": texts.files}}
    report = build_report(model, entry, rows, cal, texts)
    entry["summary"] = {k: report[k] for k in ("bpb_fp32", "bpb_quant", "delta_bpb", "heldout")}
    return entry, report, rows
