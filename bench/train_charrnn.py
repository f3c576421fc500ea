"""Train a plain PyTorch char-RNN (no edgelm code) and save its bare state_dict for edgelm to import.

The module is what a classic char-RNN tutorial writes: Embedding(256, 64) -> nn.LSTM(64, 192,
num_layers=2, batch_first=True) -> Linear(192, 256); the file is `torch.save(model.state_dict())`
(fp32, keys encoder.weight, rnn.weight_ih_l0, ..., decoder.bias): the plain char-RNN of the
quantization benchmark (issue 10). Corpus and held-out text (textwrap.py) are bench/train_reference.py's;
like `edgelm train`, the last 5% of the corpus is not trained on and its BPB is reported too. BPB is
computed by edgelm on the saved file (checkpoint.load_model + evaluate.bits_per_byte): this checks the import.

Training: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.01 on matrices), 20 warmup steps then
cosine decay to 0.1 x lr, grad clip 1.0, batch 32 random windows of 128 bytes, seed 0. The step
count fits --budget-s (timed on a throwaway model) unless --steps fixes it; to reproduce the
committed model pass the step count recorded in bench/results/charrnn_training.json:

    .venv/bin/python bench/train_charrnn.py --steps N [--install]   # or --budget-s 150
    # writes bench/out/charrnn-lstm.pt + bench/out/charrnn_training.json;
    # --install also copies them to models/charrnn-lstm.pt and bench/results/charrnn_training.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.train_reference import EXTRA_MODULES, OUT, TOPICS_BYTES, build_corpus  # noqa: E402

BATCH, SEQ, LR, WARMUP, MIN_LR_FRAC, SEED = 32, 128, 3e-3, 20, 0.1, 0


class CharRNN(nn.Module):
    def __init__(self, embed: int = 64, hidden: int = 192, layers: int = 2):
        super().__init__()
        self.encoder = nn.Embedding(256, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T) byte ids -> logits (B, T, 256)
        out, _ = self.rnn(self.encoder(x))
        return self.decoder(out)


def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(steps - WARMUP, 1)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * t)))


def train(model: CharRNN, data: torch.Tensor, steps: int) -> float:
    """`steps` AdamW steps on random windows of `data` (uint8 -> long); returns seconds taken."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        win = torch.stack([data[s:s + SEQ + 1] for s in starts.tolist()])
        logits = model(win[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), win[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}/{steps}  loss {loss.item() / math.log(2):.3f} bits  "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)
    return time.perf_counter() - t0


def steps_for(budget_s: float, data: torch.Tensor) -> int:
    """Step count that fits the budget: time 5 steps (after 2 warm-up steps) of a throwaway model."""
    probe = CharRNN()
    train(probe, data, 2)
    return max(50, int(budget_s / (train(probe, data, 5) / 5)))


def heldout_bpb(path: Path, texts: dict[str, bytes]) -> dict[str, float]:
    """edgelm's bits/byte of the saved state_dict file on each text."""
    from edgelm.checkpoint import load_model
    from edgelm.evaluate import bits_per_byte

    model = load_model(path)
    return {name: round(bits_per_byte(model, text), 4) for name, text in texts.items()}


def run(steps: int | None, budget_s: float | None) -> dict:
    corpus, heldout = build_corpus()
    raw = corpus.read_bytes()
    split = int(len(raw) * 0.95)
    data = torch.frombuffer(bytearray(raw[:split]), dtype=torch.uint8).long()
    budget_s = None if steps else budget_s  # recorded only when it chose the step count
    steps = steps or steps_for(budget_s, data)
    torch.manual_seed(SEED)
    model = CharRNN()
    wall = train(model, data, steps)
    out = OUT / "charrnn-lstm.pt"
    torch.save(model.state_dict(), out)
    bpb = heldout_bpb(out, {"heldout": heldout.read_bytes(), "last5": raw[split:]})
    return {"model": "plain PyTorch char-RNN: Embedding(256, 64) + nn.LSTM(64, 192, num_layers=2, "
            "batch_first=True) + Linear(192, 256); torch.save(model.state_dict()), fp32",
            "path": "models/charrnn-lstm.pt", "bytes": out.stat().st_size,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "params": sum(p.numel() for p in model.parameters()), "keys": list(model.state_dict()),
            "corpus_bytes": len(raw), "corpus": f"pydoc_data/topics.py[:{TOPICS_BYTES}] + "
            + ", ".join(EXTRA_MODULES) + " (last 5% not trained on)", "heldout_file": heldout.name,
            "heldout_bytes": len(heldout.read_bytes()), "heldout_bpb": bpb["heldout"],
            "val_bpb_last5pct": bpb["last5"], "uniform_bpb": 8.0, "steps": steps, "batch_size": BATCH,
            "seq_len": SEQ, "lr": LR, "warmup": WARMUP, "min_lr_frac": MIN_LR_FRAC, "seed": SEED,
            "budget_s": budget_s, "train_wall_s": round(wall, 1), "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=150.0, help="training seconds (sets the step count)")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --budget-s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy 2-core box)")
    ap.add_argument("--install", action="store_true", help="copy to models/ and bench/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = run(args.steps or None, args.budget_s)
    (OUT / "charrnn_training.json").write_text(json.dumps(r, indent=2) + "\n")
    print(f"{r['params']} params, {r['steps']} steps in {r['train_wall_s']}s: {r['heldout_file']} "
          f"{r['heldout_bpb']:.3f} bits/byte, last 5% {r['val_bpb_last5pct']:.3f}")
    if args.install:
        shutil.copy(OUT / "charrnn-lstm.pt", ROOT / "models" / "charrnn-lstm.pt")
        shutil.copy(OUT / "charrnn_training.json", ROOT / "bench" / "results" / "charrnn_training.json")


if __name__ == "__main__":
    main()
