"""Checkpoint save/load: roundtrip, fp16 storage, and one-line errors for every bad file."""

import os
import pickle

import pytest
import torch

from edgelm.checkpoint import VERSION, load_checkpoint, load_model, save_model
from edgelm.errors import EdgelmError
from edgelm.models import ARCHS, build_model


def _model(arch="gru", seed=0):
    torch.manual_seed(seed)
    return build_model(arch, {"d_embed": 8, "d_hidden": 16, "n_layers": 2} if arch in ("lstm", "gru")
                       else None, preset=None if arch in ("lstm", "gru") else "tiny")


def _payload(tmp_path, arch="gru"):
    path = tmp_path / "m.pt"
    save_model(_model(arch), path)
    return path, torch.load(path, weights_only=True)


def _one_line_error(path, *needles):
    with pytest.raises(EdgelmError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("arch", list(ARCHS))
def test_roundtrip_every_arch(tmp_path, arch):
    model = _model(arch)
    save_model(model, tmp_path / "m.pt", extra={"train": {"steps": 7}})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded.arch == arch and not loaded.training and meta["train"] == {"steps": 7}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_fp16_storage_loads_as_fp32(tmp_path):
    model = _model("lstm")
    save_model(model, tmp_path / "f32.pt")
    save_model(model, tmp_path / "f16.pt", dtype=torch.float16)
    raw = torch.load(tmp_path / "f16.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values())
    assert (tmp_path / "f16.pt").stat().st_size < 0.7 * (tmp_path / "f32.pt").stat().st_size
    loaded = load_model(tmp_path / "f16.pt")
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, v.half().float())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"format": "edgelm", "state_dict": {}, "x": _Evil(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    _one_line_error(path, "contains pickled code", "weights only", "torch.save(model.state_dict()")
    assert not marker.exists()


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.pt", "does not exist")


def test_truncated_file(tmp_path):
    path, _ = _payload(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "truncated or corrupted")


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"", b"\x00\x01garbage" * 10])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    msg = _one_line_error(path)
    assert str(path) in msg


def test_unknown_arch(tmp_path):
    path, payload = _payload(tmp_path)
    payload["arch"] = "transformer"
    torch.save(payload, path)
    _one_line_error(path, "unknown architecture 'transformer'", "lstm")


def test_config_does_not_match_tensors(tmp_path):
    path, payload = _payload(tmp_path)
    payload["config"]["d_hidden"] = 32
    torch.save(payload, path)
    msg = _one_line_error(path, "does not match the tensors", "rnn.weight_hh_l0 (48, 16) != (96, 32)")
    assert "config" in msg


def test_missing_and_unexpected_keys(tmp_path):
    path, payload = _payload(tmp_path)
    del payload["state_dict"]["head.bias"]
    payload["state_dict"]["extra.weight"] = torch.zeros(2)
    torch.save(payload, path)
    _one_line_error(path, "missing head.bias", "unexpected extra.weight")


def test_unknown_config_field(tmp_path):
    path, payload = _payload(tmp_path)
    payload["config"]["d_model"] = 3
    torch.save(payload, path)
    _one_line_error(path, "unknown fields", "d_model")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights(tmp_path, bad):
    path, payload = _payload(tmp_path)
    payload["state_dict"]["rnn.weight_ih_l1"][3, 2] = bad
    torch.save(payload, path)
    _one_line_error(path, "NaN/Inf", "rnn.weight_ih_l1", "retrain")


def test_newer_version(tmp_path):
    path, payload = _payload(tmp_path)
    payload["version"] = VERSION + 1
    torch.save(payload, path)
    _one_line_error(path, "newer edgelm", f"version {VERSION + 1}", "upgrade")


def test_failed_save_leaves_nothing(tmp_path):
    path = tmp_path / "m.pt"
    save_model(_model(), path)
    before = path.read_bytes()

    with pytest.raises(Exception):
        save_model(_model(), path, extra={"bad": lambda: 0})  # lambdas cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
