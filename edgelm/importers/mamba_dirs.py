"""Mamba directories as published: transformers' MambaForCausalLM and state-spaces' mamba_ssm.

  transformers  config.json with model_type "mamba"; model.safetensors (or sharded, with
                model.safetensors.index.json) or pytorch_model.bin; keys backbone.embeddings.*,
                backbone.layers.{i}.{norm,mixer}.*, backbone.norm_f.*, lm_head.* (absent when tied)
  mamba_ssm     config.json with d_model, n_layer, vocab_size, ssm_cfg, rms_norm, residual_in_fp32,
                pad_vocab_size_multiple, tie_embeddings; pytorch_model.bin; backbone.embedding.*
Both map onto edgelm's `mamba` (models/mamba.py). The math is the same block: x + out_proj(
SSM(conv(in_proj(RMSNorm(x)))) * silu(z)); the residual stream is always float32 in edgelm, which is
what residual_in_fp32 asks for (and exact in fp32 either way). Byte-level only: ids 0-255 must be
the bytes, so a vocabulary is 256 ids, padded rows past 256 are dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import EdgelmError
from ..models import VOCAB
from .safetensors_file import read_tensors
from .torchfile import read_payload

# transformers' MambaConfig defaults (a config.json omits the ones left at their default)
HF_DEFAULTS = {"vocab_size": 50280, "hidden_size": 768, "state_size": 16, "num_hidden_layers": 32,
               "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "use_bias": False,
               "use_conv_bias": True, "hidden_act": "silu", "residual_in_fp32": True,
               "time_step_rank": "auto", "tie_word_embeddings": True}
# mamba_ssm's MambaConfig and Mamba (ssm_cfg) defaults
SSM_DEFAULTS = {"d_intermediate": 0, "vocab_size": 50277, "ssm_cfg": {}, "attn_layer_idx": [],
                "rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
                "tie_embeddings": True}
SSM_CFG_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True,
                    "bias": False, "layer": "Mamba1"}
MIXER_KEYS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight",
              "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
OTHER_TYPES = {"mamba2": "Mamba-2", "falcon_mamba": "Falcon-Mamba (extra norms on B, C and dt)",
               "jamba": "Jamba (attention layers)", "zamba": "Zamba (attention layers)"}


class Layout:
    """One directory's facts: (edgelm config, vocabulary rows, tied?, key names, provenance)."""

    def __init__(self, name: str, config: dict, declared_vocab: int, tied: bool, embed_key: str,
                 notes: dict):
        self.name, self.config, self.declared_vocab, self.tied = name, config, declared_vocab, tied
        self.embed_key, self.notes = embed_key, notes


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise EdgelmError(f"{directory} is neither a model directory nor an edgelm bundle (no config.json, "
                          "no manifest.json); pass a transformers / mamba_ssm Mamba directory, a model file "
                          "(.pt, .safetensors) or a bundle from `edgelm export`")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgelmError(f"{path} is not valid JSON ({exc}); copy the model directory again") from None
    if not isinstance(cfg, dict):
        raise EdgelmError(f"{path} is not a JSON object; copy the model directory again")
    return cfg


def _dt_rank(value, d_model: int, where: str) -> int:
    if value == "auto":
        return math.ceil(d_model / 16)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EdgelmError(f"{where}: time step rank {value!r} is neither \"auto\" nor a positive integer")
    return value


def _ints(where: str, **values) -> None:
    bad = [f"{k}={v!r}" for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise EdgelmError(f"{where}: {', '.join(bad)} must be positive integers; fix config.json")


def hf_layout(cfg: dict, where: str) -> Layout:
    """transformers' MambaConfig -> edgelm's mamba config."""
    c = {**HF_DEFAULTS, **cfg}
    if c["hidden_act"] != "silu":
        raise EdgelmError(f"{where}: hidden_act {c['hidden_act']!r}; edgelm's Mamba uses silu (the Mamba default)")
    d, e = c["hidden_size"], c["expand"]
    _ints(where, hidden_size=d, num_hidden_layers=c["num_hidden_layers"], state_size=c["state_size"],
          conv_kernel=c["conv_kernel"], vocab_size=c["vocab_size"])
    d_inner = int(e * d)  # transformers recomputes intermediate_size from these, whatever the file says
    config = {"d_model": d, "n_layers": c["num_hidden_layers"], "d_state": c["state_size"],
              "d_conv": c["conv_kernel"], "expand": max(1, round(d_inner / d)), "d_inner": d_inner,
              "dt_rank": _dt_rank(c["time_step_rank"], d, where), "conv_bias": bool(c["use_conv_bias"]),
              "proj_bias": bool(c["use_bias"]), "norm_eps": float(c["layer_norm_epsilon"])}
    notes = {"layout": "transformers MambaForCausalLM", "residual_in_fp32": bool(c["residual_in_fp32"])}
    return Layout("transformers", config, _hf_vocab(c, where), bool(c["tie_word_embeddings"]),
                  "backbone.embeddings.weight", notes)


def _hf_vocab(c: dict, where: str) -> int:
    """transformers stores the padded size as vocab_size; padding is known only from the multiple."""
    rows, multiple = c["vocab_size"], c.get("pad_vocab_size_multiple")
    if rows != VOCAB and isinstance(multiple, int) and multiple > 0 and rows == -(-VOCAB // multiple) * multiple:
        return VOCAB
    return rows


def ssm_layout(cfg: dict, where: str) -> Layout:
    """mamba_ssm's MambaConfig (MambaLMHeadModel) -> edgelm's mamba config."""
    c = {**SSM_DEFAULTS, **cfg}
    s = {**SSM_CFG_DEFAULTS, **(c["ssm_cfg"] or {})}
    if s["layer"] != "Mamba1":
        raise EdgelmError(f"{where}: ssm_cfg layer {s['layer']!r}; edgelm imports Mamba-1 models only")
    if c["attn_layer_idx"] or c["d_intermediate"]:
        raise EdgelmError(f"{where}: attention layers or an MLP after each mixer (attn_layer_idx, "
                          "d_intermediate); edgelm imports plain Mamba stacks only")
    if not c["rms_norm"]:
        raise EdgelmError(f"{where}: rms_norm is false (LayerNorm); edgelm's Mamba uses RMSNorm")
    d = c["d_model"]
    _ints(where, d_model=d, n_layer=c["n_layer"], d_state=s["d_state"], d_conv=s["d_conv"],
          vocab_size=c["vocab_size"])
    d_inner = int(s["expand"] * d)
    config = {"d_model": d, "n_layers": c["n_layer"], "d_state": s["d_state"], "d_conv": s["d_conv"],
              "expand": max(1, round(s["expand"])), "d_inner": d_inner,
              "dt_rank": _dt_rank(s["dt_rank"], d, where), "conv_bias": bool(s["conv_bias"]),
              "proj_bias": bool(s["bias"]), "norm_eps": 1e-5}
    notes = {"layout": "mamba_ssm MambaLMHeadModel", "residual_in_fp32": bool(c["residual_in_fp32"])}
    return Layout("mamba_ssm", config, c["vocab_size"], bool(c["tie_embeddings"]),
                  "backbone.embedding.weight", notes)


def layout_of(cfg: dict, where: str) -> Layout:
    try:
        return _layout_of(cfg, where)
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. "expand": "two"
        raise EdgelmError(f"{where}: config.json has a value of the wrong type ({exc}); fix config.json") from None


def _layout_of(cfg: dict, where: str) -> Layout:
    kind = cfg.get("model_type")
    if kind == "mamba":
        return hf_layout(cfg, where)
    if kind in OTHER_TYPES:
        raise EdgelmError(f"{where}: model_type {kind!r} is {OTHER_TYPES[kind]}; edgelm imports Mamba-1 "
                          "(model_type \"mamba\") and mamba_ssm Mamba-1 directories")
    if kind is None and "d_model" in cfg and "n_layer" in cfg:
        return ssm_layout(cfg, where)
    raise EdgelmError(f"{where}: config.json describes {'model_type ' + repr(kind) if kind else 'no known model'}; "
                      "edgelm imports transformers Mamba (model_type \"mamba\") and mamba_ssm directories")


def check_byte_level(layout: Layout, rows: int, where: str) -> None:
    """Token ids 0-255 must be the bytes: a 256-id vocabulary, its embedding padded or not."""
    v = layout.declared_vocab
    if v > VOCAB:
        raise EdgelmError(f"{where}: a vocabulary of {v:,} tokens is a tokenizer's, not bytes; edgelm runs "
                          f"byte-level models (ids 0-255 are the bytes, as in MambaByte): train with vocab_size {VOCAB}")
    if v < VOCAB or rows < VOCAB:
        raise EdgelmError(f"{where}: {min(v, rows)} token ids cannot cover the {VOCAB} bytes; edgelm runs "
                          f"byte-level models (vocab_size {VOCAB})")


def _conv(t: torch.Tensor) -> torch.Tensor:
    """nn.Conv1d's depthwise weight (Di, 1, K) -> edgelm's (Di, K)."""
    return t[:, 0] if t.dim() == 3 and t.shape[1] == 1 else t


class _Taker:
    """Source tensors by name, each used at most once; what is missing or left over is an error."""

    def __init__(self, sd: dict, where: str):
        self.sd, self.where, self.used = sd, where, set()

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.sd:
            raise EdgelmError(f"{self.where}: the weights lack {name}, which config.json implies; "
                              "the weights and config.json do not belong together")
        self.used.add(name)
        return self.sd[name]

    def check_all_used(self) -> None:
        left = sorted(set(self.sd) - self.used)
        if left:
            more = f" (+{len(left) - 4} more)" if len(left) > 4 else ""
            raise EdgelmError(f"{self.where}: tensors with no place in a Mamba of this config: "
                              f"{', '.join(left[:4])}{more}; the weights and config.json do not belong together")


def edgelm_state(layout: Layout, sd: dict, where: str) -> tuple[dict, int]:
    """(edgelm mamba state_dict, embedding rows in the file) from a directory's tensors."""
    take, cfg = _Taker(sd, where), layout.config
    alt = {"backbone.embeddings.weight": "backbone.embedding.weight"}.get(layout.embed_key, "")
    embed = take(alt if layout.embed_key not in sd and alt in sd else layout.embed_key)
    if embed.dim() != 2 or embed.shape[1] != cfg["d_model"]:
        raise EdgelmError(f"{where}: the embedding is {tuple(embed.shape)}, not (vocab, {cfg['d_model']}); "
                          "the weights and config.json do not belong together")
    rows = embed.shape[0]
    check_byte_level(layout, rows, where)
    out = {"embed.weight": embed[:VOCAB], "norm_f.weight": take("backbone.norm_f.weight")}
    skip = {"in_proj.bias", "out_proj.bias"} if not cfg["proj_bias"] else set()
    skip |= {"conv1d.bias"} if not cfg["conv_bias"] else set()
    names = {"conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias"}
    for i in range(cfg["n_layers"]):
        src = f"backbone.layers.{i}."
        out[f"blocks.{i}.norm.weight"] = take(src + "norm.weight")
        for key in (k for k in MIXER_KEYS if k not in skip):
            t = take(src + "mixer." + key)
            out[f"blocks.{i}.{names.get(key, key)}"] = _conv(t) if key == "conv1d.weight" else t
    if layout.tied:
        take.used.add("lm_head.weight")  # a tied copy, if the file has one: the embedding is the head
        out["head.weight"] = embed[:VOCAB]
    else:
        out["head.weight"] = take("lm_head.weight")[:VOCAB]
    take.check_all_used()
    return out, rows


def _shards(index: Path) -> list[str]:
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise EdgelmError(f"{index} is not a valid weight index; copy the model directory again") from None
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n]
    if bad or not names:
        raise EdgelmError(f"{index} names shard files outside its directory ({bad[:2]}); refusing it")
    return names


def read_weights(directory: Path) -> tuple[dict, list[str]]:
    """Every tensor of the directory's weight files, and their names. safetensors is read without
    pickle; a .bin with torch.load(weights_only=True)."""
    found = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if found is None:
        raise EdgelmError(f"{directory} has config.json but no weights: expected model.safetensors or "
                          "pytorch_model.bin (or their sharded .index.json form)")
    files = _shards(directory / found) if found.endswith(".index.json") else [found]
    sd: dict = {}
    for name in files:
        path = directory / name
        part = read_tensors(path)[0] if name.endswith(".safetensors") else read_payload(path)
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise EdgelmError(f"{path} is not a state dict (name -> tensor); copy the model directory again")
        sd.update(part)
    return sd, files


def load_dir(directory: str | Path) -> tuple[dict, dict]:
    """(edgelm payload, provenance) of a transformers or mamba_ssm Mamba directory."""
    directory = Path(directory)
    where = str(directory)
    layout = layout_of(read_config(directory), where)
    sd, files = read_weights(directory)
    state, rows = edgelm_state(layout, sd, where)
    payload = {"format": "edgelm", "version": 1, "arch": "mamba", "config": layout.config, "state_dict": state}
    imported = {**layout.notes, "files": files, "vocab_rows": rows, "padding_rows_dropped": rows - VOCAB,
                "tied_embeddings": layout.tied}
    return payload, imported
