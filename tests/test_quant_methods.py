"""The quantizers and the Q/DQ ops on their own: ranges, errors, GPTQ vs round-to-nearest,
the rotation, int4 packing, and that the exported ONNX computes what the torch op computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgelm.export.graph_passes import lower_blocked_dq, pack_int4
from edgelm.export.quant import methods
from edgelm.export.quant.outliers import analyse, outlier_channels
from edgelm.export.quant.qdq import (act_qdq, dequant, dequant_blocked, hadamard, int4_groups_rtn,
                                     int8_per_channel, rotation_block)
from edgelm.export.quant.sites import QuantMatMul


def test_int8_per_channel_is_symmetric_and_uses_the_full_range_per_output_channel():
    w = torch.randn(64, 10) * torch.linspace(0.01, 10, 10)  # (in, out): very different column scales
    q, s, err = int8_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.equal(q.abs().amax(0), torch.full((10,), 127, dtype=torch.int8))  # every column full
    assert 0 < err < 0.01 and torch.allclose(q * s, w, atol=float(s.max()) / 2 + 1e-6)


def test_int4_groups_round_to_the_grid_of_their_own_group():
    w = torch.randn(100, 8)  # 100 rows: the last group of 32 is partial (4 rows)
    q, s, err = int4_groups_rtn(w, 32)
    assert s.shape == (4, 8) and int(q.min()) >= -8 and int(q.max()) <= 7
    w_hat = dequant_blocked(q, s, 32)
    assert torch.allclose(w_hat[96:], q[96:] * s[3], atol=0) and 0.02 < err < 0.2


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=g) @ torch.randn(16, 128, generator=g)  # rank-16 inputs (n, in)
    w = torch.randn(128, 32, generator=g)
    h = (x.double().t() @ x.double())
    q, s = methods.gptq_int4(w, h, 32)
    q_rtn, s_rtn, _ = int4_groups_rtn(w, 32)
    err = lambda qq, ss: float((x @ w - x @ dequant_blocked(qq, ss, 32)).norm() / (x @ w).norm())  # noqa: E731
    assert err(q, s) < 0.7 * err(q_rtn, s_rtn)


def test_hadamard_is_orthonormal_and_the_block_divides():
    h = hadamard(64)
    assert torch.allclose(h @ h.t(), torch.eye(64), atol=1e-5) and torch.allclose(h, h.t())
    assert rotation_block(192) == 64 and rotation_block(96) == 32 and rotation_block(6) == 2


def test_rotation_spreads_an_outlier_and_keeps_the_product():
    x = torch.randn(512, 128)
    x[:, 5] *= 60
    w = torch.randn(128, 16)
    stats = type("S", (), {"sample_rows": lambda self: x, "absmax": x.abs().amax(0)})()
    rec = methods.rotate(w, stats)
    plain = methods.minmax(w, stats)
    assert methods.output_error(rec, w, x) < 0.5 * methods.output_error(plain, w, x)


def test_outlier_rule_names_exactly_the_channels_above_k_times_the_median():
    a = torch.ones(96)
    a[[3, 40]] = 9.0
    a[7] = 7.9  # below 8x the median: not an outlier
    assert outlier_channels(a).tolist() == [3, 40]
    facts = analyse(a)
    assert facts["channels"] == [3, 40] and abs(facts["bits_lost"] - np.log2(9 / 7.9)) < 1e-6


def test_act_qdq_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 300.0, -300.0])
    assert act_qdq(x, 1.0).tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]


def test_pack_int4_puts_the_first_value_in_the_low_nibble():
    assert pack_int4([1, -1, 7]) == bytes([0xF1, 0x07])
    t = onnx.helper.make_tensor("q", onnx.TensorProto.INT4, (3,), pack_int4([1, -1, 7]), raw=True)
    assert numpy_helper.to_array(t).tolist() == [1, -1, 7]


class _Site(torch.nn.Module):
    def __init__(self, rec):
        super().__init__()
        self.site = QuantMatMul(rec)

    def forward(self, x):
        return self.site(x)


@pytest.mark.parametrize("kind", ["w8a8", "w4", "split"])
def test_an_exported_site_computes_what_the_torch_site_computes(tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    w, x = torch.randn(96, 40), torch.randn(5, 96)
    x[:, 9] *= 30
    stats = type("S", (), {"sample_rows": lambda self: x, "absmax": x.abs().amax(0),
                           "hessian": x.double().t() @ x.double()})()
    rec = {"w8a8": lambda: methods.minmax(w, stats), "w4": lambda: methods.int4(w, stats, 32),
           "split": lambda: methods.split(w, stats, torch.tensor([9]))}[kind]()
    path = tmp_path / "site.onnx"
    torch.onnx.export(_Site(rec), (x,), str(path), opset_version=20, dynamo=False, input_names=["x"],
                      custom_opsets={"edgelm": 1} if kind == "w4" else {})
    lower_blocked_dq(path)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= 1 and (("QuantizeLinear" in ops) == (kind != "w4"))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    want = _Site(rec)(x).numpy()
    assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()  # ORT's int8 kernels: rounding only
    if kind == "w4":
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
        attrs = {a.name: a.i for a in dq.attribute}
        q = next(t for t in model.graph.initializer if t.name == dq.input[0])
        assert attrs == {"axis": 0, "block_size": 32} and q.data_type == onnx.TensorProto.INT4
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21


def test_dequant_is_per_output_column():
    q = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    assert dequant(q, torch.tensor([0.5, 2.0])).tolist() == [[0.5, -4.0], [1.5, 8.0]]
