"""Peak resident memory of one system in a fresh process (bench/bench.py runs it per system).

    python bench/memprobe.py KIND PATH MODEL PROMPT_FILE N_BYTES   -> prints the peak RSS in MB

The process loads the system, prefills the prompt and decodes N_BYTES greedily: what an app
embedding it holds. KIND "edgelm" imports only edgelm.runtime (numpy + ONNX Runtime, no torch),
as a device app would; the ONNX Runtime peers numpy + ONNX Runtime; the PyTorch peers torch.
"""

from __future__ import annotations

import sys
from pathlib import Path


def edgelm_peak(bundle: str, prompt: bytes, n_bytes: int) -> None:
    from edgelm.runtime import GREEDY, Session

    with Session.open(bundle, max_streams=1) as sess, sess.stream(GREEDY, prompt) as s:
        for _ in s.generate(n_bytes):
            pass


def ort_peak(path: str, prompt: bytes, n_bytes: int) -> None:
    """A plain exported step graph needs no torch at run time: ONNX Runtime and numpy only, the
    state shapes read from the graph's inputs."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()][1:]
    state = [np.zeros([1] + list(i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]]
    ids = np.array([10], np.int64)
    for b in list(prompt) + [None] * n_bytes:
        out = sess.run(None, {"byte_ids": ids if b is None else np.array([b], np.int64), **dict(zip(names, state))})
        state, ids = out[1:], out[0].argmax(-1)


def peer_peak(kind: str, path: str, model_path: str, prompt: bytes, n_bytes: int) -> None:
    if kind.startswith("ort"):
        ort_peak(path, prompt, n_bytes)
        return
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import TorchPeer

    from edgelm.checkpoint import load_model

    model = load_model(model_path)
    peer = TorchPeer(kind, model, onednn=kind == "torch-eager", quantized=kind == "torch-ao-int8")
    del model
    ids, state = peer.prefill(prompt, peer.init_state(1))
    for _ in range(n_bytes):
        ids, state = peer.greedy(ids, state)


def main() -> None:
    kind, path, model_path, prompt_file, n = sys.argv[1:6]
    prompt = Path(prompt_file).read_bytes()
    if kind == "edgelm":
        edgelm_peak(path, prompt, int(n))
    else:
        peer_peak(kind, path, model_path, prompt, int(n))
    print(peak_mb())


def peak_mb() -> float:
    """VmHWM: this process image's peak resident set (getrusage's ru_maxrss would carry over the
    peak of the process that forked it, here a bench holding torch)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    main()
