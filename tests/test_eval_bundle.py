"""`edgelm eval BUNDLE`: bits per byte of the shipped step graph through the torch-free runtime.

Checked against `edgelm eval MODEL.pt` (edgelm/evaluate.py, the definition) on the committed
trained models, fp32 bundles; a changed byte anywhere (first, middle, last) changes the result;
chunk and block boundaries change nothing; bad input is one line; torch is never imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_tools import cli, copy_bundle, one_line_error
from runtime_fixtures import MODELS, bundle_dir  # noqa: F401
from edgelm.errors import EdgelmError
from edgelm.runtime import evaluate as rt_eval
from edgelm.runtime.evaluate import bundle_bits_per_byte

HELDOUT = Path(__file__).parent / "data" / "heldout_1k.txt"


def _eval_json(capsys, target, data=HELDOUT) -> dict:
    code, out, err = cli(capsys, "eval", target, "--data", data, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("arch", ["lstm", "mamba"])
def test_bundle_eval_equals_checkpoint_eval(bundle_dir, capsys, arch):
    bundle = bundle_dir(arch)
    assert json.loads((bundle / "manifest.json").read_text())["precision"] == "fp32"
    shipped = _eval_json(capsys, bundle)
    reference = _eval_json(capsys, MODELS / f"{arch}-tiny.pt")
    assert set(shipped) == set(reference) == {"bits_per_byte", "bytes"}
    assert shipped["bytes"] == reference["bytes"] == HELDOUT.stat().st_size
    assert abs(shipped["bits_per_byte"] - reference["bits_per_byte"]) < 1e-4, (shipped, reference)
    assert 2.0 < shipped["bits_per_byte"] < 6.0  # a trained model, well below uniform (8.0)


@pytest.mark.parametrize("pos", [0, 517, 1023])
def test_one_changed_byte_changes_the_result(bundle_dir, tmp_path, pos):
    bundle, text = bundle_dir("lstm"), bytearray(HELDOUT.read_bytes())
    text[pos] = (text[pos] + 1) % 256
    changed = tmp_path / "changed.txt"
    changed.write_bytes(bytes(text))
    before = bundle_bits_per_byte(bundle, HELDOUT)["bits_per_byte"]
    assert abs(bundle_bits_per_byte(bundle, changed)["bits_per_byte"] - before) > 1e-6


def test_chunk_and_block_boundaries_change_nothing(bundle_dir, monkeypatch):
    bundle = bundle_dir("lstm")
    whole = bundle_bits_per_byte(bundle, HELDOUT)
    monkeypatch.setattr(rt_eval, "READ_CHUNK", 7)
    monkeypatch.setattr(rt_eval, "BLOCK", 5)
    pieces = bundle_bits_per_byte(bundle, HELDOUT)
    assert pieces["bytes"] == whole["bytes"]
    assert abs(pieces["bits_per_byte"] - whole["bits_per_byte"]) < 1e-12


def test_one_byte_file_scores_one_prediction(bundle_dir, tmp_path):
    one = tmp_path / "one.txt"
    one.write_bytes(b"d")
    res = bundle_bits_per_byte(bundle_dir("lstm"), one)
    assert res["bytes"] == 1 and 0.0 < res["bits_per_byte"] < 30.0


def test_bad_data_and_bad_bundles_are_one_line(bundle_dir, capsys, tmp_path):
    bundle = bundle_dir("lstm")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "plain_dir").mkdir()
    cases = [(bundle, tmp_path / "empty.txt", "is empty; pass a file with some text"),
             (bundle, tmp_path / "missing.txt", "does not exist (or is not a file)"),
             (bundle, tmp_path / "plain_dir", "does not exist (or is not a file)"),
             (tmp_path / "plain_dir", HELDOUT, "neither a model directory nor an edgelm bundle")]
    for target, data, message in cases:
        code, out, err = cli(capsys, "eval", target, "--data", data, "--json")
        assert one_line_error(code, err, message) and out == "", (target, data, err)
    tampered = copy_bundle(bundle, tmp_path / "tampered")
    weights = bytearray((tampered / "weights.bin").read_bytes())
    weights[100] ^= 1
    (tampered / "weights.bin").write_bytes(bytes(weights))
    code, out, err = cli(capsys, "eval", tampered, "--data", HELDOUT)
    assert one_line_error(code, err, "is corrupted or truncated") and out == "", err


def test_trusted_keys_refuse_an_unsigned_bundle(bundle_dir, tmp_path):
    pytest.importorskip("cryptography")
    from edgelm.runtime.signing import keygen

    _, pub = keygen(tmp_path / "key", False)
    with pytest.raises(EdgelmError, match="is not signed"):
        bundle_bits_per_byte(bundle_dir("lstm"), HELDOUT, trusted_keys=[pub])


def test_bundle_eval_never_imports_torch(bundle_dir):
    code = ("import json, sys\nfrom edgelm.cli import main\n"
            f"sys.argv = ['edgelm', 'eval', {str(bundle_dir('mamba'))!r}, '--data', {str(HELDOUT)!r}, '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stderr == "", res.stderr
    *_, facts = res.stdout.strip().splitlines()
    assert json.loads(facts) == {"rc": 0, "torch": False}
    assert json.loads("".join(res.stdout.strip().splitlines()[:-1]))["bytes"] == 1024
