"""What a user would run instead of edgelm, each behind one small interface (bench/bench.py drives
them all through the same measurement code):

    torch-eager           model.step in PyTorch eager, no_grad, oneDNN on (PyTorch's default)
    torch-eager-no-onednn the same with torch.backends.mkldnn disabled
    torch-ao-int8         torch.ao.quantization.quantize_dynamic({Linear, LSTM, GRU}, qint8)
    ort-plain-fp32        a plain torch.onnx.export of model.step in ONNX Runtime (no fusion, no prefill graph)
    ort-quantize-dynamic  the same after onnxruntime.quantization.quantize_dynamic (int8 per channel)

A peer greedy-decodes: `greedy(ids, state) -> (next ids, state)` with its own tensor types, and
prefills with `prefill(data, state)`: PyTorch runs the model's sequence forward (its fast path:
fused nn.LSTM / nn.GRU kernels, chunked scans), ONNX Runtime steps the exported step graph, since
a plain export has nothing else. Everything runs on one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from edgelm.export.onnx_export import io_names

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_baselines import _session, _step_fn, ort_dynamic, plain_export, size_bytes, torch_ao_dynamic  # noqa: E402


class TorchPeer:
    """PyTorch eager (optionally torch.ao dynamic int8) stepping the model."""

    def __init__(self, name: str, model, onednn: bool = True, quantized: bool = False):
        self.name, self.onednn = name, onednn
        self.model = torch_ao_dynamic(model) if quantized else model.eval()
        self.fn, _ = _step_fn(self.model)
        self.size_bytes = size_bytes(self.model)
        self.probe_path = "-"  # the memory probe rebuilds it from the model file

    def flags(self):
        return torch.backends.mkldnn.flags(enabled=self.onednn)

    def init_state(self, batch: int):
        return self.model.init_state(batch)

    @torch.no_grad()
    def greedy(self, ids, state):
        with self.flags():
            logits, state = self.fn(ids, state)
        return logits.argmax(-1), state

    def start_ids(self, batch: int):
        return torch.full((batch,), 10, dtype=torch.long)

    @torch.no_grad()
    def prefill(self, data: bytes, state):
        with self.flags():
            logits, state = self.model(torch.tensor(list(data))[None], state)
        return logits[:, -1].argmax(-1), state


class OrtPeer:
    """An exported step graph in ONNX Runtime, one session, one thread."""

    def __init__(self, name: str, path: Path, model):
        self.name, self.model, self.probe_path = name, model, str(path)
        self.sess = _session(path)
        inputs, self.outputs = io_names(model)
        self.state_inputs = inputs[1:]
        self.size_bytes = size_bytes(path)

    def init_state(self, batch: int):
        return [np.zeros((batch, *shape), np.float32) for _, shape in self.model.state_spec()]

    def greedy(self, ids, state):
        out = self.sess.run(self.outputs, {"byte_ids": ids, **dict(zip(self.state_inputs, state))})
        return out[0].argmax(-1), out[1:]

    def start_ids(self, batch: int):
        return np.full((batch,), 10, dtype=np.int64)

    def prefill(self, data: bytes, state):
        ids = self.start_ids(1)
        for b in data:
            ids, state = self.greedy(np.array([b], np.int64), state)
        return ids, state


def build(model, work: Path) -> list:
    """Every peer of `model`; ONNX files go under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    plain = plain_export(model, work / "plain_step.onnx")
    dynamic = ort_dynamic(plain, work / "plain_step.int8.onnx")
    return [TorchPeer("torch-eager", model), TorchPeer("torch-eager-no-onednn", model, onednn=False),
            TorchPeer("torch-ao-int8", model, onednn=False, quantized=True),
            OrtPeer("ort-plain-fp32", plain, model), OrtPeer("ort-quantize-dynamic", dynamic, model)]
