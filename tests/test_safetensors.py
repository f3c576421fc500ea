"""safetensors checkpoints (`edgelm convert`, `train -o X.safetensors`, `quantize -o X.safetensors`)
and an imported transformers Mamba through everything else: quantization, TensorRT and CPU targets,
the runtime, `edgelm run MODEL`."""

from __future__ import annotations

import json
import struct

import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from bundle_tools import cli, exit_code, one_line_error
from hf_fixtures import OPTIONS, MambaForCausalLM, hf_model, save_hf
from quant_fixtures import HELDOUT, MODELS, calibration_bytes

from edgelm.checkpoint import load_checkpoint, load_model
from edgelm.export.quant.stored import load_quantized
from edgelm.vocab import PRIME_BYTE


def _ok(capsys, *args) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


def _header(path) -> dict:
    """The safetensors header: 8 bytes of length, then JSON; no pickle anywhere before the data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def test_an_edgelm_checkpoint_round_trips_through_safetensors(tmp_path, capsys):
    src = MODELS / "mamba-tiny.pt"
    _ok(capsys, "convert", src, "-o", tmp_path / "m.safetensors")
    header = _header(tmp_path / "m.safetensors")
    assert header["__metadata__"]["format"] == "edgelm"
    model, meta = load_checkpoint(tmp_path / "m.safetensors")
    ref, ref_meta = load_checkpoint(src)
    assert meta["train"] == ref_meta["train"] and model.config_dict() == ref.config_dict()
    plain = load_file(tmp_path / "m.safetensors")  # any safetensors reader sees the state dict
    assert set(plain) == set(ref.state_dict())
    assert all(torch.equal(plain[k], v) for k, v in ref.state_dict().items())
    _ok(capsys, "convert", tmp_path / "m.safetensors", "-o", tmp_path / "back.pt")
    back = load_model(tmp_path / "back.pt")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ref.state_dict().items())
    ev = [json.loads(_ok(capsys, "eval", p, "--data", HELDOUT, "--json"))["bits_per_byte"]
          for p in (src, tmp_path / "m.safetensors")]
    assert ev[0] == ev[1]


def test_a_char_rnn_state_dict_in_safetensors_loads_like_its_torch_file(tmp_path):
    sd = torch.load(MODELS / "charrnn-lstm.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "rnn.safetensors")
    model, meta = load_checkpoint(tmp_path / "rnn.safetensors")
    ref = load_model(MODELS / "charrnn-lstm.pt")
    assert meta["source"] == "char-rnn state_dict"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_train_writes_safetensors(tmp_path, capsys):
    _ok(capsys, "train", HELDOUT, "--arch", "gru", "-o", tmp_path / "g.safetensors", "--steps", "1",
        "--batch-size", "2", "--seq-len", "16")
    assert "train" in load_checkpoint(tmp_path / "g.safetensors")[1]
    assert "bytes/stream" in _ok(capsys, "info", tmp_path / "g.safetensors")


def test_damaged_safetensors_and_bad_outputs_are_one_line(tmp_path, capsys):
    _ok(capsys, "convert", MODELS / "gru-tiny.pt", "-o", tmp_path / "g.safetensors")
    tensors = load_file(tmp_path / "g.safetensors")
    for name, metadata, match in [
            ("meta.safetensors", {"format": "edgelm", "payload": "{oops"}, "edgelm metadata is damaged"),
            ("ref.safetensors", {"format": "edgelm", "payload": json.dumps({"quant": {"__tensor__": "__edgelm__.9"}})},
             "names a missing tensor")]:
        save_file(tensors, tmp_path / name, metadata=metadata)
        code, out, err = cli(capsys, "info", tmp_path / name)
        assert one_line_error(code, err, match) and out == "", err
    code, _, err = cli(capsys, "convert", MODELS / "gru-tiny.pt", "-o", tmp_path / "g.bin")
    assert one_line_error(code, err, "must end in .safetensors") and not (tmp_path / "g.bin").exists()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A transformers Mamba with every mapped option set (biased projections: quantized Gemms)."""
    root = tmp_path_factory.mktemp("imported")
    (root / "calib.txt").write_bytes(calibration_bytes())
    return save_hf(hf_model(seed=2, **OPTIONS), root / "hf"), root


@pytest.fixture(scope="module")
def quantized(imported):
    """`edgelm quantize DIR --recipe w8a8 -o q.safetensors` of the imported model."""
    directory, root = imported
    q = root / "q.safetensors"
    code = exit_code("quantize", directory, "--recipe", "w8a8", "--calib", root / "calib.txt", "-o", q)
    assert code == 0
    return q


def test_an_imported_model_quantizes_to_safetensors_and_exports_for_a_jetson(imported, quantized, capsys):
    directory, root = imported
    q = quantized
    _, quant, meta = load_quantized(q)
    assert quant["recipe"] == "w8a8" and meta["imported"]["layout"] == "transformers MambaForCausalLM"
    _ok(capsys, "convert", q, "-o", root / "q.pt")  # the same records in the torch format
    again = load_quantized(root / "q.pt")[1]["records"]
    for site, rec in quant["records"].items():
        for key, value in rec.items():
            other = again[site][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (site, key)
    info = _ok(capsys, "info", q)
    assert "quantized   w8a8" in info and "imported from a transformers MambaForCausalLM" in info
    # a TensorRT target: the static op and Q/DQ checks pass, and ONNX Runtime runs it here
    assert "(int8)" in _ok(capsys, "export", q, "--target", "jetson-orin-nano-8gb", "-o", root / "b-jetson")
    ckpt = json.loads(_ok(capsys, "eval", q, "--data", HELDOUT, "--json"))["bits_per_byte"]
    bundle = json.loads(_ok(capsys, "eval", root / "b-jetson", "--data", HELDOUT, "--json"))["bits_per_byte"]
    assert abs(ckpt - bundle) < 0.01


def test_an_imported_model_passes_every_targets_tensorrt_checks(imported, quantized, tmp_path):
    """Every device profile: the step graph in the profile's default precision, and the w8a8 one
    where the profile runs int8, at the opset and byte-id type export picks for it, against TensorRT's ONNX op
    matrix, precision rules and Q/DQ placement rules (a CPU profile: its precision rules)."""
    from edgelm.devices import list_profiles
    from edgelm.export.onnx_export import OPSET, export_step
    from edgelm.export.quant.stored import quantized_form
    from edgelm.export.trt_ops import check_tensorrt_compat, target_opset

    model = load_model(imported[0])
    qmodel, quant, _ = load_quantized(quantized)
    graphs: dict = {}
    for profile in list_profiles():
        opset, trt = target_opset(profile, OPSET), bool(profile.tensorrt_versions)
        wanted = [profile.default_precision] + (["int8"] if "int8" in profile.precisions else [])
        for precision in wanted:
            key = (precision, opset, trt and precision == "int8", profile.byte_ids_dtype)
            if key not in graphs:
                path = tmp_path / f"{len(graphs)}.onnx"
                form = quantized_form(qmodel, quant, "q", dq_first=key[2]) if precision == "int8" else None
                export_step(qmodel if form is not None else model, path, precision, opset, form, key[3])
                graphs[key] = onnx.load(str(path))
            assert check_tensorrt_compat(graphs[key], profile) == [], (profile.name, precision)
    assert len(graphs) >= 4


def test_an_imported_model_exports_fp16_for_a_gpu_and_runs_greedy_like_transformers(imported, capsys):
    directory, root = imported
    assert "(fp16)" in _ok(capsys, "export", directory, "--target", "rtx-3060", "-o", root / "b-gpu")
    out = _ok(capsys, "run", directory, "--prompt", "def ", "--max-bytes", "24", "--temperature", "0", "--json")
    made = [json.loads(line)["byte"] for line in out.splitlines() if "byte" in json.loads(line)]
    ref = MambaForCausalLM.from_pretrained(directory).eval()
    prompt = torch.tensor([[PRIME_BYTE, *b"def "]])  # a stream's history starts with PRIME_BYTE
    with torch.no_grad():
        greedy = ref.generate(prompt, max_new_tokens=24, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert made == greedy
    code, _, err = cli(capsys, "run", directory, "--prompt", "x", "--trusted-key", root / "calib.txt")
    assert one_line_error(code, err, "a model has none")
