"""Bundles: refused inputs, atomic writes, tamper detection, and the `edgelm export` CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgelm.checkpoint import save_model
from edgelm.errors import EdgelmError
from edgelm.export import bundle as bundle_mod
from edgelm import precision
from edgelm.export import export_bundle
from edgelm.models import build_model
from edgelm.runtime.bundle import load_bundle

EDGELM = str(Path(sys.executable).parent / "edgelm")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "lstm.pt"
    save_model(build_model("lstm", preset="tiny"), path)
    return path


@pytest.fixture(scope="module")
def made(ckpt, tmp_path_factory):
    """One bundle at the default chunk (32), via the CLI; copied by the tamper tests."""
    out = tmp_path_factory.mktemp("made") / "b"
    res = subprocess.run([EDGELM, "export", str(ckpt), "--target", "cpu", "-o", str(out), "--with-reference"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "cpu-x86" in res.stdout and "fp32" in res.stdout
    return out


@pytest.fixture
def copy(made, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(made, dst)
    return dst


def test_manifest_follows_the_format(made):
    m = json.loads((made / "manifest.json").read_text())
    assert m["format"] == "edgelm-bundle" and m["format_version"] == 2
    assert m["graphs"]["prefill"]["chunk"] == 32 and m["opset"] == 17 and m["vocab"] == 256
    assert set(m["files"]) == {"step.onnx", "prefill.onnx", "weights.bin", "build_engine.sh", "model.pt",
                               "model.h", "model.c", "build_native.sh"}
    assert set(m["built"]) == {"model.so"}  # built at export: the target is this machine
    assert set(os.listdir(made)) == set(m["files"]) | set(m["built"]) | {"manifest.json"}
    for name, digest in m["files"].items():
        assert hashlib.sha256((made / name).read_bytes()).hexdigest() == digest
    # bundle_id: sha256 of the canonical manifest (all but bundle_id and built), computed here
    body = {k: v for k, v in m.items() if k not in ("bundle_id", "built")}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert m["bundle_id"] == hashlib.sha256(canon).hexdigest()
    lib = m["built"]["model.so"]  # device-built: outside the id, hashed itself, tied to this bundle
    assert lib["bundle_id"] == m["bundle_id"] and lib["kind"] == "native-library"
    assert hashlib.sha256((made / "model.so").read_bytes()).hexdigest() == lib["sha256"]
    assert m["graphs"]["step"]["data"] == m["graphs"]["prefill"]["data"] == ["weights.bin"]
    assert [s["name"] for s in m["state"]] == ["0.h", "0.c", "1.h", "1.c"]
    assert m["max_streams"] == m["target"]["default_max_streams"]
    from edgelm.checkpoint import load_model
    assert load_model(made / "model.pt").num_params() == m["params"]


def test_unknown_target_lists_valid_ones(ckpt, tmp_path):
    with pytest.raises(EdgelmError, match="jetson-orin-nano-8gb.*h100|h100.*jetson-orin-nano-8gb"):
        export_bundle(ckpt, "jetsonn", None, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_precision_the_target_lacks(ckpt, tmp_path, monkeypatch):
    with pytest.raises(EdgelmError, match="fp32 or fp16"):
        export_bundle(ckpt, "jetson", "bf16", tmp_path / "b")
    with pytest.raises(EdgelmError, match="come from a quantized checkpoint: run `edgelm quantize"):
        export_bundle(ckpt, "jetson", "int8", tmp_path / "b")
    real = bundle_mod.get_profile
    monkeypatch.setattr(bundle_mod, "get_profile",
                        lambda name: dataclasses.replace(real(name), precisions=("fp32",)))
    with pytest.raises(EdgelmError, match="does not support fp16.*fp32"):
        export_bundle(ckpt, "cpu", "fp16", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_model_too_large_for_the_profile(ckpt, tmp_path, monkeypatch):
    real = bundle_mod.get_profile
    monkeypatch.setattr(bundle_mod, "get_profile",
                        lambda name: dataclasses.replace(real(name), memory_gib=1e-4))
    with pytest.raises(EdgelmError, match=r"over by [0-9.]+ MiB"):
        export_bundle(ckpt, "jetson", None, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_output_dir_rules(ckpt, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(EdgelmError, match="not empty.*--force"):
        export_bundle(ckpt, "cpu", None, busy)
    assert (busy / "keep.txt").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(EdgelmError, match="is a file"):
        export_bundle(ckpt, "cpu", None, afile)
    m = export_bundle(ckpt, "cpu", None, busy, force=True, chunk=4)
    assert not (busy / "keep.txt").exists() and load_bundle(busy).bundle_id == m.bundle_id


def test_failed_validation_writes_nothing(ckpt, tmp_path, monkeypatch):
    strict = dataclasses.replace(precision.PRECISIONS["fp32"], atol=-1.0)  # every difference now fails
    monkeypatch.setitem(precision.PRECISIONS, "fp32", strict)
    with pytest.raises(EdgelmError, match="disagree with PyTorch.*max_abs_logit_diff"):
        export_bundle(ckpt, "cpu", None, tmp_path / "b", chunk=4)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary sibling


@pytest.mark.parametrize("name", ["step.onnx", "prefill.onnx", "weights.bin", "build_engine.sh", "model.pt"])
def test_flipped_byte_in_any_file_kind_is_caught(copy, name):
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(EdgelmError, match=f"{name} is corrupted"):
        load_bundle(copy)
    (copy / name).unlink()
    with pytest.raises(EdgelmError, match=f"{name} is missing"):
        load_bundle(copy)


def test_truncated_file_is_caught(copy):
    data = (copy / "prefill.onnx").read_bytes()
    (copy / "prefill.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgelmError, match="prefill.onnx is corrupted or truncated"):
        load_bundle(copy)


def test_newer_format_version(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgelmError, match="format 99 is newer"):
        load_bundle(copy)


def test_missing_manifest(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(EdgelmError, match="no manifest.json"):
        load_bundle(copy)


@pytest.mark.parametrize("args,message", [
    (["--target", "nope"], "unknown target 'nope'; valid targets:"),
    (["--target", "jetson-nano", "--precision", "int8"], "does not support int8"),
    (["--target", "jetson", "--precision", "bf16"], "fp32 or fp16"),
    (["--target", "cpu", "--precision", "int4"], "edgelm quantize MODEL --recipe w8a8"),
])
def test_cli_bad_input_exits_2_with_one_line(ckpt, tmp_path, args, message):
    res = subprocess.run([EDGELM, "export", str(ckpt), "-o", str(tmp_path / "b"), *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "b").exists()


def test_cli_refuses_non_empty_dir(ckpt, made):
    res = subprocess.run([EDGELM, "export", str(ckpt), "-o", str(made)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "--force" in res.stderr
