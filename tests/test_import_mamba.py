"""Imported Mamba models against the real implementation: transformers' MambaForCausalLM (tiny,
random, built in memory) and the mamba_ssm layout written from the same weights. Logits within 1e-4
over 512 bytes: sequence forward, step by step (against transformers' cached single-step path), and
through an exported bundle in the runtime. Bad directories: one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bundle_tools import cli, one_line_error
from quant_fixtures import HELDOUT
from hf_fixtures import OPTIONS, TEXT, hf_logits, hf_model, hf_step_logits, save_hf, save_mamba_ssm

from edgelm.checkpoint import load_checkpoint
from edgelm.vocab import PRIME_BYTE

ATOL = 1e-4
VARIANTS = {"defaults": {}, "options": OPTIONS}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """name -> (transformers model, its directory). `options` is saved as pytorch_model.bin."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (m := hf_model(**cfg), save_hf(m, root / name, safetensors=name == "defaults"))
            for name, cfg in VARIANTS.items()}


def _edgelm_logits(model, data: bytes):
    ids = torch.tensor([list(data)])
    with torch.no_grad():
        seq = model(ids)[0][0]
        state, rows = model.init_state(1), []
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            rows.append(logits[0])
    return seq, torch.stack(rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_transformers_directory_computes_transformers_logits(hf, variant):
    ref_model, directory = hf[variant]
    model, meta = load_checkpoint(directory)
    seq, steps = _edgelm_logits(model, TEXT)
    ref = hf_logits(ref_model, TEXT)
    assert (seq - ref).abs().max() < ATOL
    assert (steps - hf_step_logits(ref_model, TEXT)).abs().max() < ATOL
    assert meta["imported"]["files"] == (["model.safetensors"] if variant == "defaults" else ["pytorch_model.bin"])
    if variant == "options":
        cfg = model.config
        assert (cfg.d_inner, cfg.dt_rank, cfg.d_conv, cfg.conv_bias, cfg.proj_bias, cfg.norm_eps) == \
            (96, 5, 3, False, True, 1e-3)


def test_the_mamba_ssm_layout_of_the_same_weights_computes_the_same_logits(hf, tmp_path, capsys):
    ref_model, _ = hf["defaults"]
    directory = save_mamba_ssm(ref_model, tmp_path / "ssm", pad_multiple=48)  # 288 embedding rows
    model, meta = load_checkpoint(directory)
    seq, _ = _edgelm_logits(model, TEXT)
    assert (seq - hf_logits(ref_model, TEXT)).abs().max() < ATOL
    assert meta["imported"]["vocab_rows"] == 288 and meta["imported"]["padding_rows_dropped"] == 32
    code, out, err = cli(capsys, "info", directory)
    assert code == 0 and "288 rows in the file: the 32 padding rows past the 256 bytes are dropped" in out, err
    assert "mamba_ssm MambaLMHeadModel directory" in out


def test_an_untied_mamba_ssm_model_keeps_its_own_head(tmp_path):
    ref_model = hf_model(seed=1, tie_word_embeddings=False)
    model, _ = load_checkpoint(save_mamba_ssm(ref_model, tmp_path / "ssm", pad_multiple=24))
    assert torch.equal(model.head.weight, ref_model.lm_head.weight)
    assert not torch.equal(model.head.weight, model.embed.weight)


def test_a_bundle_of_an_imported_model_streams_transformers_logits(hf, tmp_path, capsys):
    """Export to a cpu bundle, then the runtime (numpy + onnxruntime) one byte at a time."""
    from edgelm.runtime import Session

    ref_model, directory = hf["options"]
    code, _, err = cli(capsys, "export", directory, "--target", "cpu", "-o", tmp_path / "b")
    assert code == 0, err
    ref = hf_logits(ref_model, bytes([PRIME_BYTE]) + TEXT).numpy()  # a stream starts after PRIME_BYTE
    with Session.open(tmp_path / "b") as session, session.stream() as stream:
        got = [stream.logits]
        for b in TEXT[:-1]:
            stream.feed(bytes([b]))
            got.append(stream.logits)
    assert np.abs(np.stack(got) - ref[:len(TEXT)]).max() < ATOL
    bpb = [json.loads(cli(capsys, "eval", p, "--data", HELDOUT, "--json")[1])["bits_per_byte"]
           for p in (directory, tmp_path / "b")]
    assert abs(bpb[0] - bpb[1]) < 1e-4


def _hf_dir(tmp_path, name="m", edit=None, **config):
    directory = save_hf(hf_model(**config), tmp_path / name)
    if edit is not None:
        cfg = json.loads((directory / "config.json").read_text())
        edit(cfg)
        (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def _refused(capsys, path, match, command=("info",)):
    code, out, err = cli(capsys, *command, path)
    assert one_line_error(code, err, match) and out == "", err


def test_a_tokenizer_vocabulary_is_refused_with_the_reason(tmp_path, capsys):
    _refused(capsys, _hf_dir(tmp_path, vocab_size=300), "a vocabulary of 300 tokens is a tokenizer's, not bytes")
    _refused(capsys, _hf_dir(tmp_path, "small", vocab_size=200), "200 token ids cannot cover the 256 bytes")


def test_other_model_types_and_damaged_directories_are_one_line(tmp_path, capsys):
    base = _hf_dir(tmp_path)
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "config.json").write_text(json.dumps({"model_type": "mamba2"}))
    _refused(capsys, tmp_path / "m2", "Mamba-2")
    wrong = _hf_dir(tmp_path, "wrong", edit=lambda c: c.update(expand="two", layer_norm_epsilon="tiny"))
    _refused(capsys, wrong, "config.json has a value of the wrong type")
    deeper = _hf_dir(tmp_path, "deeper", edit=lambda c: c.update(num_hidden_layers=3))
    _refused(capsys, deeper, "the weights lack backbone.layers.2.norm.weight")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    _refused(capsys, tmp_path / "bad", "is not valid JSON")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_bytes((base / "config.json").read_bytes())
    _refused(capsys, tmp_path / "noweights", "has config.json but no weights")
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    _refused(capsys, base, "is not a readable safetensors file")


def test_shards_outside_the_directory_and_bare_mamba_weights_are_refused(tmp_path, capsys):
    directory = _hf_dir(tmp_path)
    (directory / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"backbone.norm_f.weight": "../outside.safetensors"}}))
    _refused(capsys, directory, "names shard files outside its directory")
    _refused(capsys, tmp_path / "outside.safetensors", "holds Mamba weights without their config")


def test_a_sharded_directory_loads_every_shard(tmp_path):
    ref_model = hf_model()
    ref_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model, meta = load_checkpoint(tmp_path / "sharded")
    assert len(meta["imported"]["files"]) > 1
    assert (_edgelm_logits(model, TEXT[:64])[0] - hf_logits(ref_model, TEXT[:64])).abs().max() < ATOL


def test_a_bundle_is_not_a_model(hf, tmp_path, capsys):
    """A directory with a manifest.json is taken for a bundle, whatever else it holds."""
    bundle = save_hf(hf_model(), tmp_path / "b")
    (bundle / "manifest.json").write_text("{}")
    _refused(capsys, bundle, "is an edgelm bundle, not a model")
