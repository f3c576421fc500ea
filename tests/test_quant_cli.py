"""`edgelm quantize` end to end on a committed model, and what every command does with its output:
info, eval (fake quantization = the exported graph), export (int8/int4 graphs, the recipe in the
manifest), eval of the bundle through the runtime. Bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from bundle_tools import cli, one_line_error
from quant_fixtures import HELDOUT, MODELS, calibration_bytes

LSTM = MODELS / "lstm-tiny.pt"


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_bytes(calibration_bytes())
    return path


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, calib):
    """lstm-tiny quantized with w8a8 and w4 (the CLI's own outputs), with their reports."""
    out = tmp_path_factory.mktemp("quant")
    made = {}
    for recipe in ("w8a8", "w4"):
        ckpt, report = out / f"lstm-{recipe}.pt", out / f"{recipe}.json"
        args = ["quantize", LSTM, "--recipe", recipe, "--calib", calib, "-o", ckpt, "--data", HELDOUT,
                "--report", report] + (["--plot", out / "plot.png"] if recipe == "w8a8" else [])
        made[recipe] = (ckpt, report, args)
    return out, made


def _run(capsys, args):
    code, outp, err = cli(capsys, *args)
    assert code == 0, err
    return outp


def _checkpoint(capsys, quantized, recipe):
    """The recipe's quantized checkpoint, made by `edgelm quantize` the first time it is asked for."""
    ckpt, _, args = quantized[1][recipe]
    if not ckpt.exists():
        _run(capsys, args)
    return ckpt


def test_quantize_writes_a_weights_only_checkpoint_a_report_and_a_plot(capsys, quantized):
    out, made = quantized
    ckpt, report_path, args = made["w8a8"]
    text = _run(capsys, args)
    assert "layers.1.w_cat" in text and "w8a8:" in text and f"wrote {ckpt}" in text
    payload = torch.load(ckpt, weights_only=True)
    assert payload["version"] == 2 and payload["quant"]["recipe"] == "w8a8"
    rec = payload["quant"]["records"]["layers.1.w_cat"]
    assert rec["w_q"].dtype == torch.int8 and rec["act_scale"] > 0
    report = json.loads(report_path.read_text())
    for key in ("recipe", "bpb_fp32", "bpb_quant", "delta_bpb", "size_bytes_fp32", "size_bytes_quant", "layers"):
        assert key in report
    assert report["size_bytes_quant"] <= 0.30 * report["size_bytes_fp32"]
    assert abs(report["delta_bpb"]) <= 0.010 and report["heldout"]["bytes"] == 1024
    assert all("outliers" in r and "method" in r for r in report["layers"])
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_of_the_quantized_checkpoint_is_the_reports_figure(capsys, quantized):
    _, made = quantized
    ckpt, report_path, _ = made["w8a8"]
    got = json.loads(_run(capsys, ["eval", ckpt, "--data", HELDOUT, "--json"]))
    report = json.loads(report_path.read_text())
    assert abs(got["bits_per_byte"] - report["bpb_quant"]) < 1e-9
    plain = json.loads(_run(capsys, ["eval", LSTM, "--data", HELDOUT, "--json"]))
    assert got["bits_per_byte"] != plain["bits_per_byte"]  # quantization is really applied
    assert "quantized   w8a8 (int8" in _run(capsys, ["info", ckpt])


@pytest.mark.parametrize("recipe,precision", [("w8a8", "int8"), ("w4", "int4")])
def test_export_writes_quantized_graphs_that_eval_like_the_checkpoint(capsys, quantized, tmp_path, recipe, precision):
    ckpt = _checkpoint(capsys, quantized, recipe)
    bundle = tmp_path / "bundle"
    _run(capsys, ["export", ckpt, "--target", "cpu", "-o", bundle])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["quantization"]["recipe"] == recipe
    step = onnx.load(str(bundle / "step.onnx"), load_external_data=False)
    ops = [n.op_type for n in step.graph.node]
    assert "DequantizeLinear" in ops and ("QuantizeLinear" in ops) == (recipe == "w8a8")
    assert [o.type.tensor_type.elem_type for o in step.graph.output] == [onnx.TensorProto.FLOAT] * len(step.graph.output)
    a = json.loads(_run(capsys, ["eval", bundle, "--data", HELDOUT, "--json"]))
    b = json.loads(_run(capsys, ["eval", ckpt, "--data", HELDOUT, "--json"]))
    assert abs(a["bits_per_byte"] - b["bits_per_byte"]) <= 0.002


def _nothing_written(path):
    return not path.exists()


def test_too_little_calibration_text_is_refused(capsys, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"x" * 1000)
    out = tmp_path / "q.pt"
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", small, "-o", out)
    assert one_line_error(code, err, "only 1,000 bytes") and "32 KiB" in err and _nothing_written(out)
    (tmp_path / "empty.txt").write_bytes(b"")
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", tmp_path / "empty.txt", "-o", out)
    assert one_line_error(code, err, "is empty") and _nothing_written(out)


def test_an_already_quantized_model_and_an_unknown_recipe_are_refused(capsys, quantized, calib, tmp_path):
    ckpt = _checkpoint(capsys, quantized, "w8a8")
    out = tmp_path / "again.pt"
    code, _, err = cli(capsys, "quantize", ckpt, "--recipe", "w8", "--calib", calib, "-o", out)
    assert one_line_error(code, err, "already quantized (w8a8)") and _nothing_written(out)
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w3", "--calib", calib, "-o", out)
    assert one_line_error(code, err, "unknown recipe 'w3'") and _nothing_written(out)


def test_calibrating_on_the_eval_text_warns(capsys, tmp_path, calib):
    out, data = tmp_path / "q.pt", tmp_path / "data.txt"
    data.write_bytes(calib.read_bytes()[5000:7000])  # a piece of the calibration text
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", calib, "--data", data, "-o", out)
    assert code == 0 and "warning: --data" in err and "also calibration text" in err
    data.write_bytes(HELDOUT.read_bytes()[:2000])
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", calib, "--data", data, "-o", out)
    assert code == 0 and "warning" not in err


def test_calibration_files_add_up(capsys, tmp_path):
    """--calib A B: two files below the minimum each, enough together (and named in the report)."""
    text = calibration_bytes()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(text[:len(text) // 2])
    b.write_bytes(text[len(text) // 2:])
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", a, "-o", tmp_path / "q.pt")
    assert one_line_error(code, err, "only")
    code, _, err = cli(capsys, "quantize", LSTM, "--recipe", "w8", "--calib", a, b, "-o", tmp_path / "q.pt")
    assert code == 0, err
    assert torch.load(tmp_path / "q.pt", weights_only=True)["quant"]["calibration"]["files"] == ["a.txt", "b.txt"]


@pytest.mark.parametrize("recipe,target,match", [("w8a8", "jetson-nano", "int8"),
                                                 ("w4", "jetson-xavier-nx", "TensorRT 8")])
def test_a_recipe_the_target_cannot_run_is_refused(capsys, quantized, tmp_path, recipe, target, match):
    ckpt = _checkpoint(capsys, quantized, recipe)
    out = tmp_path / "b"
    code, _, err = cli(capsys, "export", ckpt, "--target", target, "-o", out)
    assert one_line_error(code, err, match) and _nothing_written(out)
    code, _, err = cli(capsys, "export", ckpt, "--target", "cpu", "--precision", "fp16", "-o", out)
    assert one_line_error(code, err, "drop --precision") and _nothing_written(out)


def test_a_damaged_record_is_refused_in_one_line(capsys, quantized, tmp_path):
    ckpt = _checkpoint(capsys, quantized, "w8a8")
    payload = torch.load(ckpt, weights_only=True)
    payload["quant"]["records"]["layers.1.w_cat"]["w_q"] = torch.zeros(3, 3, dtype=torch.int8)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    code, _, err = cli(capsys, "eval", bad, "--data", HELDOUT)
    assert one_line_error(code, err, "[layers.1.w_cat]: quantized w_q is torch.int8 (3, 3)")


def test_the_manifest_must_record_the_recipe_of_a_quantized_bundle(capsys, quantized, tmp_path):
    from bundle_tools import copy_bundle, edit_manifest

    from edgelm.errors import EdgelmError
    from edgelm.runtime.bundle import load_bundle

    ckpt = _checkpoint(capsys, quantized, "w8a8")
    bundle = tmp_path / "bundle"
    _run(capsys, ["export", ckpt, "--target", "cpu", "-o", bundle])
    assert load_bundle(bundle).manifest.quantization["recipe"] == "w8a8"
    dropped = copy_bundle(bundle, tmp_path / "dropped")
    edit_manifest(dropped, lambda m: m.pop("quantization"))
    with pytest.raises(EdgelmError, match="field quantization is missing; an int8 bundle records its recipe"):
        load_bundle(dropped)
    relabelled = copy_bundle(bundle, tmp_path / "relabelled")
    edit_manifest(relabelled, lambda m: m.__setitem__("precision", "fp32"))
    with pytest.raises(EdgelmError, match="field quantization is only for int8/int4 bundles"):
        load_bundle(relabelled)
