"""The fused step forms (export/fused/) against the plain model they were folded from, in PyTorch,
on the committed trained models: the reference-beside-the-fused-kernel check, before any ONNX.

Each form must compute the model's `step` for every byte (logits and every state tensor, batch 2,
64 bytes of real text from the zero state), and FusedPrefill must compute the model's `forward`
over a chunk from the state those bytes reached. Both in fp32 and in fp16 (weights and compute
in half, graph IO float32).
"""

from __future__ import annotations

import pytest
import torch

from runtime_fixtures import ARCHS, MODELS
from edgelm.checkpoint import load_model
from edgelm.export.fused import FusedPrefill, fuse
from edgelm.export.validate import one_thread, text_streams

# Max |difference| (logits, state) over steps and prefill, measured with this file's protocol
# on the committed models (2026-11-27, torch 2.13 CPU, x86), times 4, rounded up. torch's CPU
# half kernels round more than ONNX Runtime's fp16 (compare tests/test_parity.py); the LSTM's cell
# state reaches ~250, so its fp16 state differences are large in absolute terms.
TOL = {
    ("lstm", torch.float32): (7e-5, 2.5e-4), ("lstm", torch.float16): (7e-2, 2.2),
    ("gru", torch.float32): (5e-5, 1.3e-5), ("gru", torch.float16): (3.3e-2, 2.4e-2),
    ("mingru", torch.float32): (2e-5, 2.7e-5), ("mingru", torch.float16): (2e-2, 2.6e-2),
    ("mamba", torch.float32): (2.7e-5, 1.6e-5), ("mamba", torch.float16): (4.1e-2, 1.7e-2),
    ("rglru", torch.float32): (4.2e-5, 2e-5), ("rglru", torch.float16): (1.7e-1, 2.2e-1),
}
STEPS, CHUNK = 64, 32
DTYPES = [torch.float32, torch.float16]


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread():  # eager steps at batch 2 only spin with more
        yield


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = load_model(MODELS / f"{arch}-tiny.pt").eval()
        return cache[arch]
    return get


def _close(got, want, atol, what):
    assert got.dtype == torch.float32, f"{what}: graph IO must stay float32, got {got.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item()
    assert diff <= atol, f"{what}: max |diff| {diff:.3e} > {atol:.1e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_fused_step_and_prefill_equal_the_model(models, arch, dtype):
    model = models(arch)
    lt, st = TOL[arch, dtype]
    fused = fuse(model, dtype)
    data = torch.from_numpy(text_streams(STEPS + CHUNK))  # (2, STEPS + CHUNK) int64
    s_model = model.init_state(2)
    s_fused = list(s_model)
    for t in range(STEPS):
        l_model, s_model = model.step(data[:, t], s_model)
        l_fused, *s_fused = fused(data[:, t], *s_fused)
        _close(l_fused, l_model, lt, f"step {t} logits")
        assert len(s_fused) == len(s_model)
        for i, (a, b) in enumerate(zip(s_fused, s_model)):
            _close(a, b, st, f"step {t} state {i}")
    prefill = FusedPrefill(fused, CHUNK)
    l_pre, *s_pre = prefill(data[:, STEPS:], *s_model)  # from the state the stream reached
    l_ref, s_ref = model(data[:, STEPS:], tuple(s_model))
    _close(l_pre, l_ref[:, -1], lt, "prefill last logits")
    for i, (a, b) in enumerate(zip(s_pre, s_ref)):
        _close(a, b, st, f"prefill state {i}")


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_weights_are_half_and_the_model_is_untouched(models, arch):
    model = models(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    half = fuse(model, torch.float16)
    dtypes = {name: b.dtype for name, b in half.named_buffers()}
    assert dtypes and set(dtypes.values()) <= {torch.float16, torch.float32}
    # the residual archs keep only norm weights in float32; the rest (gate tables, matmuls) is half
    f32 = sorted(n for n, d in dtypes.items() if d == torch.float32)
    norms = sorted(n for n in dtypes if n.rsplit(".", 1)[-1].startswith("nw"))
    assert f32 == norms, f32  # norm weights stay float32, like the residual stream they scale
    assert bool(norms) == (arch in ("mingru", "mamba", "rglru"))
    assert sum(b.numel() for b in half.buffers() if b.dtype == torch.float16) > 0.9 * sum(
        b.numel() for b in half.buffers())
    full = fuse(model)
    assert {b.dtype for b in full.buffers()} == {torch.float32}
    assert all(b.is_contiguous() for b in half.buffers())
    assert not any(p.requires_grad for p in half.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"fuse changed the model's {k}"
    assert model.training is False


def test_a_form_is_found_by_name_or_refused_in_one_line(models, monkeypatch):
    import types

    from edgelm.errors import EdgelmError
    from edgelm.export import fused as fused_pkg
    from edgelm.export.fused import FusedLM, fused_form
    from edgelm.export.fused.lstm import FusedLSTM

    assert fused_form("lstm") is FusedLSTM and all(issubclass(fused_form(a), FusedLM) for a in ARCHS)
    for arch in ("xlstm", "common", "_private", "__init__", "not-a-name", "lstm.x"):
        with pytest.raises(EdgelmError) as exc:
            fused_form(arch)
        assert str(exc.value) == f"architecture '{arch}' has no fused export form; add export/fused/{arch}.py"
    model = models("gru")
    monkeypatch.setattr(model, "arch", "xlstm")  # a registered model class whose export form was never written
    with pytest.raises(EdgelmError, match=r"add export/fused/xlstm\.py$"):
        fuse(model)
    real = fused_pkg.importlib.import_module

    def form_module(name):
        if name.endswith(".noform"):
            return types.ModuleType(name)  # a form file that forgot FUSED
        if name.endswith(".broken"):
            raise ModuleNotFoundError("No module named 'tensorrt_llm'", name="tensorrt_llm")  # its own import
        return real(name)
    monkeypatch.setattr(fused_pkg.importlib, "import_module", form_module)
    with pytest.raises(EdgelmError) as exc:
        fused_form("noform")
    assert str(exc.value) == "export/fused/noform.py names no fused form; set FUSED = its FusedLM class"
    with pytest.raises(ModuleNotFoundError, match="tensorrt_llm"):  # not mistaken for a missing form
        fused_form("broken")
