"""Training, evaluation and the train/eval/info commands, including their one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edgelm.evaluate as ev
from bundle_tools import cli
from edgelm.checkpoint import load_checkpoint, load_model, save_model
from edgelm.models import ARCHS, build_model
from edgelm.train import TrainConfig, lr_at, train, train_from_files

ROOT = Path(__file__).resolve().parent.parent
TEXT = (b"The quick brown fox jumps over the lazy dog. " * 40
        + b"Pack my box with five dozen liquor jugs.\n" * 20)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; on a busy 2-core box extra threads cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(arch="lstm", seed=0):
    torch.manual_seed(seed)
    return build_model(arch, {"d_embed": 8, "d_hidden": 24, "n_layers": 1})


FAST = dict(steps=5, batch_size=4, seq_len=16, progress=False)


def test_training_is_deterministic_for_a_seed():
    runs = []
    for seed in (0, 0, 1):
        model = small(seed=seed)
        train(model, TEXT, TrainConfig(seed=seed, **FAST))
        runs.append(model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_training_reduces_loss():
    model = small()
    before = ev.bits_per_byte(model, TEXT[:500])
    train(model, TEXT, TrainConfig(steps=60, batch_size=8, seq_len=32, lr=1e-2, progress=False))
    assert ev.bits_per_byte(model, TEXT[:500]) < before - 1.0


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(cfg.min_lr_frac, abs=0.01)


def test_uniform_model_scores_eight_bits():
    model = small()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    assert ev.bits_per_byte(model, b"any text at all") == pytest.approx(8.0, abs=1e-5)


def test_streamed_eval_equals_one_pass(tmp_path, monkeypatch):
    model = small()
    train(model, TEXT, TrainConfig(seed=0, **FAST))
    save_model(model, tmp_path / "m.pt")
    data = TEXT[:777]
    (tmp_path / "d.txt").write_bytes(data)
    x = torch.tensor([ev.PRIME_BYTE, *data[:-1]])[None]  # (1, T)
    with torch.no_grad():
        logits, _ = model(x)  # (1, T, 256)
    want = F.cross_entropy(logits[0], torch.tensor(list(data))).item() / math.log(2)
    monkeypatch.setattr(ev, "READ_CHUNK", 100)
    monkeypatch.setattr(ev, "WINDOW", 37)
    res = ev.evaluate_file(tmp_path / "m.pt", tmp_path / "d.txt")
    assert res["bytes"] == len(data)
    assert res["bits_per_byte"] == pytest.approx(want, rel=1e-5)


def test_train_from_files_records_heldout(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)
    cfg = TrainConfig(seed=3, **FAST)
    summary = train_from_files([tmp_path / "a.txt"], "gru", "tiny", tmp_path / "m.pt", cfg)
    model, meta = load_checkpoint(tmp_path / "m.pt")
    assert model.arch == "gru" and summary["params"] == model.num_params()
    t = meta["train"]
    assert t["steps"] == 5 and t["seed"] == 3 and len(t["corpus_sha256"]) == 64
    assert t["val_bytes"] == int(len(TEXT) * 0.05) and t["val_bpb"] == summary["val_bpb"]
    val = TEXT[len(TEXT) - t["val_bytes"]:]
    assert ev.bits_per_byte(model, val) == pytest.approx(t["val_bpb"], rel=1e-5)


def test_cli_train_writes_loadable_checkpoint(tmp_path, capsys):
    (tmp_path / "c.txt").write_bytes(TEXT)
    out = tmp_path / "sub" / "m.pt"
    code, stdout, err = cli(capsys, "train", tmp_path / "c.txt", "--arch", "mingru", "-o", out,
                            "--steps", 2, "--batch-size", 2, "--seq-len", 16)
    assert code == 0, err
    assert "held-out bpb" in stdout
    assert load_model(out).arch == "mingru"


def _assert_clean_error(code, stdout, err, tmp_path, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "c.txt") == []


@pytest.mark.parametrize("case,needles", [
    ("missing", ["does not exist"]),
    ("empty", ["is empty"]),
    ("short", ["needs at least 17", "--seq-len"]),
    ("arch", ["unknown architecture 'rnnx'"]),
    ("preset", ["unknown preset 'huge'"]),
    ("steps", ["--steps must be positive"]),
])
def test_cli_train_bad_input(tmp_path, capsys, case, needles):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes({"empty": b"", "short": b"0123456789"}.get(case, TEXT))
    args = ["train", corpus, "--arch", "rnnx" if case == "arch" else "lstm", "-o", tmp_path / "m.pt",
            "--steps", 0 if case == "steps" else 2, "--seq-len", 16, "--batch-size", 2]
    if case == "missing":
        args[1] = tmp_path / "nope.txt"
    if case == "preset":
        args += ["--preset", "huge"]
    _assert_clean_error(*cli(capsys, *args), tmp_path, *needles)


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_bytes(TEXT)

    def half_save(obj, f):  # save_model hands torch.save an open file
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        train_from_files([tmp_path / "c.txt"], "lstm", "tiny", tmp_path / "m.pt", TrainConfig(**FAST))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_cli_eval_and_info_json(tmp_path, capsys):
    model = small("gru")
    save_model(model, tmp_path / "m.pt", extra={"train": {"steps": 9, "seed": 1, "val_bpb": 2.5}})
    (tmp_path / "d.txt").write_bytes(TEXT[:300])
    code, out, err = cli(capsys, "eval", tmp_path / "m.pt", "--data", tmp_path / "d.txt", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) == {"bits_per_byte", "bytes"} and res["bytes"] == 300
    assert res["bits_per_byte"] == pytest.approx(ev.bits_per_byte(model, TEXT[:300]), rel=1e-5)
    code, out, err = cli(capsys, "info", tmp_path / "m.pt", "--json")
    info = json.loads(out)
    assert {"arch", "config", "params", "weight_bytes", "state_bytes_per_stream", "state"} <= set(info)
    n = model.num_params()
    assert info["params"] == n and info["weight_bytes"]["fp32"] == 4 * n
    assert n < info["weight_bytes"]["int8"] < info["weight_bytes"]["fp16"]
    assert info["state"] == [{"name": "0.h", "shape": [24]}]
    assert info["state_bytes_per_stream"] == 4 * 24
    code, text, _ = cli(capsys, "info", tmp_path / "m.pt")
    assert code == 0 and "gru" in text and f"{n:,}" in text and "2.500" in text


def test_cli_eval_bad_model_is_one_line(tmp_path, capsys):
    (tmp_path / "m.pt").write_text("not a model")
    (tmp_path / "d.txt").write_bytes(TEXT[:10])
    code, _, err = cli(capsys, "eval", tmp_path / "m.pt", "--data", tmp_path / "d.txt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reference_models_beat_uniform(tmp_path, arch):
    path = ROOT / "models" / f"{arch}-tiny.pt"
    assert path.is_file(), f"{path} missing: run bench/train_reference.py --install"
    import textwrap

    (tmp_path / "held.txt").write_bytes(Path(textwrap.__file__).read_bytes()[:3000])
    model, meta = load_checkpoint(path)
    assert model.arch == arch and meta["dtype"] == "float16"
    bpb = ev.evaluate_file(path, tmp_path / "held.txt")["bits_per_byte"]
    assert bpb < 5.0, f"{arch}: {bpb:.3f} bits/byte on held-out text"


def test_real_exit_code_via_subprocess(tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgelm.cli", "eval", str(tmp_path / "none.pt"),
                          "--data", str(tmp_path / "none.txt")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_weight_bytes_by_hand():
    """The tiny LSTM's weights counted by hand: 256,256 values in 2,565 rows (one fp32 scale per
    row of every matrix, one per bias vector, for int8)."""
    from edgelm.info import weight_bytes

    rows = 256 + 2 * 512 + 2 + 2 * 512 + 2 + 256 + 1  # embed, layer 0, its biases, layer 1, biases, head
    values = 256 * 32 + 512 * (32 + 128) + 2 * 512 + 512 * (128 + 128) + 2 * 512 + 256 * 128 + 256
    assert weight_bytes(build_model("lstm", preset="tiny")) == {
        "fp32": 4 * values, "fp16": 2 * values, "int8": values + 4 * rows}
    assert values == 256_256 and rows == 2_565
