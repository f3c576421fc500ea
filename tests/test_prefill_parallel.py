"""The chunk-parallel prefill: the same numbers as stepping byte by byte, and really parallel.

minGRU, RG-LRU and Mamba run every matmul, norm and MLP of a prefill chunk as one op over the
chunk, and only the linear recurrence scans (export/fused/common.py: chunk_scan). These tests
hold the fused forms to the byte-by-byte unroll (the step's own `core`), at every scan block the
form can be given, and hold the exported graphs to one matmul per weight per chunk.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from runtime_fixtures import MODELS, bundle_dir  # noqa: F401
from edgelm.checkpoint import load_model
from edgelm.export.fused import FusedPrefill, fuse
from edgelm.export.fused.common import FusedLM, causal_conv_chunk, chunk_scan
from edgelm.models.common import causal_conv_step

PARALLEL = ["mingru", "rglru", "mamba"]
TEXT = b"def chunk_scan(a, b, h, block):\n    return hs, h  # (B, C, *S)\n"


def unrolled(form, ids, state):
    return FusedLM.prefill_core(form, ids, state)  # the base class: `core` once per byte


# every scan block each form can be given, and Mamba's per-position form (the one the native C
# target compiles for its prefill: NATIVE_PREFILL "per_position")
CHUNK_FORMS = [(arch, block, False) for arch in PARALLEL for block in (1, 3, 16)] + [("mamba", 1, True)]


@pytest.mark.parametrize("arch, block, per_position", CHUNK_FORMS)
@torch.no_grad()
def test_the_chunk_path_computes_what_stepping_computes(arch, block, per_position):
    model = load_model(MODELS / f"{arch}-tiny.pt")
    form = fuse(model)
    ids = torch.tensor(list(TEXT[:32]) + list(TEXT[16:48])).reshape(2, 32)  # two streams
    _, state = unrolled(form, ids[:, :16], list(model.init_state(2)))  # from a state mid-text
    want_x, want = unrolled(form, ids[:, 16:], state)
    for layer in form.layers:
        layer.SCAN_BLOCK, layer.PER_POSITION = block, per_position
    got_x, got = form.prefill_core(ids[:, 16:], state)
    assert (got_x - want_x).abs().max() < 2e-5
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g - w).abs().max() < 2e-5


def test_chunk_scan_matches_the_recurrence_at_every_block():
    g = torch.Generator().manual_seed(0)
    log_a = -torch.rand(2, 9, 3, 5, generator=g) * 30  # decays from ~1 to e^-30: no overflow, no NaN
    b, h0 = torch.randn(2, 9, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    h, want = h0, []
    for t in range(9):
        h = torch.exp(log_a[:, t]) * h + b[:, t]
        want.append(h)
    want = torch.stack(want, 1)
    for block in (1, 2, 4, 9):  # 9 = 4 + 4 + 1 at block 4: a short last block
        hs, last = chunk_scan(torch.exp(log_a), b, h0, block, log_a)
        assert torch.allclose(hs, want, atol=1e-5) and torch.equal(last, hs[:, -1]), block


def test_the_chunk_conv_is_the_step_conv_repeated():
    g = torch.Generator().manual_seed(1)
    x, conv = torch.randn(2, 7, 6, generator=g), torch.randn(2, 3, 6, generator=g)  # K = 4
    w, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)  # (Ch, K)
    y, state = causal_conv_chunk(x, conv, w, bias)
    s = conv
    for t in range(7):
        yt, s = causal_conv_step(x[:, t], s, w, bias)
        assert torch.allclose(y[:, t], yt, atol=1e-6)
    assert torch.equal(state, s)


def _matmuls(path) -> int:
    return sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("arch", PARALLEL)
def test_the_exported_prefill_runs_each_matmul_once_per_chunk(bundle_dir, arch):
    """One chunk of 32 bytes costs the step's matmuls once, not 32 times (an unrolled prefill
    would hold 32x the step's). Mamba's <h, C> is one batched MatMul over the chunk either way."""
    bundle = bundle_dir(arch)
    step, prefill = _matmuls(bundle / "step.onnx"), _matmuls(bundle / "prefill.onnx")
    assert prefill == step, (prefill, step)


@torch.no_grad()
def test_a_prefill_module_traces_with_a_quantized_form(tmp_path):
    """The chunk path goes through the same quantization sites (mm over (B*C, in) rows)."""
    from edgelm.export.quant.sites import QuantMatMul

    model = load_model(MODELS / "mingru-tiny.pt")
    form = fuse(model)
    w = form.layers[0].w_in  # (D, 3Dh)
    scale = w.abs().amax(0) / 127
    rec = {"group": 0, "act_scale": None, "rotate": 0, "w_q": torch.round(w / scale).to(torch.int8),
           "w_scale": scale}
    form.layers[0].qsites["w_in"] = QuantMatMul(rec)
    ids = torch.tensor(list(TEXT[:16]))[None]
    state = list(model.init_state(1))
    want_x, _ = unrolled(form, ids, state)
    got_x, _ = FusedPrefill(form, 16).step.prefill_core(ids, state)
    assert (got_x - want_x).abs().max() < 2e-5


@pytest.mark.parametrize("arch", PARALLEL)
def test_a_quantized_chunk_path_exports_and_validates(tmp_path, arch):
    """w8a8 quantizes the embedding table per column: gathered for a whole chunk (B, C) it must keep
    its scale on the last axis. The export's validation runs the prefill graph against the
    fake-quantized stepping and refuses the bundle on any miss."""
    from quant_fixtures import calibration_bytes

    from edgelm.checkpoint import save_model
    from edgelm.export import export_bundle
    from edgelm.export.quant.run import prepare, quantize_calibrated

    calib = tmp_path / "calib.txt"
    calib.write_bytes(calibration_bytes())
    model, cal, texts, _ = prepare(MODELS / f"{arch}-tiny.pt", [calib], None)
    entry, _, _ = quantize_calibrated(model, cal, texts, "w8a8", 64)
    save_model(model, tmp_path / "q.pt", extra={"quant": entry})
    m = export_bundle(tmp_path / "q.pt", "cpu", None, tmp_path / "bundle")
    assert m.precision == "int8" and m.validation["prefill_max_abs_diff"] <= m.validation["atol"]
    native = m.validation["native"]  # the C of the same graphs, checked against them at export
    assert native["status"] == "ok" and native["prefill_max_abs_diff"] <= native["atol"]
