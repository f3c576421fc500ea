"""Every architecture honours the contract: step-by-step equals forward, state shapes are fixed."""

import pytest
import torch

from edgelm.errors import EdgelmError
from edgelm.models import ARCHS, build_model, make_config


def _random_state(model, batch, gen):
    # Start from a non-zero state: parity must hold mid-stream, not only from zeros.
    return tuple(0.5 * torch.randn(s.shape, generator=gen) for s in model.init_state(batch))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_step_loop_equals_forward(arch):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(arch, preset="tiny").eval()
    x = torch.randint(0, 256, (3, 41), generator=gen)  # (B, T): T not a multiple of the scan chunk
    state0 = _random_state(model, 3, gen)
    with torch.no_grad():
        logits_seq, state_seq = model(x, state0)  # (B, T, 256)
        state = state0
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)  # (B, 256)
            torch.testing.assert_close(logits, logits_seq[:, t], atol=1e-5, rtol=0)
    for a, b in zip(state, state_seq):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_shapes_never_change(arch):
    model = build_model(arch, preset="tiny").eval()
    state = model.init_state(2)
    names = model.state_names()
    assert len(names) == len(state) == len(set(names))
    shapes = [s.shape for s in state]
    for s, (_, shape) in zip(state, model.state_spec()):
        assert tuple(s.shape) == (2, *shape)
    with torch.no_grad():
        for t in range(5):
            _, state = model.step(torch.full((2,), 65 + t), state)
            assert [s.shape for s in state] == shapes
        _, state = model(torch.randint(0, 256, (2, 33)), state)
    assert [s.shape for s in state] == shapes


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_chunks_compose(arch):
    """Feeding a sequence in two pieces leaves the state feeding it whole leaves."""
    torch.manual_seed(1)
    model = build_model(arch, preset="tiny").eval()
    x = torch.randint(0, 256, (2, 50))
    with torch.no_grad():
        _, whole = model(x)
        _, part = model(x[:, :17])
        _, part = model(x[:, 17:], part)
    for a, b in zip(whole, part):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_presets_have_the_advertised_sizes(arch):
    tiny = build_model(arch, preset="tiny").num_params()
    small = build_model(arch, preset="small").num_params()
    assert 0.2e6 <= tiny <= 0.4e6, tiny
    assert 2e6 <= small <= 5e6, small


def test_unknown_arch_and_preset_and_field():
    with pytest.raises(EdgelmError, match="choose one of"):
        build_model("transformer")
    with pytest.raises(EdgelmError, match="unknown preset"):
        build_model("lstm", preset="huge")
    with pytest.raises(EdgelmError, match="unknown fields"):
        make_config("gru", {"d_hiden": 3})
