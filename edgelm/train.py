"""Training: AdamW with linear warmup + cosine decay on random windows of a byte corpus.

    train_from_files(paths, arch, preset, output, cfg)  # the `edgelm train` command
    train(model, data_bytes, cfg)                        # the loop itself

Deterministic for a seed: torch.manual_seed(seed) initialises the weights and a numpy
Generator(seed) draws the window offsets, so two runs give identical weights (on one machine).
The last `val_fraction` of the concatenated corpus is held out and reported as bits/byte.
"""

from __future__ import annotations

from .python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import save_model
from .errors import EdgelmError
from .fileio import check_output_file
from .models import ByteLM, build_model

@dataclass
class TrainConfig:
    steps: int = 300
    seed: int = 0
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 20  # linear warmup steps, then cosine decay to min_lr_frac * lr
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_fraction: float = 0.05  # the last 5% of the corpus is held out
    threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    progress: bool | None = None  # None: show a progress bar when stderr is a TTY

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise EdgelmError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise EdgelmError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise EdgelmError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to min_lr_frac * lr at the last step."""
    warmup = min(cfg.warmup, max(cfg.steps // 10, 1))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(cfg.steps - warmup, 1)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: ByteLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not on biases, norms or 1-D decay params)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def sample_batch(data: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int):
    """Random windows: x (B, T) and the next-byte targets y (B, T)."""
    starts = rng.integers(0, len(data) - seq_len, size=batch)  # (B,)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T+1)
    chunk = torch.from_numpy(data[idx].astype(np.int64))  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


class Progress:
    """Progress on stderr: step, loss, bytes/s, ETA. A rich bar when rich is installed
    (it comes with typer), else a plain carriage-return line."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.bar = self.task = None
        if enabled:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn
            except ImportError:
                return
            self.bar = RichProgress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                    console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=total, info="")
            self.bar.start()

    def update(self, step: int, loss: float, bytes_seen: int) -> None:
        if not self.enabled:
            return
        dt = time.perf_counter() - self.t0
        info = f"loss {loss:.3f}  {bytes_seen / max(dt, 1e-9) / 1e3:.1f} kB/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
            return
        eta = dt / step * (self.total - step) if step else 0.0
        sys.stderr.write(f"\rstep {step}/{self.total}  {info}  eta {eta:.0f}s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _show_progress(cfg: TrainConfig, progress: bool) -> bool:
    if not progress or cfg.progress is False:
        return False
    if cfg.progress:
        return True
    return sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ


def train(model: ByteLM, data: bytes, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train `model` in place on `data`; returns {"steps", "final_loss", "seconds"}."""
    cfg.validate()
    arr = np.frombuffer(data, dtype=np.uint8)
    if len(arr) < cfg.seq_len + 1:
        raise EdgelmError(f"training text has {len(arr)} bytes but one window needs "
                          f"{cfg.seq_len + 1}; add text or lower --seq-len")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    opt = make_optimizer(model, cfg)
    bar = Progress(cfg.steps, _show_progress(cfg, progress))
    model.train()
    t0, loss_val = time.perf_counter(), float("nan")
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            x, y = sample_batch(arr, rng, cfg.batch_size, cfg.seq_len)  # (B, T) each
            logits, _ = model(x)  # (B, T, 256)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                raise EdgelmError(f"training diverged at step {step} (loss {loss_val}); lower --lr")
            bar.update(step + 1, loss_val, (step + 1) * cfg.batch_size * cfg.seq_len)
    finally:
        bar.close()
        model.eval()
    return {"steps": cfg.steps, "final_loss": loss_val, "seconds": time.perf_counter() - t0}


def read_corpus(paths: list[str | Path]) -> bytes:
    """Concatenate the corpus files; missing, unreadable or empty files are user errors."""
    if not paths:
        raise EdgelmError("no corpus files given; pass one or more text files")
    parts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise EdgelmError(f"corpus file {p} does not exist (or is not a file)")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise EdgelmError(f"cannot read corpus file {p}: {exc.strerror}") from exc
        if not data:
            raise EdgelmError(f"corpus file {p} is empty")
        parts.append(data)
    return b"".join(parts)


def split_corpus(data: bytes, cfg: TrainConfig) -> tuple[bytes, bytes]:
    """(train, held-out): the held-out part is the last val_fraction of the corpus."""
    n_val = int(len(data) * cfg.val_fraction)
    need = cfg.seq_len + 1
    if len(data) - n_val < need:
        raise EdgelmError(f"corpus has {len(data)} bytes; training needs at least {need + n_val} "
                          f"(one window of --seq-len {cfg.seq_len} + 1 after holding out "
                          f"{cfg.val_fraction:.0%}); add text or lower --seq-len")
    return data[:len(data) - n_val], data[len(data) - n_val:]


def train_from_files(paths: list[str | Path], arch: str, preset: str, output: str | Path,
                     cfg: TrainConfig) -> dict:
    """Train `arch`/`preset` on text files and write the checkpoint atomically to `output`."""
    from .evaluate import bits_per_byte

    cfg.validate()
    check_output_file(output)  # a directory, or a place that cannot be written, fails before training
    torch.manual_seed(cfg.seed)
    model = build_model(arch, preset=preset)  # raises for an unknown arch / preset
    data = read_corpus(paths)
    train_data, val_data = split_corpus(data, cfg)
    stats = train(model, train_data, cfg)
    val_bpb = bits_per_byte(model, val_data) if len(val_data) > 1 else float("nan")
    info = {"steps": cfg.steps, "seed": cfg.seed, "val_bpb": val_bpb, "final_loss": stats["final_loss"],
            "seconds": round(stats["seconds"], 2), "train_bytes": len(train_data),
            "val_bytes": len(val_data), "corpus_sha256": hashlib.sha256(data).hexdigest(),
            "corpus_files": [Path(p).name for p in paths], "preset": preset,
            "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    save_model(model, output, extra={"train": info})
    return {"params": model.num_params(), "val_bpb": val_bpb, **info}
