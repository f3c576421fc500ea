"""Tiny random Mamba models from the real implementation (transformers' MambaForCausalLM), built
from a config in memory: nothing is downloaded. The mamba_ssm layout is written from the same
weights under mamba_ssm's key names (mamba_ssm itself needs CUDA to install)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub, even for kernels
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

SMALL = dict(vocab_size=256, hidden_size=32, state_size=8, num_hidden_layers=2)
# every option edgelm maps, away from its default
OPTIONS = dict(SMALL, use_bias=True, use_conv_bias=False, time_step_rank=5, layer_norm_epsilon=1e-3,
               tie_word_embeddings=False, expand=3, conv_kernel=3)
TEXT = (Path(__file__).resolve().parents[1] / "edgelm" / "cli.py").read_bytes()[:512]


def hf_model(seed: int = 0, **config) -> MambaForCausalLM:
    """A random MambaForCausalLM; every weight is perturbed so that zero-initialised biases and
    unit D, which a wrong mapping could get right by accident, are not zero or one."""
    torch.manual_seed(seed)
    model = MambaForCausalLM(MambaConfig(**{**SMALL, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_hf(model: MambaForCausalLM, directory: Path, safetensors: bool = True) -> Path:
    """save_pretrained; safetensors=False: pytorch_model.bin instead (older transformers' default,
    which transformers 5 no longer writes), a torch.save of the state dict."""
    model.save_pretrained(directory)
    if not safetensors:
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def save_mamba_ssm(model: MambaForCausalLM, directory: Path, pad_multiple: int = 8) -> Path:
    """`model`'s weights as a mamba_ssm MambaLMHeadModel directory: config.json + pytorch_model.bin,
    the embedding (and tied head) padded to a multiple of pad_multiple rows with random rows."""
    c = model.config
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
          for k, v in model.state_dict().items()}
    rows = -(-c.vocab_size // pad_multiple) * pad_multiple
    emb = torch.cat([sd["backbone.embedding.weight"], torch.randn(rows - c.vocab_size, c.hidden_size)])
    sd["backbone.embedding.weight"] = emb
    sd["lm_head.weight"] = emb if c.tie_word_embeddings else torch.cat(
        [sd["lm_head.weight"], torch.randn(rows - c.vocab_size, c.hidden_size)])
    torch.save(sd, directory / "pytorch_model.bin")
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers,
              "vocab_size": c.vocab_size, "attn_layer_idx": [], "attn_cfg": {},
              "ssm_cfg": {"layer": "Mamba1", "d_state": c.state_size, "d_conv": c.conv_kernel,
                          "expand": c.expand, "dt_rank": c.time_step_rank, "conv_bias": c.use_conv_bias,
                          "bias": c.use_bias},
              "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": c.tie_word_embeddings}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@torch.no_grad()
def hf_logits(model: MambaForCausalLM, data: bytes) -> torch.Tensor:
    """transformers' own logits over `data`, one sequence forward: (T, vocab)."""
    return model(torch.tensor([list(data)]), use_cache=False).logits[0]


@torch.no_grad()
def hf_step_logits(model: MambaForCausalLM, data: bytes) -> torch.Tensor:
    """transformers' cached single-byte generation path, one call per byte: (T, vocab)."""
    ids = torch.tensor([list(data)])
    out = model(ids[:, :1], use_cache=True)
    cache, rows = out.cache, [out.logits[0, -1]]
    for t in range(1, ids.shape[1]):
        out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
        cache = out.cache
        rows.append(out.logits[0, -1])
    return torch.stack(rows)
