"""Issue 10's side-by-side benchmark: edgelm's quantization recipes next to stock tools.

For each reference model (models/{lstm,gru,mingru,mamba,rglru}-tiny.pt, and models/charrnn-lstm.pt,
a plain char-RNN, when it exists), calibrated once on bytes [120000:120000+256 KiB] of the stdlib's
pydoc_data/topics.py (in distribution, not trained on) and measured on the stdlib's textwrap.py
(the README's held-out file, never calibrated on):
    fp32 bundle            export_bundle of the float checkpoint (the reference for ratios, ΔBPB)
    w8 w8a8-naive w8a8 w4  quantize_calibrated -> checkpoint -> export_bundle -> runtime eval
    baselines              bench/quant_baselines.baselines(): plain torch.onnx.export in ORT,
                           ORT quantize_dynamic / quantize_static (QDQ defaults), torch.ao dynamic
Per recipe: ΔBPB of the checkpoint (fake-quant torch, the quantize report's), ΔBPB of the bundle
(bundle_bits_per_byte, the deployed graph through the runtime, minus the fp32 bundle's), their
difference, bundle bytes (all files) and the ratio to the fp32 bundle, weights.bin bytes, µs/byte
of the bundle's step.onnx with quant_baselines.onnx_stepper_bpb (the baselines' harness: batch 1,
1 thread, median per step), the w8a8 method chosen per site, export wall time. A failing step is
an error row; the run goes on. Targets are checked and printed PASS/FAIL.

    .venv/bin/python bench/quant_bench.py [--models lstm,gru] [--recipes w8,w4] [--out X.json]
Writes X.json and X.md (default bench/results/quant_bench.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quant_baselines import baselines, onnx_stepper_bpb  # noqa: E402

MODELS = ("lstm", "gru", "mingru", "mamba", "rglru", "charrnn-lstm")
RECIPES = ("w8", "w8a8-naive", "w8a8", "w4")
CALIB_OFFSET, CALIB_BYTES = 120_000, 256 * 1024
BASELINES = ("fp32_plain_ort", "ort_quantize_dynamic", "ort_quantize_static_qdq", "torch_ao_dynamic",
             "torch_eager_fp32")
# recipe -> (max ΔBPB, max size ratio to the fp32 bundle, µs/byte must beat fp32 bundle + ORT dynamic)
TARGETS = {"w8": (0.003, 0.30, True), "w8a8": (0.010, 0.30, True), "w4": (0.030, 0.20, False),
           "w8a8-naive": (None, None, True)}
MAX_BUNDLE_VS_CKPT = 0.002


def model_path(name: str) -> Path:
    """models/{name}-tiny.pt if it exists, else models/{name}.pt."""
    tiny = ROOT / "models" / f"{name}-tiny.pt"
    return tiny if tiny.is_file() else ROOT / "models" / f"{name}.pt"


def default_models() -> list[str]:
    """The five tiny reference models, and the char-RNN when its checkpoint exists."""
    return [m for m in MODELS if m != "charrnn-lstm" or model_path(m).is_file()]


def error_of(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:400]
    return f"{type(exc).__name__}: {first}"


def machine() -> dict:
    """The CPU, core count, library versions and the load average now."""
    import onnx
    import onnxruntime
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "torch_threads": torch.get_num_threads(), "loadavg_start": list(os.getloadavg())}


def write_calibration(work: Path) -> tuple[Path, dict]:
    """The calibration text, written to work/calib.txt, and where it came from."""
    import hashlib

    import pydoc_data.topics as topics

    data = Path(topics.__file__).read_bytes()[CALIB_OFFSET:CALIB_OFFSET + CALIB_BYTES]
    path = work / "calib.txt"
    path.write_bytes(data)
    return path, {"source": f"pydoc_data/topics.py[{CALIB_OFFSET}:{CALIB_OFFSET + len(data)}]",
                  "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure_bundle(bundle: Path, model, heldout: Path, latency_text: bytes) -> dict:
    """BPB through the runtime, sizes, and µs/byte of step.onnx in the baselines' harness, with
    the session configured as edgelm's runtime configures it for the bundle's precision."""
    from edgelm.runtime.backends.ort import disabled_optimizers
    from edgelm.runtime.bundle import load_bundle
    from edgelm.runtime.evaluate import bundle_bits_per_byte

    bpb = bundle_bits_per_byte(bundle, heldout)["bits_per_byte"]
    off = disabled_optimizers(load_bundle(bundle).manifest.precision)
    stepper_bpb, us = onnx_stepper_bpb(bundle / "step.onnx", model, latency_text, off)
    return {"bundle_bpb": round(bpb, 5), "bundle_bytes": dir_bytes(bundle),
            "weights_bin_bytes": (bundle / "weights.bin").stat().st_size,
            "us_per_byte": round(us, 1), "stepper_bpb": round(stepper_bpb, 5),
            "latency_bytes": len(latency_text)}


def export_timed(ckpt: Path, out: Path) -> float:
    from edgelm.export import export_bundle

    t0 = time.perf_counter()
    export_bundle(ckpt, "cpu", None, out, force=True)
    return round(time.perf_counter() - t0, 1)


def fp32_row(path: Path, model, work: Path, heldout: Path, latency_text: bytes) -> dict:
    """The float checkpoint's bundle: the reference every recipe is compared with."""
    try:
        export_s = export_timed(path, work / "bundle-fp32")
        return {"export_s": export_s, **measure_bundle(work / "bundle-fp32", model, heldout, latency_text)}
    except Exception as exc:  # noqa: BLE001 -- recorded, the run goes on
        return {"error": error_of(exc)}


def site_methods(rows: list[dict]) -> dict:
    """{site: method} of the per-site rows (None where a site stays float)."""
    return {r["site"]: r.get("method") for r in rows}


def quantize_row(model, cal, texts, recipe: str, ckpt: Path) -> tuple[dict, list]:
    """Quantize with one recipe, save the checkpoint; the checkpoint's half of the row."""
    from edgelm.checkpoint import save_model
    from edgelm.export.quant.run import quantize_calibrated

    t0 = time.perf_counter()
    entry, report, rows = quantize_calibrated(model, cal, texts, recipe, group=64)
    quant_s = round(time.perf_counter() - t0, 1)
    save_model(model, ckpt, extra={"quant": entry})
    row = {"precision": entry["precision"], "quantize_s": quant_s, "ckpt_bpb_fp32": round(report["bpb_fp32"], 5),
           "ckpt_bpb": round(report["bpb_quant"], 5), "ckpt_delta_bpb": round(report["delta_bpb"], 5),
           "ckpt_size_bytes_fp32": report["size_bytes_fp32"], "ckpt_size_bytes": report["size_bytes_quant"]}
    return row, rows


def restore_if_mutated(model, snapshot: dict) -> str | None:
    """Put the fp32 weights back if a recipe changed them in place; say which ones it changed."""
    import torch

    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, snapshot[k])]
    if not changed:
        return None
    model.load_state_dict(snapshot)
    return f"quantizing changed the fp32 model in place ({', '.join(changed[:4])}); restored"


def recipe_row(model, cal, texts, recipe: str, ctx: dict) -> dict:
    """One recipe end to end: checkpoint, bundle, runtime BPB, sizes, latency. Errors recorded."""
    work, fp32 = ctx["work"], ctx["fp32"]
    try:
        row, rows = quantize_row(model, cal, texts, recipe, work / f"{recipe}.pt")
    except Exception as exc:  # noqa: BLE001
        return {"error": f"quantize: {error_of(exc)}"}
    if recipe == "w8a8":
        row["methods"] = site_methods(rows)
    try:
        row["export_s"] = export_timed(work / f"{recipe}.pt", work / f"bundle-{recipe}")
        row.update(measure_bundle(work / f"bundle-{recipe}", model, ctx["heldout"], ctx["latency_text"]))
    except Exception as exc:  # noqa: BLE001 -- e.g. a parity error while the tolerance is tuned
        row["error"] = f"export: {error_of(exc)}"
        return row
    row["bundle_vs_ckpt_bpb"] = round(abs(row["bundle_bpb"] - row["ckpt_bpb"]), 5)
    if "bundle_bpb" in fp32:
        row["bundle_delta_bpb"] = round(row["bundle_bpb"] - fp32["bundle_bpb"], 5)
        row["size_ratio"] = round(row["bundle_bytes"] / fp32["bundle_bytes"], 4)
        row["weights_ratio"] = round(row["weights_bin_bytes"] / fp32["weights_bin_bytes"], 4)
    return row


def bench_model(name: str, recipes: list[str], work: Path, calib: Path, heldout: Path, cap: int) -> dict:
    """Calibrate once, then the fp32 bundle, every recipe and the baselines of one model."""
    from edgelm.export.quant.run import prepare

    path, t0 = model_path(name), time.perf_counter()
    if not path.is_file():
        return {"path": str(path.relative_to(ROOT)), "error": "checkpoint not found"}
    model, cal, texts, _ = prepare(path, [calib], heldout)
    model.eval()
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    held = heldout.read_bytes()
    ctx = {"work": work, "heldout": heldout, "latency_text": held[:cap] if cap else held}
    res = {"path": str(path.relative_to(ROOT)), "arch": model.arch, "params": model.num_params(),
           "prepare_s": round(time.perf_counter() - t0, 1)}
    res["fp32"] = ctx["fp32"] = fp32_row(path, model, work, heldout, ctx["latency_text"])
    res["recipes"] = {}
    for recipe in recipes:
        res["recipes"][recipe] = row = recipe_row(model, cal, texts, recipe, ctx)
        if mutated := restore_if_mutated(model, snapshot):
            row["error"] = "; ".join(filter(None, [row.get("error"), mutated]))
        print(f"  {name} {recipe}: {short(res['recipes'][recipe])}", file=sys.stderr, flush=True)
    (work / "baselines").mkdir(exist_ok=True)
    res["baselines"] = baselines(model, calib.read_bytes(), held, work / "baselines")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def short(row: dict) -> str:
    keys = ("ckpt_delta_bpb", "bundle_delta_bpb", "size_ratio", "us_per_byte", "error")
    return ", ".join(f"{k}={row[k]}" for k in keys if k in row)


def check(model: str, recipe: str, name: str, value, limit, ok: bool | None) -> dict:
    return {"model": model, "recipe": recipe, "check": name, "value": value, "limit": limit,
            "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")}


def recipe_checks(model: str, recipe: str, row: dict, res: dict) -> list[dict]:
    """The issue's targets for one recipe row; a missing value (an error) is a FAIL."""
    max_delta, max_ratio, fast = TARGETS.get(recipe, (None, None, False))
    out = []
    if max_delta is not None:
        for key in ("ckpt_delta_bpb", "bundle_delta_bpb"):
            v = row.get(key)
            out.append(check(model, recipe, f"{key} <= {max_delta}", v, max_delta, v is not None and v <= max_delta))
    v = row.get("bundle_vs_ckpt_bpb")
    out.append(check(model, recipe, f"bundle vs ckpt <= {MAX_BUNDLE_VS_CKPT}", v, MAX_BUNDLE_VS_CKPT,
                     v is not None and v <= MAX_BUNDLE_VS_CKPT))
    if max_ratio is not None:
        v = row.get("size_ratio")
        out.append(check(model, recipe, f"size <= {max_ratio}x fp32 bundle", v, max_ratio,
                         v is not None and v <= max_ratio))
    if fast and row.get("precision", "int8") == "int8":
        out += latency_checks(model, recipe, row, res)
    return out


def latency_checks(model: str, recipe: str, row: dict, res: dict) -> list[dict]:
    """µs/byte of an int8 bundle vs the fp32 bundle's and ORT quantize_dynamic's."""
    us = row.get("us_per_byte")
    refs = {"fp32 bundle": res.get("fp32", {}).get("us_per_byte"),
            "ORT quantize_dynamic": res.get("baselines", {}).get("ort_quantize_dynamic", {}).get("us_per_byte")}
    return [check(model, recipe, f"us/byte <= {name}", us, ref, None if ref is None else us is not None and us <= ref)
            for name, ref in refs.items()]


def all_checks(models: dict) -> list[dict]:
    return [c for name, res in models.items() for recipe, row in res.get("recipes", {}).items()
            for c in recipe_checks(name, recipe, row, res)]


def fmt(v, spec: str = "") -> str:
    return "–" if v is None else format(v, spec).replace("|", "\\|")


def edgelm_lines(res: dict, fails: dict) -> list[str]:
    """Markdown rows of the fp32 bundle and every recipe of one model."""
    fp = res.get("fp32", {})
    lines = [f"| fp32 bundle | – | 0 | – | {fmt(fp.get('bundle_bpb'), '.4f')} | {fmt(fp.get('bundle_bytes'), ',')} | 1.00 "
             f"| {fmt(fp.get('weights_bin_bytes'), ',')} | {fmt(fp.get('us_per_byte'))} | {fmt(fp.get('export_s'))} "
             f"| {fmt(fp.get('error', ''))} |"]
    for recipe, r in res.get("recipes", {}).items():
        bad = fails.get(recipe, [])
        note = fmt("; ".join(filter(None, [r.get("error", ""), "FAIL: " + ", ".join(bad) if bad else "PASS"])))
        lines.append(f"| {recipe} | {fmt(r.get('ckpt_delta_bpb'), '+.4f')} | {fmt(r.get('bundle_delta_bpb'), '+.4f')} "
                     f"| {fmt(r.get('bundle_vs_ckpt_bpb'), '.4f')} | {fmt(r.get('bundle_bpb'), '.4f')} "
                     f"| {fmt(r.get('bundle_bytes'), ',')} | {fmt(r.get('size_ratio'), '.3f')} "
                     f"| {fmt(r.get('weights_bin_bytes'), ',')} ({fmt(r.get('weights_ratio'), '.3f')}) | {fmt(r.get('us_per_byte'))} "
                     f"| {fmt(r.get('export_s'))} | {note} |")
    return lines


def baseline_lines(res: dict) -> list[str]:
    """Markdown rows of the competitors (size: the ONNX file / state_dict, ratio to the fp32 bundle)."""
    base, fp_bytes = res.get("baselines", {}), res.get("fp32", {}).get("bundle_bytes")
    lines = []
    for name in BASELINES:
        b = base.get(name, {})
        ratio = b["size_bytes"] / fp_bytes if fp_bytes and "size_bytes" in b else None
        lines.append(f"| {name} | – | {fmt(b.get('delta_bpb'), '+.4f')} | – | {fmt(b.get('bpb'), '.4f')} "
                     f"| {fmt(b.get('size_bytes'), ',')} | {fmt(ratio, '.3f')} | – | {fmt(b.get('us_per_byte'))} "
                     f"| – | {fmt(b.get('error', b.get('via', '')))} |")
    return lines


HEADER = ("| method | ckpt ΔBPB | bundle ΔBPB | \\|bundle−ckpt\\| | BPB | bytes | ×fp32 | weights.bin (×fp32) | µs/byte "
          "| export s | targets / notes |\n|---|---|---|---|---|---|---|---|---|---|---|")


def model_section(name: str, res: dict, checks: list[dict]) -> list[str]:
    fails: dict = {}
    for c in checks:
        if c["model"] == name and c["result"] == "FAIL":
            fails.setdefault(c["recipe"], []).append(c["check"])
    head = f"### {name} ({res.get('path')}, {res.get('arch', '?')}, {res.get('params', '?')} params)"
    if "recipes" not in res:
        return [head, "", f"error: {res.get('error')}", ""]
    lines = [head, "", HEADER, *edgelm_lines(res, fails), *baseline_lines(res), ""]
    methods = res["recipes"].get("w8a8", {}).get("methods")
    if methods:
        lines += ["w8a8 methods: " + ", ".join(f"`{s}`: {m}" for s, m in methods.items()), ""]
    return lines


def markdown(result: dict) -> str:
    m, checks = result["machine"], result["checks"]
    n_fail = sum(c["result"] == "FAIL" for c in checks)
    lines = ["# Quantization benchmark (issue 10)", "",
             f"CPU: {m['cpu']} ({m['cores']} cores, shared); torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
             f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; "
             f"wall {result['wall_s']:.0f} s.",
             f"Calibration: {result['calibration']['source']}; held-out: {result['heldout']['file']} "
             f"({result['heldout']['bytes']} bytes, BPB on all of it; latency on {result['latency_bytes']} bytes).",
             "ΔBPB vs the fp32 model (baselines: vs edgelm.evaluate in torch). µs/byte: median ORT step at "
             "batch 1, 1 thread (quant_baselines.onnx_stepper_bpb; torch rows: eager step).", "",
             f"Targets: {len(checks) - n_fail} of {len(checks)} PASS, {n_fail} FAIL.", ""]
    for name, res in result["models"].items():
        lines += model_section(name, res, checks)
    lines += ["## Target checks", "", "| model | recipe | check | value | limit | result |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['recipe']} | {c['check']} | {fmt(c['value'])} | {fmt(c['limit'])} | {c['result']} |"
              for c in checks]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma list (default: {','.join(MODELS)}; charrnn-lstm when present)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma list of edgelm recipes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant_bench.json"),
                    help="the JSON; the markdown table goes next to it (.md)")
    ap.add_argument("--latency-bytes", type=int, default=0,
                    help="time the bundles' step.onnx on the first N held-out bytes (0: all of it)")
    ap.add_argument("--workdir", help="keep checkpoints and bundles here (default: a temporary dir)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> dict:
    names = args.models.split(",") if args.models else default_models()
    heldout = Path(textwrap.__file__)
    result = {"machine": machine(), "recipes": args.recipes.split(",")}
    calib, result["calibration"] = write_calibration(work)
    result["heldout"] = {"file": heldout.name, "bytes": heldout.stat().st_size}
    result["latency_bytes"] = args.latency_bytes or heldout.stat().st_size
    result["models"] = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        (work / name).mkdir(parents=True, exist_ok=True)
        try:
            result["models"][name] = bench_model(name, result["recipes"], work / name, calib, heldout,
                                                 args.latency_bytes)
        except Exception as exc:  # noqa: BLE001 -- one model failing must not end the run
            traceback.print_exc()
            result["models"][name] = {"path": str(model_path(name).relative_to(ROOT)), "error": error_of(exc)}
    return result


def main(argv: list[str] | None = None) -> None:
    args, t0 = parse_args(argv), time.perf_counter()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quant_bench-") as tmp:
        result = run(args, Path(args.workdir or tmp))
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["checks"] = all_checks(result["models"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
