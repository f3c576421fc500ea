"""Users' own char-RNN state_dicts (Embedding + nn.LSTM/nn.GRU + Linear) load into edgelm."""

import pytest
import torch
import torch.nn as nn

from edgelm.checkpoint import load_checkpoint, load_model
from edgelm.errors import EdgelmError


class UserCharRNN(nn.Module):
    """A typical hand-written char-RNN with its own attribute names."""

    def __init__(self, cell: str, layers: int, batch_first: bool, head_bias: bool = True,
                 rnn_bias: bool = True, embed: int = 24, hidden: int = 40):
        super().__init__()
        self.batch_first = batch_first
        self.encoder = nn.Embedding(256, embed)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.core = rnn_cls(embed, hidden, layers, batch_first=batch_first, bias=rnn_bias)
        self.decoder = nn.Linear(hidden, 256, bias=head_bias)

    def forward(self, x):  # x (B, T)
        e = self.encoder(x if self.batch_first else x.t())
        out, _ = self.core(e)
        out = out if self.batch_first else out.transpose(0, 1)
        return self.decoder(out)  # (B, T, 256)


def _randomize(module: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers,batch_first", [(1, True), (3, False), (2, False)])
@pytest.mark.parametrize("wrap", [False, True])
def test_user_charrnn_logits_match(tmp_path, cell, layers, batch_first, wrap):
    user = UserCharRNN(cell, layers, batch_first)
    _randomize(user)
    sd = user.state_dict()
    path = tmp_path / "user.pt"
    torch.save({"model": sd, "epoch": 3} if wrap else sd, path)
    model, meta = load_checkpoint(path)
    assert model.arch == cell and meta["source"] != "edgelm"
    assert model.config.n_layers == layers and model.config.d_hidden == 40
    x = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        want = user.eval()(x)
        got, _ = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_missing_biases_become_zeros(tmp_path):
    user = UserCharRNN("lstm", 2, True, head_bias=False, rnn_bias=False)
    _randomize(user)
    torch.save({"state_dict": user.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "nb.pt")
    model = load_model(tmp_path / "nb.pt")
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], user.eval()(x), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(model.head.bias) == 0


def test_step_matches_user_module(tmp_path):
    user = UserCharRNN("gru", 2, True)
    _randomize(user)
    torch.save(user.state_dict(), tmp_path / "g.pt")
    model = load_model(tmp_path / "g.pt")
    x = torch.randint(0, 256, (1, 5))
    state = model.init_state(1)
    with torch.no_grad():
        for t in range(5):
            logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits, user.eval()(x)[:, -1], atol=1e-5, rtol=1e-5)


def test_unrecognised_dict_lists_what_was_found(tmp_path):
    sd = {"conv.weight": torch.zeros(8, 3, 3), "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    torch.save(sd, tmp_path / "cnn.pt")
    with pytest.raises(EdgelmError) as err:
        load_model(tmp_path / "cnn.pt")
    msg = str(err.value)
    assert "\n" not in msg
    assert "conv.weight (8, 3, 3)" in msg and "fc.bias (10,)" in msg
    assert "save_model" in msg and "nn.LSTM" in msg


def test_extra_tensors_are_refused(tmp_path):
    user = UserCharRNN("lstm", 1, True)
    sd = dict(user.state_dict())
    sd["norm.weight"] = torch.ones(40)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(EdgelmError, match="norm.weight"):
        load_model(tmp_path / "x.pt")


def test_long_listing_is_truncated(tmp_path):
    torch.save({f"w{i}": torch.zeros(i + 1) for i in range(40)}, tmp_path / "many.pt")
    with pytest.raises(EdgelmError) as err:
        load_model(tmp_path / "many.pt")
    assert "more" in str(err.value) and "w39" not in str(err.value)
