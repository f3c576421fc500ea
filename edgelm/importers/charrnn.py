"""Import users' own char-RNN checkpoints: Embedding(256, E) + nn.LSTM/nn.GRU + Linear(H, 256).

Recognised from parameter names and shapes, whatever the attribute names are:
  recurrent layers: `<prefix>weight_ih_l{k}`, `weight_hh_l{k}`, optional `bias_ih_l{k}`, `bias_hh_l{k}`
                    weight_hh rows = 4H -> LSTM, 3H -> GRU (H = its column count)
  embedding:        a (256, E) weight with E = weight_ih_l0's input dim
  head:             a (256, H) weight + optional (256,) bias
The file may be a plain state_dict or a dict holding one under `model`, `state_dict`, ...
batch_first does not change the weights, so both layouts load. Missing biases become zeros.
"""

from __future__ import annotations

import re

import torch

from ..errors import EdgelmError
from ..models import VOCAB, ByteLM, build_model
from ..statedict import check_state_dict

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params",
                "model_state", "module")
RNN_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)_l(?P<layer>\d+)$")
GATES = {4: "lstm", 3: "gru"}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(payload) -> dict | None:
    """The state_dict in a file: the payload itself, or one level down under a wrapper key."""
    if _is_state_dict(payload):
        return payload
    if not isinstance(payload, dict):
        return None
    for key in WRAPPER_KEYS:
        if _is_state_dict(payload.get(key)):
            return payload[key]
    inner = [v for v in payload.values() if _is_state_dict(v)]
    return inner[0] if len(inner) == 1 else None


def describe(payload, limit: int = 8) -> str:
    """A short listing of what a file holds: tensor names + shapes, or top-level keys."""
    sd = find_state_dict(payload)
    if sd is not None:
        items = [f"{k} {tuple(v.shape)}" for k, v in sd.items()]
    elif isinstance(payload, dict):
        items = [f"{k}: {type(v).__name__}" for k, v in payload.items()]
    else:
        return f"a {type(payload).__name__}"
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class Unrecognised(Exception):
    """Why a state_dict is not a classic char-RNN (turned into an EdgelmError with a listing)."""


def rnn_layers(sd: dict) -> tuple[str, list[dict]]:
    """The recurrent stack: (prefix, [{weight_ih, weight_hh, bias_ih?, bias_hh?} per layer])."""
    found: dict[str, dict[int, dict]] = {}
    for name in sd:
        m = RNN_KEY.match(name)
        if m:
            found.setdefault(m["prefix"], {}).setdefault(int(m["layer"]), {})[m["kind"]] = name
    if len(found) != 1:
        raise Unrecognised("no nn.LSTM/nn.GRU weights (weight_ih_l0, ...)" if not found
                           else f"several recurrent modules ({', '.join(repr(p) for p in found)})")
    prefix, layers = next(iter(found.items()))
    if sorted(layers) != list(range(len(layers))):
        raise Unrecognised(f"recurrent layers {sorted(layers)} are not numbered 0..n-1")
    if any(k.startswith(prefix) and ("_reverse" in k or "weight_hr" in k) for k in sd):
        raise Unrecognised("bidirectional or projected (proj_size) RNNs cannot generate text")
    out = [layers[i] for i in range(len(layers))]
    if any("weight_ih" not in lay or "weight_hh" not in lay for lay in out):
        raise Unrecognised("a recurrent layer lacks weight_ih or weight_hh")
    return prefix, out


def rnn_kind(sd: dict, layers: list[dict]) -> tuple[str, int, int]:
    """(arch, E, H) from the shapes of the recurrent weights; checks every layer agrees."""
    w_hh = sd[layers[0]["weight_hh"]]
    hidden = w_hh.shape[1]
    gates, rem = divmod(w_hh.shape[0], hidden)
    if rem or gates not in GATES:
        raise Unrecognised(f"weight_hh_l0 {tuple(w_hh.shape)} is neither 4H x H (LSTM) nor 3H x H (GRU)")
    embed = sd[layers[0]["weight_ih"]].shape[1]
    for i, lay in enumerate(layers):
        want = {"weight_ih": (gates * hidden, embed if i == 0 else hidden),
                "weight_hh": (gates * hidden, hidden), "bias_ih": (gates * hidden,),
                "bias_hh": (gates * hidden,)}
        for kind, name in lay.items():
            if tuple(sd[name].shape) != want[kind]:
                raise Unrecognised(f"{name} has shape {tuple(sd[name].shape)}, expected {want[kind]}")
    return GATES[gates], embed, hidden


def find_linear(sd: dict, dim: int, exclude: set[str], last: bool) -> tuple[str, str | None]:
    """A (256, dim) weight (and its (256,) bias, if any); the first or last one in file order."""
    names = [k for k, v in sd.items() if k not in exclude and tuple(v.shape) == (VOCAB, dim)]
    if not names:
        return "", None
    name = names[-1] if last else names[0]
    bias = name[: -len("weight")] + "bias" if name.endswith("weight") else None
    return name, bias if bias in sd and tuple(sd[bias].shape) == (VOCAB,) else None


def convert(sd: dict) -> tuple[str, dict, dict]:
    """(arch, config, edgelm state_dict) from a char-RNN state_dict, or raise Unrecognised."""
    prefix, layers = rnn_layers(sd)
    arch, embed_dim, hidden = rnn_kind(sd, layers)
    used = {name for lay in layers for name in lay.values()}
    head_w, head_b = find_linear(sd, hidden, used, last=True)
    if not head_w:
        raise Unrecognised(f"no output layer: a ({VOCAB}, {hidden}) weight")
    used |= {head_w, head_b} - {None}
    emb_w, emb_b = find_linear(sd, embed_dim, used, last=False)
    if not emb_w:
        raise Unrecognised(f"no byte embedding: a ({VOCAB}, {embed_dim}) weight")
    used.add(emb_w)
    extra = [k for k in sd if k not in used]
    if extra:
        raise Unrecognised(f"tensors with no place in Embedding+{arch.upper()}+Linear: {', '.join(extra[:4])}")
    out = {"embed.weight": sd[emb_w], "head.weight": sd[head_w],
           "head.bias": sd[head_b] if head_b else torch.zeros(VOCAB)}
    for i, lay in enumerate(layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            rows = sd[lay["weight_hh"]].shape[0]
            out[f"rnn.{kind}_l{i}"] = sd[lay[kind]] if kind in lay else torch.zeros(rows)
    config = {"d_embed": embed_dim, "d_hidden": hidden, "n_layers": len(layers)}
    return arch, config, out


def from_charrnn(payload, where: str) -> ByteLM:
    """Build an edgelm lstm/gru model from a char-RNN file's payload, or explain what was found."""
    sd = find_state_dict(payload)
    try:
        if sd is None:
            raise Unrecognised("no state_dict (a dict of name -> tensor) in it")
        arch, config, state = convert(sd)
    except Unrecognised as why:
        raise EdgelmError(
            f"{where} is neither an edgelm checkpoint nor a char-RNN state_dict ({why}); found: "
            f"{describe(payload)}. edgelm imports Embedding(256, E) + nn.LSTM/nn.GRU + Linear(H, 256) "
            "state_dicts; for other models use an edgelm arch and edgelm.checkpoint.save_model") from None
    model = build_model(arch, config)
    model.load_state_dict(check_state_dict(model, state, where))
    return model.eval()
