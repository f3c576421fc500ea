"""The issue's outlier test: a trained Mamba with K-times outlier channels injected at one norm's
output (the fp32 function unchanged) breaks naive W8A8, not the outlier-aware recipe, and the
analysis names exactly the injected channels."""

from __future__ import annotations

import pytest
import torch

from edgelm.checkpoint import load_model
from edgelm.evaluate import bits_per_byte
from edgelm.export.quant.calibrate import Texts, calibrate
from edgelm.export.quant.run import quantize_calibrated
from edgelm.export.fused import fuse

from quant_fixtures import HELDOUT, INJECTED, MODELS, calibration_bytes, inject_outliers


@pytest.fixture(scope="module")
def injected():
    torch.manual_seed(0)
    plain = load_model(MODELS / "mamba-tiny.pt")
    model = inject_outliers(load_model(MODELS / "mamba-tiny.pt"))
    texts = Texts(calibration_bytes(), HELDOUT.read_bytes(), "tests/data/heldout_1k.txt")
    cal = calibrate(model, fuse(model), texts.calib)
    return plain, model, cal, texts


def test_the_injection_leaves_the_fp32_function_unchanged(injected):
    plain, model, _, texts = injected
    assert abs(bits_per_byte(plain, texts.heldout) - bits_per_byte(model, texts.heldout)) < 1e-4


def test_analysis_names_exactly_the_injected_channels(injected):
    _, model, cal, texts = injected
    _, report, _ = quantize_calibrated(model, cal, texts, "w8", 64)
    rows = {r["site"]: r for r in report["layers"]}
    for i in range(4):
        assert rows[f"layers.{i}.w_in"]["outliers"]["channels"] == list(INJECTED)
        assert rows[f"layers.{i}.w_in"]["outliers"]["bits_lost"] > 3  # 40x: the rest lose ~5 of 8 bits
    assert not rows["layers.1.w_x"]["outliers"]["channels"]  # the next site's input is untouched


@pytest.mark.parametrize("recipe,lo,hi", [("w8a8-naive", 0.05, None), ("w8a8", None, 0.015),
                                          ("w8", None, 0.003), ("w4", None, 0.04)])
def test_recipes_on_injected_outliers(injected, recipe, lo, hi):
    _, model, cal, texts = injected
    _, report, _ = quantize_calibrated(model, cal, texts, recipe, 64)
    delta = report["delta_bpb"]
    assert (lo is None or delta > lo) and (hi is None or delta <= hi), (recipe, delta)
    if recipe == "w8a8":
        chosen = {r["site"]: r["method"] for r in report["layers"]}
        assert all(chosen[f"layers.{i}.w_in"].split()[0] in ("smooth", "split") for i in range(4)), chosen


def test_quantizing_leaves_the_model_untouched_and_its_checkpoint_evals_as_reported(injected, tmp_path):
    """Smoothing folds into norm weights: a form that shared storage with the model would change
    the model (and the checkpoint saved from it), and the saved file would eval differently."""
    from edgelm.checkpoint import save_model
    from edgelm.evaluate import evaluate_file

    _, model, cal, texts = injected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry, report, _ = quantize_calibrated(model, cal, texts, "w8a8", 64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(r["method"].startswith("smooth") for r in report["layers"])
    save_model(model, tmp_path / "q.pt", extra={"quant": entry})
    got = evaluate_file(tmp_path / "q.pt", HELDOUT)["bits_per_byte"]
    assert abs(got - report["bpb_quant"]) < 1e-9
